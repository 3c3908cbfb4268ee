"""Merchandising: a shop steering what search, similar products and recommendations return.

A request (or a saved rule, :mod:`core.rules`) can

- **pin** products: placed first, in the given order, when they pass the request's filters
  (out-of-stock and excluded products never do), and not repeated below;
- **exclude** products (``Filters.exclude_ids``): never returned;
- **boost** products matching a filter: their score is multiplied by ``factor`` before ranking
  (several matching boosts multiply); a negative score is divided instead, so a boost never
  pushes a product down;
- **bury** products (rules only): ranked after every product that is not buried.

Boosts reorder the candidates a request ranks anyway (the exactly scored head of a search's
matching set, the over-fetched candidates of similar products and recommendations); they do
not pull in products from outside them. Pinning is how to force a product in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput
from core.types import Filters, Product

T = TypeVar("T")

MAX_PINS = 50
MAX_BOOSTS = 10
MAX_FACTOR = 100.0
BOOST_POOL = 50
"""Extra candidates a top-k endpoint fetches when a boost may reorder them."""


@dataclass(frozen=True)
class Boost:
    """Multiply the score of products passing ``filters`` by ``factor``."""

    filters: Filters
    factor: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.factor) or not 0 < self.factor <= MAX_FACTOR:
            raise InvalidInput(f"a boost factor must be above 0 and at most {MAX_FACTOR:g}")
        # A boost's filter only says which products it concerns; stock and exclusions are the
        # request's business.
        if not self.filters.include_out_of_stock or self.filters.exclude_ids:
            concerns = replace(self.filters, include_out_of_stock=True, exclude_ids=frozenset())
            object.__setattr__(self, "filters", concerns)


@dataclass(frozen=True)
class Merchandising:
    """What one request applies: its own pins and boosts plus those of the saved rules that
    fired (``rules``: their ids, reported as ``applied_rules``)."""

    pin: tuple[str, ...] = ()
    boost: tuple[Boost, ...] = ()
    bury: frozenset[str] = frozenset()
    rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.pin) > MAX_PINS:
            raise InvalidInput(f"at most {MAX_PINS} pinned products")
        if len(self.boost) > MAX_BOOSTS:
            raise InvalidInput(f"at most {MAX_BOOSTS} boosts")
        object.__setattr__(self, "pin", tuple(dict.fromkeys(self.pin)))

    @property
    def active(self) -> bool:
        return bool(self.pin or self.boost or self.bury)

    def fetch(self, top_k: int) -> int:
        """How many ranked candidates a top-k endpoint should ask for to arrange ``top_k``."""
        if not self.active:
            return top_k
        return top_k + len(self.pin) + len(self.bury) + (max(top_k, BOOST_POOL) if self.boost else 0)

    def factor(self, product: Product) -> float:
        """The product of the factors of the boosts ``product`` matches (1.0: none)."""
        out = 1.0
        for b in self.boost:
            if b.filters.matches(product):
                out *= b.factor
        return out


NO_MERCHANDISING = Merchandising()


def boosted(score: float, factor: float) -> float:
    """``score`` raised by ``factor`` (a negative score is divided: boosting never lowers)."""
    return score * factor if score >= 0 else score / factor


def boosted_array(score: npt.NDArray[np.float64], factor: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """:func:`boosted` over arrays."""
    out: npt.NDArray[np.float64] = np.where(score >= 0, score * factor, score / factor)
    return out


def arrange(
    items: Sequence[T],
    top_k: int,
    merch: Merchandising,
    filters: Filters,
    product: Callable[[T], Product],
    score: Callable[[T], float],
    rescore: Callable[[T, float], T],
    pinned: Callable[[str], T | None],
) -> list[T]:
    """The ``top_k`` of ``items`` (best first) after ``merch``: boosted scores re-sorted (ties
    keep their order), buried ones last, pinned ones first. ``pinned(product_id)`` makes the item
    of a pinned product that is not among ``items`` (None: unknown); it is placed only if it
    passes ``filters``."""
    if not merch.active:
        return list(items[:top_k])
    ranked = list(items)
    if merch.boost:
        ranked = [rescore(it, boosted(score(it), merch.factor(product(it)))) for it in ranked]
        ranked = [it for _, it in sorted(enumerate(ranked), key=lambda x: (-score(x[1]), x[0]))]
    if merch.bury:
        ranked = [it for it in ranked if product(it).product_id not in merch.bury] + [
            it for it in ranked if product(it).product_id in merch.bury
        ]
    if merch.pin:
        by_id = {product(it).product_id: it for it in ranked}
        first: list[T] = []
        for pid in merch.pin:
            it = by_id.get(pid)
            if it is None:
                it = pinned(pid)
            if it is not None and filters.matches(product(it)):
                first.append(it)
        chosen = {product(it).product_id for it in first}
        ranked = first + [it for it in ranked if product(it).product_id not in chosen]
    return ranked[:top_k]
