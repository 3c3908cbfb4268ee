"""The rankers the offline evaluation compares, behind one protocol: the baselines a shop would
try first (popularity, popular lately, item-kNN, EASE, EASE + popular lately) and our hybrid.

A :class:`Ranker` is fitted on a split and then scores users against every product.
:mod:`core.recommend.evaluate` tunes, fits and scores each one the same way, and
``tests/core/recommend/test_ranker_contract.py`` holds each one to the same contract: a new ranker is one
class here, its row in the evaluation and one line in the contract test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Protocol, Self, TypeVar

import numpy as np
import scipy.sparse as sp

from core.recommend.data import F32, F64, I32
from core.recommend.hybrid import HybridModel, HybridParams, on_items
from core.recommend.metrics import Split
from core.recommend.signals import (
    TimePopularity,
    _row_max_normalise,
    binary_matrix,
    fit_ease,
    fit_itemknn,
    history_matrix,
)
from core.recommend.tuning import MAX_ITEMS, train_hybrid

HYBRID = "shelfsearch hybrid"

T = TypeVar("T")


class Ranker(Protocol):
    """Scores every product for users of a split.

    :meth:`fit` reads only the split's training part (``train_ev``, ``train``), its ``scheme``
    and the request time of each user (``t_query``), never the held-out ``relevant`` or the
    judged ``users``; :meth:`score` gives ``len(users) x items`` float32 scores (higher is
    better) for rows ``users`` of the split's user codes."""

    @property
    def name(self) -> str:
        """The ranker's row name in the comparison table."""
        ...

    def describe(self) -> str:
        """Its hyper-parameters, for the table's ``params`` column."""
        ...

    def fit(self, split: Split) -> Self: ...

    def score(self, users: I32) -> F32: ...


def _fitted(state: T | None) -> T:
    if state is None:
        raise RuntimeError("score() before fit()")
    return state


def _dense(m: object) -> F32:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32)  # type: ignore[union-attr]


class Popularity:
    """All-time interaction counts: the same list for everyone."""

    name: ClassVar[str] = "popularity"

    def __init__(self) -> None:
        self._counts: F32 | None = None

    def describe(self) -> str:
        return "all-time counts"

    def fit(self, split: Split) -> Self:
        x = binary_matrix(split.train)
        self._counts = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users: I32) -> F32:
        out: F32 = np.tile(_fitted(self._counts), (len(users), 1))
        return out


class RecentPopularity:
    """Event counts in the last ``days`` days before each user's request time ("popular lately")."""

    name: ClassVar[str] = "recent popularity"

    def __init__(self, days: float) -> None:
        self.days = days
        self._state: tuple[TimePopularity, F64] | None = None

    def describe(self) -> str:
        return f"last {self.days:g} days"

    def fit(self, split: Split) -> Self:
        self._state = (TimePopularity(split.train_ev, split.train.n_items), split.t_query)
        return self

    def score(self, users: I32) -> F32:
        pop, t_query = _fitted(self._state)
        return pop.recent(t_query[users], self.days)


class _ItemToItem(ABC):
    """A user's interactions times an item x item matrix fitted with one hyper-parameter
    (``value``, named ``param`` in the table); subclasses say how the matrix is fitted."""

    param: ClassVar[str]

    def __init__(self, value: float) -> None:
        self.value = value
        self._state: tuple[sp.csr_matrix, sp.csr_matrix | F32] | None = None

    def describe(self) -> str:
        return f"{self.param}={self.value:g}"

    @abstractmethod
    def _weights(self, x: sp.csr_matrix) -> sp.csr_matrix | F32:
        """The item x item matrix fitted on the interactions ``x``."""

    def fit(self, split: Split) -> Self:
        x = binary_matrix(split.train)
        self._state = (x, self._weights(x))
        return self

    def score(self, users: I32) -> F32:
        x, w = _fitted(self._state)
        return _dense(x[users] @ w)


class ItemKNN(_ItemToItem):
    """Cosine item-item similarity over who interacted with what, ``k`` neighbours per item."""

    name: ClassVar[str] = "item-kNN (cosine)"
    param: ClassVar[str] = "k"

    def _weights(self, x: sp.csr_matrix) -> sp.csr_matrix:
        return fit_itemknn(x, int(self.value))


class Ease(_ItemToItem):
    """EASE (Steck 2019) on who interacted with what, penalty ``lambda``."""

    name: ClassVar[str] = "EASE"
    param: ClassVar[str] = "lambda"

    def _weights(self, x: sp.csr_matrix) -> F32:
        return fit_ease(x, self.value)


class EaseRecentBlend:
    """``ease`` + ``w`` x ``recent``, both max-normalised per user."""

    name: ClassVar[str] = "EASE + recent pop."

    def __init__(self, ease: Ease, recent: RecentPopularity, w: float = 1.0) -> None:
        self.ease, self.recent, self.w = ease, recent, w

    def describe(self) -> str:
        return f"{self.ease.describe()} {self.recent.describe()} w={self.w:g}"

    def fit(self, split: Split) -> Self:
        self.ease.fit(split)
        self.recent.fit(split)
        return self

    def weighted(self, w: float) -> EaseRecentBlend:
        """The same blend with weight ``w``, sharing the fitted parts (the weight needs no refit)."""
        return EaseRecentBlend(self.ease, self.recent, w)

    def score(self, users: I32) -> F32:
        out: F32 = _row_max_normalise(self.ease.score(users)) + self.w * _row_max_normalise(self.recent.score(users))
        return out


class Hybrid:
    """Our hybrid (:mod:`core.recommend.hybrid`), tuned inside the split's training part (unless
    ``params`` are given), its collaborative model over at most ``max_items`` products; ``off``
    names :data:`~core.recommend.tuning.SIGNALS` left out."""

    def __init__(
        self,
        vectors: F32 | None,
        *,
        min_rating: float = 4.0,
        positive_types: Sequence[str] = ("purchase",),
        off: Sequence[str] = (),
        max_items: int = MAX_ITEMS,
        params: HybridParams | None = None,
        name: str = HYBRID,
    ) -> None:
        self.vectors, self.min_rating, self.positive_types = vectors, min_rating, positive_types
        self.off, self.max_items, self.params, self.name = off, max_items, params, name
        self.model: HybridModel | None = None
        self._state: tuple[F64, sp.csr_matrix, TimePopularity, sp.csr_matrix] | None = None

    def describe(self) -> str:
        model = _fitted(self.model)
        desc = model.params.describe()
        check = model.info.get("rerank_check")
        if check is not None:  # the two-fold check on the inner split that decided about the reranker
            verdict = "kept" if model.reranker is not None else "dropped"
            desc += f" reranker: {verdict} ({check['blend']:.4f} -> {check['reranked']:.4f} inner two-fold)"
        return desc

    def fit(self, split: Split) -> Self:
        model = train_hybrid(
            split.train_ev,
            self.vectors,
            min_rating=self.min_rating,
            positive_types=self.positive_types,
            params=self.params,
            scheme=split.scheme,
            off=self.off,
            max_items=self.max_items,
        )
        self.model = on_items(model, split.train_ev.items)  # the products beyond max_items score too
        hist = history_matrix(split.train, model.params.alpha, model.params.half_life)
        pop = TimePopularity(split.train_ev, split.train.n_items)
        self._state = (split.t_query, hist, pop, binary_matrix(split.train))
        return self

    def score(self, users: I32) -> F32:
        model = _fitted(self.model)
        t_query, hist, pop, seen = _fitted(self._state)
        return model.score(hist[users], t_query[users], pop, self.vectors, seen[users], users)
