"""Interaction data in array form: events -> (user, item) pairs, time splits (one global cutoff, or per user).

Everything downstream works on integer codes: ``users`` and ``items`` are the id lists, and an
:class:`Interactions` holds one row per (user, item) pair with the pair's strongest event, its
latest timestamp and its recency rank inside the user's history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from core.events import EVENT_STRENGTH, EVENT_TYPES

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
B8 = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class EventArrays:
    """Events as parallel arrays; ``user``/``item`` index ``users``/``items``; ``seq`` is
    arrival order (ties in ``ts`` keep it)."""

    users: list[str]
    items: list[str]
    user: I32
    item: I32
    etype: I32  # index into EVENT_TYPES
    value: F64  # NaN when absent
    ts: F64  # epoch seconds
    seq: I64

    def __len__(self) -> int:
        return len(self.user)

    @property
    def strength(self) -> F32:
        """Per-event strength (see :func:`core.events.event_strength`), vectorised."""
        base = np.array([EVENT_STRENGTH.get(t, 0.0) for t in EVENT_TYPES], dtype=np.float32)
        out = base[self.etype]
        is_rating = self.etype == EVENT_TYPES.index("rating")
        stars = np.where(np.isnan(self.value), 3.0, self.value)
        out[is_rating] = (0.5 + 0.75 * (stars[is_rating] - 1.0)).astype(np.float32)
        return out

    def take(self, mask: B8 | I64) -> EventArrays:
        return EventArrays(
            self.users,
            self.items,
            self.user[mask],
            self.item[mask],
            self.etype[mask],
            self.value[mask],
            self.ts[mask],
            self.seq[mask],
        )

    @classmethod
    def from_arrow(cls, table: pa.Table, items: Sequence[str] | None = None) -> EventArrays:
        """Encode an events table. With ``items`` given, item codes follow that list and events
        on other products are dropped (they are not in the catalog)."""
        user_dict = pc.dictionary_encode(table.column("user_id")).combine_chunks()
        users = [str(u) for u in user_dict.dictionary.to_pylist()]
        user = user_dict.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        if items is None:
            item_dict = pc.dictionary_encode(table.column("product_id")).combine_chunks()
            item_list = [str(i) for i in item_dict.dictionary.to_pylist()]
            item = item_dict.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        else:
            item_list = list(items)
            idx = pc.index_in(table.column("product_id"), value_set=pa.array(item_list, pa.string()))
            item = idx.to_numpy(zero_copy_only=False)
            item = np.where(np.isnan(item.astype(np.float64)), -1, item).astype(np.int32)
        etype = pc.index_in(table.column("event_type"), value_set=pa.array(list(EVENT_TYPES))).to_numpy(
            zero_copy_only=False
        )
        value = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        keep = (item >= 0) & ~np.isnan(etype.astype(np.float64))
        n = len(user)
        out = cls(
            users,
            item_list,
            user,
            item,
            np.nan_to_num(etype.astype(np.float64), nan=0).astype(np.int32),
            value,
            ts.astype(np.float64),
            np.arange(n, dtype=np.int64),
        )
        return out if keep.all() else out.take(keep)

    def chronological(self) -> I64:
        """Row order by (user, ts, seq)."""
        return np.lexsort((self.seq, self.ts, self.user)).astype(np.int64)


@dataclass(frozen=True)
class Interactions:
    """One row per (user, item): strongest strength, latest ts, and recency rank (0 = the
    user's most recent item)."""

    n_users: int
    n_items: int
    user: I32
    item: I32
    strength: F32
    ts: F64
    rank: I32

    def user_last_ts(self) -> F64:
        last = np.full(self.n_users, np.nan)
        order = np.argsort(self.ts, kind="stable")
        last[self.user[order]] = self.ts[order]
        return last


def aggregate(ev: EventArrays) -> Interactions:
    """Collapse events into (user, item) pairs."""
    n_users, n_items = len(ev.users), len(ev.items)
    if len(ev) == 0:
        z = np.zeros(0)
        return Interactions(
            n_users, n_items, z.astype(np.int32), z.astype(np.int32), z.astype(np.float32), z, z.astype(np.int32)
        )
    key = ev.user.astype(np.int64) * n_items + ev.item
    strength = ev.strength
    order = np.lexsort((ev.seq, ev.ts, key))
    key_s = key[order]
    first = np.r_[True, key_s[1:] != key_s[:-1]]
    starts = np.flatnonzero(first)
    last_idx = np.r_[starts[1:], len(key_s)] - 1
    pair_key = key_s[starts]
    max_strength = np.maximum.reduceat(strength[order], starts)
    last_ts = ev.ts[order][last_idx]
    last_seq = ev.seq[order][last_idx]
    user = (pair_key // n_items).astype(np.int32)
    item = (pair_key % n_items).astype(np.int32)
    # recency rank within user: sort by user asc, (ts, seq) desc
    o2 = np.lexsort((-last_seq, -last_ts, user))
    rank = np.empty(len(user), dtype=np.int32)
    u_sorted = user[o2]
    ustart = np.r_[True, u_sorted[1:] != u_sorted[:-1]]
    group_start = np.maximum.accumulate(np.where(ustart, np.arange(len(o2)), 0))
    rank[o2] = (np.arange(len(o2)) - group_start).astype(np.int32)
    return Interactions(n_users, n_items, user, item, max_strength.astype(np.float32), last_ts, rank)


def time_split(ev: EventArrays, test_fraction: float = 0.2) -> tuple[EventArrays, EventArrays]:
    """Per-user time split: each user's last ``test_fraction`` of events (by timestamp, ties by
    arrival) is held out. Users with a single event keep it in training."""
    order = ev.chronological()
    u = ev.user[order]
    starts = np.r_[True, u[1:] != u[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(u)), 0))
    pos = np.arange(len(u)) - group_start
    counts = np.bincount(u, minlength=len(ev.users))[u]
    n_test = np.where(counts >= 2, np.maximum(1, np.round(counts * test_fraction)), 0).astype(np.int64)
    is_test = pos >= counts - n_test
    return ev.take(order[~is_test]), ev.take(order[is_test])


def global_split(
    ev: EventArrays, test_fraction: float = 0.2, cutoff: float | None = None
) -> tuple[EventArrays, EventArrays, float]:
    """One time cutoff for everyone, as a shop trains on the past and serves the future: ``T``
    (``cutoff``, default the ``1 - test_fraction`` quantile of event times); events before ``T``
    train, the others are held out. Returns (train, test, T)."""
    if cutoff is None:
        if len(ev) == 0:
            return ev, ev, math.nan
        cutoff = float(np.quantile(ev.ts, 1.0 - test_fraction, method="lower"))
        if cutoff <= float(ev.ts.min()):  # every event at one instant: nothing could train
            cutoff = float(np.nextafter(cutoff, np.inf))
    before = ev.ts < cutoff
    return ev.take(before), ev.take(~before), cutoff


def positives(ev: EventArrays, min_rating: float = 4.0, types: Sequence[str] = ("purchase",)) -> EventArrays:
    """Events that count as relevant: ratings >= ``min_rating`` and events of ``types``."""
    rating = EVENT_TYPES.index("rating")
    type_codes = [EVENT_TYPES.index(t) for t in types if t in EVENT_TYPES and t != "rating"]
    ok = ((ev.etype == rating) & (np.nan_to_num(ev.value, nan=0.0) >= min_rating)) | np.isin(ev.etype, type_codes)
    return ev.take(ok)
