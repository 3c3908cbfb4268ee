"""Every event a query process has seen, held compactly: columns in numpy arrays and one array of
row numbers per user, not a Python object per event.

Memory per event: 4 bytes product code + 4 user code + 8 timestamp + 1 type + 8 value + 8 id hash
(per row, so that a window can drop old ones: :meth:`EventState.prune`) + 8 in the sorted set of
hashes + 4 for the user's row list = 45 bytes, plus the arrays' spare capacity (they grow by doubling:
at most as much again) and one string per distinct user and product. ``bench.scale`` measures it.

Events are de-duplicated by ``event_id`` through its 64-bit hash (BLAKE2b, the same in every
process, so a state written to a start-up file de-duplicates in the process that loads it): two
different ids collide with probability ~n²/2⁶⁵ (about 3 in a million at 10M events), in which case
the later event is dropped.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from core.events import EVENT_TYPES, Event, event_strength
from core.recommend.data import F64, EventArrays

I64 = npt.NDArray[np.int64]
MERGE_PENDING = 65_536
"""Hashes of new ids are kept in a set until there are this many (or a tenth of the sorted
ones), then merged into the sorted array: lookups stay cheap, merges rare."""


def id_hashes(ids: Sequence[str]) -> I64:
    """Each id's 64-bit BLAKE2b hash."""
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake(i.encode(), digest_size=8).digest(), "little", signed=True) for i in ids),
        dtype=np.int64,
        count=len(ids),
    )


@dataclass(frozen=True)
class HistoryItem:
    product_id: str
    event_type: str  # the strongest event on the item
    value: float | None
    strength: float
    timestamp: float
    count: int


class _Column:
    """A numpy array grown by doubling; ``view()`` is the filled part. Rows once written never
    change, so views handed out stay valid while later rows are appended."""

    def __init__(self, dtype: Any) -> None:
        self.data: npt.NDArray[Any] = np.empty(1024, dtype=dtype)
        self.n = 0

    def extend(self, values: npt.NDArray[Any]) -> None:
        need = self.n + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : need] = values
        self.n = need

    def view(self) -> npt.NDArray[Any]:
        return self.data[: self.n]


