""" "Bought together": products that land in the same baskets, from the events as they arrive.

A basket is one shopper's add-to-carts and purchases with no gap longer than
``BOUGHT_TOGETHER_SESSION_MINUTES`` between them (a session). Over all baskets, with ``N``
baskets, ``n(a)`` of them holding product ``a`` and ``co(a, b)`` holding both,

    lift(a, b)  = co(a, b) * N / (n(a) * n(b))      how much more often than by chance
    score(a, b) = lift(a, b) * co(a, b) / (co(a, b) + SHRINKAGE)

The shrinkage keeps a pair seen once between two rarely bought products (a huge lift from one
coincidence) below pairs seen again and again. Only pairs bought together more often than by
chance (lift > 1) are answered. The counts are rebuilt from the process's events (no training)
when new ones arrived, at most every ``refresh_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from core.recommend.history import EventState

BASKET_TYPES = ("add_to_cart", "purchase")
SHRINKAGE = 5.0
MAX_BASKET = 50
"""Products per basket that count: a session that adds hundreds (a reseller, a bot) would add
their square of pairs and say little about what goes together."""


@dataclass(frozen=True)
class Together:
    product_id: str
    score: float
    baskets: int  # baskets holding both


@dataclass(frozen=True)
class TogetherIndex:
    """Basket co-occurrence counts as a sparse matrix over product codes."""

    generation: int
    ids: list[str]
    index: dict[str, int]
    co: sp.csr_matrix
    item_baskets: npt.NDArray[np.int64]
    baskets: int

    @classmethod
    def build(cls, state: EventState, gap_seconds: float) -> TogetherIndex:
        generation = state.generation
        users, items, ts, ids = state.rows_of_types(BASKET_TYPES)
        n_items = len(ids)
        empty = sp.csr_matrix((n_items, n_items), dtype=np.float64)
        if len(users) == 0:
            return cls(generation, ids, {p: i for i, p in enumerate(ids)}, empty, np.zeros(n_items, np.int64), 0)
        order = np.lexsort((ts, users))
        u, it, t = users[order], items[order].astype(np.int64), ts[order]
        new = np.ones(len(u), dtype=bool)
        new[1:] = (u[1:] != u[:-1]) | (np.diff(t) > gap_seconds)
        session = np.cumsum(new) - 1
        # Each product once per basket, in the order it was first added.
        _, first = np.unique(session * n_items + it, return_index=True)
        first.sort()
        s, it = session[first], it[first]
        item_baskets = np.bincount(it, minlength=n_items).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ends = np.r_[starts[1:], len(s)]
        a_parts, b_parts = [], []
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if hi - lo < 2:
                continue
            basket = it[lo : min(hi, lo + MAX_BASKET)]
            a, b = np.meshgrid(basket, basket, indexing="ij")
            off = a != b
            a_parts.append(a[off])
            b_parts.append(b[off])
        if a_parts:
            a_all, b_all = np.concatenate(a_parts), np.concatenate(b_parts)
            co = sp.coo_matrix((np.ones(len(a_all)), (a_all, b_all)), shape=(n_items, n_items)).tocsr()
            co.sum_duplicates()
        else:
            co = empty
        return cls(generation, ids, {p: i for i, p in enumerate(ids)}, co, item_baskets, int(session[-1]) + 1)

    def together(self, product_id: str, top_k: int, allowed: Callable[[str], bool] | None = None) -> list[Together]:
        """The products most often bought with ``product_id`` (beyond chance), best first; only
        those ``allowed`` passes when given."""
        a = self.index.get(product_id)
        if a is None or self.baskets == 0:
            return []
        lo, hi = self.co.indptr[a], self.co.indptr[a + 1]
        others = self.co.indices[lo:hi]
        co = self.co.data[lo:hi]
        lift = co * self.baskets / (self.item_baskets[a] * self.item_baskets[others])
        score = lift * co / (co + SHRINKAGE)
        out = [
            Together(self.ids[int(b)], float(sc), int(c))
            for b, sc, c, li in zip(others, score, co, lift, strict=True)
            if li > 1.0 and (allowed is None or allowed(self.ids[int(b)]))
        ]
        out.sort(key=lambda x: (-x.score, -x.baskets, x.product_id))
        return out[:top_k]


class TogetherCache:
    """A process's :class:`TogetherIndex` over its event state, rebuilt when new events arrived
    (at most every ``refresh_seconds``) or the state was replaced; built on first use."""

    def __init__(self, gap_seconds: float, refresh_seconds: float) -> None:
        self.gap_seconds = gap_seconds
        self.refresh_seconds = refresh_seconds
        self._index: TogetherIndex | None = None
        self._of: EventState | None = None
        self._built_at = 0.0
        self._lock = threading.Lock()

    def current(self, state: EventState) -> TogetherIndex:
        with self._lock:
            index = self._index
            due = time.monotonic() - self._built_at >= self.refresh_seconds
            if index is None or state is not self._of or (index.generation != state.generation and due):
                index = self._index = TogetherIndex.build(state, self.gap_seconds)
                self._of, self._built_at = state, time.monotonic()
            return index