class _Codes:
    """Strings <-> dense integer codes."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.ids: list[str] = []

    def encode(self, values: Sequence[str]) -> npt.NDArray[np.int32]:
        out = np.empty(len(values), dtype=np.int32)
        for k, v in enumerate(values):
            c = self.code.get(v)
            if c is None:
                c = self.code[v] = len(self.ids)
                self.ids.append(v)
            out[k] = c
        return out

    def encode_column(self, col: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int32]:
        """Codes of a string column: one dictionary lookup per distinct value, not per row."""
        enc = pc.dictionary_encode(col)
        enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
        mapping = self.encode([str(v) for v in enc.dictionary.to_pylist()])
        out: npt.NDArray[np.int32] = mapping[enc.indices.to_numpy(zero_copy_only=False)]
        return out


class EventState:
    """All events seen by this process, per user and in arrival order (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = _Codes()
        self._items = _Codes()
        self._user = _Column(np.int32)
        self._item = _Column(np.int32)
        self._ts = _Column(np.float64)
        self._etype = _Column(np.int8)  # index into EVENT_TYPES
        self._value = _Column(np.float64)  # NaN when absent
        self._hash = _Column(np.int64)  # the event id's hash
        self._rows: list[array[int]] = []  # per user code: its row numbers, in arrival order
        self._user_last = _Column(np.float64)  # per user code: latest event time
        self._type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
        self._hashes = np.zeros(0, dtype=np.int64)  # sorted
        self._pending: set[int] = set()
        self.generation = 0
        self.watermark: datetime | None = None
        self.min_ts = -math.inf  # events before this (epoch seconds) are not held: see prune()

    # ---- writing -----------------------------------------------------------------------------
    def _new(self, hashes: I64) -> npt.NDArray[np.bool_]:
        """Which of ``hashes`` were not seen before (first occurrence within the batch too); marks
        them seen."""
        known = np.zeros(len(hashes), dtype=bool)
        if len(self._hashes):
            at = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
            known = self._hashes[at] == hashes
        fresh = np.zeros(len(hashes), dtype=bool)
        pending = self._pending
        for k in np.flatnonzero(~known):
            h = int(hashes[k])
            if h not in pending:
                pending.add(h)
                fresh[k] = True
        if len(pending) >= max(MERGE_PENDING, len(self._hashes) // 10):
            self._hashes = np.union1d(self._hashes, np.fromiter(pending, dtype=np.int64, count=len(pending)))
            pending.clear()
        return fresh

    def _append(
        self,
        hashes: I64,
        users: npt.NDArray[np.int32],
        items: npt.NDArray[np.int32],
        ts: F64,
        etype: npt.NDArray[np.int8],
        value: F64,
    ) -> int:
        """Append the rows whose hash is new (in the order given) and that are not older than
        :attr:`min_ts`; under the lock."""
        recent = ts >= self.min_ts
        keep = np.zeros(len(hashes), dtype=bool)
        keep[recent] = self._new(hashes[recent])
        if not keep.any():
            return 0
        users, items, ts, etype, value = users[keep], items[keep], ts[keep], etype[keep], value[keep]
        start = self._user.n
        self._hash.extend(hashes[keep])
        self._user.extend(users)
        self._item.extend(items)
        self._ts.extend(ts)
        self._etype.extend(etype)
        self._value.extend(value)
        n_users = len(self._users.ids)
        while len(self._rows) < n_users:
            self._rows.append(array("i"))
        if self._user_last.n < n_users:
            self._user_last.extend(np.full(n_users - self._user_last.n, -math.inf))
        last = self._user_last.view()
        np.maximum.at(last, users, ts)
        for row, u in enumerate(users.tolist(), start):
            self._rows[u].append(row)
        self._type_counts += np.bincount(etype, minlength=len(EVENT_TYPES))
        self.generation += 1
        return len(users)

    def add(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        with self._lock:
            return self._append(
                id_hashes([e.event_id for e in events]),
                self._users.encode([e.user_id for e in events]),
                self._items.encode([e.product_id for e in events]),
                np.array([e.timestamp.timestamp() for e in events], dtype=np.float64),
                np.array([EVENT_TYPES.index(e.event_type) for e in events], dtype=np.int8),
                np.array([math.nan if e.value is None else float(e.value) for e in events], dtype=np.float64),
            )

    def add_table(self, table: pa.Table) -> int:
        """Add rows read from the events table, in timestamp order (skips ones already seen)."""
        if table.num_rows == 0:
            return 0
        table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))  # stable
        etype = pc.index_in(table.column("event_type"), value_set=pa.array(list(EVENT_TYPES)))
        value = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        hashes = id_hashes(table.column("event_id").to_pylist())
        received = pc.max(table.column("received_at")).as_py()
        with self._lock:
            n = self._append(
                hashes,
                self._users.encode_column(table.column("user_id")),
                self._items.encode_column(table.column("product_id")),
                pc.cast(table.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False) / 1e6,
                np.nan_to_num(etype.to_numpy(zero_copy_only=False).astype(np.float64), nan=0).astype(np.int8),
                value,
            )
            if self.watermark is None or received > self.watermark:
                self.watermark = received
        return n

    # ---- saving -------------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, list[str]]]:
        """The state as arrays and id lists, for :meth:`restore` in another process."""
        with self._lock:
            return self._export(np.ones(self._user.n, dtype=bool))

    def _columns(self) -> tuple[tuple[str, _Column], ...]:
        """The per-event columns, by name."""
        return (
            ("user", self._user),
            ("item", self._item),
            ("ts", self._ts),
            ("etype", self._etype),
            ("value", self._value),
            ("hash", self._hash),
        )

    def _export(self, keep: npt.NDArray[np.bool_]) -> tuple[dict[str, npt.NDArray[Any]], dict[str, list[str]]]:
        """The rows ``keep``, with user and product codes renumbered over the ids they use."""
        arrays = {name: col.view()[keep] for name, col in self._columns()}
        ids: dict[str, list[str]] = {}
        for name, codes in (("user", self._users), ("item", self._items)):
            used, arrays[name] = np.unique(arrays[name], return_inverse=True)
            arrays[name] = arrays[name].astype(np.int32)
            ids[f"{name}s"] = [codes.ids[c] for c in used.tolist()]
        return arrays, ids

    def prune(self, before: float) -> int:
        """Forget the events older than ``before`` (epoch seconds), and take none older from
        now on: a query process's window. Returns how many were dropped. Rebuilds the state
        under its lock (a second or two at ten million events)."""
        with self._lock:
            self.min_ts = max(self.min_ts, before)
            keep = self._ts.view() >= before
            dropped = int(len(keep) - keep.sum())
            if dropped == 0:
                return 0
            fresh = EventState.restore(*self._export(keep), self.watermark)
            for name in ("_users", "_items", "_user", "_item", "_ts", "_etype", "_value", "_hash"):
                setattr(self, name, getattr(fresh, name))
            for name in ("_rows", "_user_last", "_type_counts", "_hashes"):
                setattr(self, name, getattr(fresh, name))
            self._pending = set()
            self.generation += 1
            return dropped

    @classmethod
    def restore(
        cls, arrays: dict[str, npt.NDArray[Any]], ids: dict[str, list[str]], watermark: datetime | None
    ) -> EventState:
        """The state :meth:`export` returned (rows in the same order)."""
        state = cls()
        for name, col in state._columns():
            col.data, col.n = np.array(arrays[name], dtype=col.data.dtype), len(arrays[name])
        state._hashes = np.unique(state._hash.view())
        for which, codes in (("users", state._users), ("items", state._items)):
            codes.ids = list(ids[which])
            codes.code = {v: k for k, v in enumerate(codes.ids)}
        users = state._user.view()
        n_users = len(state._users.ids)
        order = np.argsort(users, kind="stable").astype(np.int32)  # each user's rows, in arrival order
        ends = np.cumsum(np.bincount(users, minlength=n_users))
        starts = ends - np.bincount(users, minlength=n_users)
        state._rows = [array("i", order[a:b].tobytes()) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        last = np.full(n_users, -math.inf)
        has = ends > starts
        if has.any():
            last[has] = np.maximum.reduceat(state._ts.view()[order], starts[has])
        state._user_last.extend(last)
        state._type_counts = np.bincount(state._etype.view(), minlength=len(EVENT_TYPES)).astype(np.int64)
        state.watermark = watermark
        state.generation = 1 if len(users) else 0
        return state

    # ---- reading -----------------------------------------------------------------------------
    def rows_of_types(
        self, types: Sequence[str]
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], F64, list[str]]:
        """The user codes, product codes and times of the events of ``types`` (a copy), and
        the product id of each product code."""
        with self._lock:
            keep = np.isin(self._etype.view(), [EVENT_TYPES.index(t) for t in types])
            return (
                self._user.view()[keep].copy(),
                self._item.view()[keep].copy(),
                self._ts.view()[keep].copy(),
                list(self._items.ids),
            )

    def nbytes(self) -> int:
        """Memory held, including the arrays' spare capacity and the id strings (approximate:
        Python's per-object overheads are counted as ``sys.getsizeof`` reports them)."""
        with self._lock:
            total = sum(c.data.nbytes for _, c in self._columns()) + self._user_last.data.nbytes
            total += self._hashes.nbytes + 16 * len(self._pending)
            total += sum(sys.getsizeof(r) for r in self._rows)
            for codes in (self._users, self._items):
                total += sum(sys.getsizeof(i) for i in codes.ids) + sys.getsizeof(codes.code)
            return total

    def __len__(self) -> int:
        return self._user.n

    def _user_rows(self, user_id: str) -> I64:
        with self._lock:
            code = self._users.code.get(user_id)
            if code is None or code >= len(self._rows):
                return np.zeros(0, dtype=np.int64)
            return np.frombuffer(self._rows[code], dtype=np.int32).astype(np.int64)

    def _events_of(self, user_id: str, before: float | None = None) -> list[tuple[float, int, str, str, float | None]]:
        """The user's events as (ts, row, product_id, event_type, value), oldest first."""
        rows = self._user_rows(user_id)
        ts = self._ts.data[rows]
        if before is not None:
            rows, ts = rows[ts < before], ts[ts < before]
        order = np.lexsort((rows, ts))
        rows, ts = rows[order], ts[order]
        items = self._items.ids
        etypes = self._etype.data[rows].tolist()
        values = self._value.data[rows].tolist()
        pids = self._item.data[rows].tolist()
        return [
            (t, r, items[p], EVENT_TYPES[e], None if math.isnan(v) else v)
            for t, r, p, e, v in zip(ts.tolist(), rows.tolist(), pids, etypes, values, strict=True)
        ]

    def history(self, user_id: str, before: float | None = None) -> list[HistoryItem]:
        """The user's items, most recent first; each with its strongest event (only events
        before ``before``, epoch seconds, when given)."""
        # Per item: [event_type, value, strength] of its strongest event, last timestamp, count.
        best: dict[str, list[Any]] = {}
        for ts, _row, pid, etype, value in self._events_of(user_id, before):
            s = event_strength(etype, value)
            b = best.get(pid)
            if b is None:
                best[pid] = [etype, value, s, ts, 1]
                continue
            if s >= b[2]:
                b[0], b[1], b[2] = etype, value, s
            b[3] = ts
            b[4] += 1
        items = [HistoryItem(pid, *b) for pid, b in best.items()]
        return sorted(items, key=lambda h: -h.timestamp)

    def type_counts(self) -> dict[str, int]:
        """Events held, by event type."""
        with self._lock:
            return {t: int(c) for t, c in zip(EVENT_TYPES, self._type_counts.tolist(), strict=True) if c}

    def users(self, limit: int) -> tuple[int, list[tuple[str, int, float]]]:
        """How many users have events, and the ``limit`` most recently active ones as
        (user_id, events, last event time), newest first."""
        with self._lock:
            last = self._user_last.view().copy()
            counts = [len(r) for r in self._rows]
            ids = list(self._users.ids[: len(last)])
        has = np.flatnonzero(np.isfinite(last)).tolist()
        top = sorted(has, key=lambda k: (-last[k], ids[k]))[:limit]
        return len(has), [(ids[k], counts[k], float(last[k])) for k in top]

    def recent(self, user_id: str, limit: int) -> list[tuple[float, str, str, float | None]]:
        """The user's latest raw events (ts, product_id, event_type, value), newest first."""
        rows = self._events_of(user_id)[::-1][:limit]
        return [(ts, pid, et, v) for ts, _row, pid, et, v in rows]

    def arrays(self, index: dict[str, int]) -> EventArrays:
        """Every event on a product of ``index`` (product id -> position) as :class:`EventArrays`
        with item codes in that numbering (no user ids: what popularity needs)."""
        with self._lock:
            n = self._user.n
            item, ts, etype, value = self._item.view(), self._ts.view(), self._etype.view(), self._value.view()
            ids = list(self._items.ids)
        to_index = np.array([index.get(i, -1) for i in ids], dtype=np.int32)
        codes = to_index[item] if n else np.zeros(0, np.int32)
        keep = codes >= 0
        k = int(keep.sum())
        return EventArrays(
            [],
            [],
            np.zeros(k, np.int32),
            codes[keep],
            etype[keep].astype(np.int32),
            value[keep],
            ts[keep],
            np.arange(k, dtype=np.int64),
        )


__all__ = ["EventState", "HistoryItem"]
