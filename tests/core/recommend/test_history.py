"""The compact event state answers exactly as a plain per-user list of events would: the same
histories (strongest event per item, latest time, count, most recent first), the same raw recent
events, users and counts, with duplicates by event_id dropped however they arrive."""

import dataclasses
import math
import os
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np

from core.events import EVENT_TYPES, Event, event_strength, to_arrow
from core.recommend.history import EventState, id_hashes


def _events(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        etype = EVENT_TYPES[int(rng.integers(len(EVENT_TYPES)))]
        value = float(rng.integers(1, 6)) if etype == "rating" else None
        ts = 1_700_000_000 + int(rng.integers(0, 50)) * 60  # many equal times: ties keep arrival order
        out.append(
            Event(
                f"u{int(rng.integers(12))}",
                f"P{int(rng.integers(20))}",
                etype,  # type: ignore[arg-type]
                datetime.fromtimestamp(ts, UTC),
                value,
                f"e{int(rng.integers(n))}",  # repeated ids: duplicates
            )
        )
    return out


def _reference(events: list[Event]) -> dict[str, list[tuple[float, int, str, str, float | None]]]:
    """What the state must hold: first occurrence per event id, per user in arrival order."""
    seen: set[str] = set()
    by_user: dict[str, list[tuple[float, int, str, str, float | None]]] = {}
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        rows = by_user.setdefault(e.user_id, [])
        rows.append((e.timestamp.timestamp(), len(seen), e.product_id, e.event_type, e.value))
    return by_user


def _history(rows: list[tuple[float, int, str, str, float | None]], before: float | None) -> list[tuple]:  # type: ignore[type-arg]
    best: dict[str, list[object]] = {}
    for ts, _seq, pid, etype, value in sorted(r for r in rows if before is None or r[0] < before):
        s = event_strength(etype, value)
        b = best.get(pid)
        if b is None:
            best[pid] = [etype, value, s, ts, 1]
            continue
        if s >= b[2]:  # type: ignore[operator]
            b[0], b[1], b[2] = etype, value, s
        b[3] = ts
        b[4] += 1  # type: ignore[operator]
    items = sorted(((pid, *b) for pid, b in best.items()), key=lambda h: -h[4])  # type: ignore[operator]
    return items


def test_compact_state_matches_a_plain_event_list() -> None:
    events = _events(600, seed=3)
    state = EventState()
    # Arrival as the query process sees it: a first read of the table, then posted batches, then
    # an overlapping re-read (the incremental reader's window) that must add nothing twice.
    first, posted = events[:300], events[300:]
    # The table is read in timestamp order: the reference must see the first part in that order.
    first_sorted = sorted(first, key=lambda e: e.timestamp)
    assert state.add_table(to_arrow(first)) == len({e.event_id for e in first})
    for k in range(0, len(posted), 50):
        state.add(posted[k : k + 50])
    assert state.add_table(to_arrow(events[250:400])) == 0
    ref = _reference(first_sorted + posted)
    assert len(state) == sum(len(r) for r in ref.values())

    before = 1_700_000_000 + 25 * 60
    for user, rows in ref.items():
        for cut in (None, before):
            got = [
                (h.product_id, h.event_type, h.value, h.strength, h.timestamp, h.count)
                for h in state.history(user, cut)
            ]
            assert got == _history(rows, cut), (user, cut)
        recent = [(ts, pid, et, v) for ts, _s, pid, et, v in sorted(rows, reverse=True)[:7]]
        assert state.recent(user, 7) == recent
    assert state.history("nobody") == [] and state.recent("nobody", 5) == []

    n_users, top = state.users(5)
    assert n_users == len(ref)
    expect = sorted(((u, len(r), max(x[0] for x in r)) for u, r in ref.items()), key=lambda t: (-t[2], t[0]))
    assert top == expect[:5]
    counts: dict[str, int] = {}
    for rows in ref.values():
        for r in rows:
            counts[r[3]] = counts.get(r[3], 0) + 1
    assert state.type_counts() == counts


def test_arrays_keep_events_on_catalog_products_in_its_numbering() -> None:
    state = EventState()
    t = datetime(2026, 1, 1, tzinfo=UTC)
    state.add(
        [
            Event("u1", "A", "view", t, None, "1"),
            Event("u1", "gone", "purchase", t, None, "2"),
            Event("u2", "B", "rating", t, 4.5, "3"),
        ]
    )
    ev = state.arrays({"B": 0, "A": 1})
    assert ev.item.tolist() == [1, 0]
    assert ev.etype.tolist() == [EVENT_TYPES.index("view"), EVENT_TYPES.index("rating")]
    assert math.isnan(ev.value[0]) and ev.value[1] == 4.5 and len(ev) == 2


def test_a_restored_state_answers_the_same_and_still_drops_duplicates() -> None:
    events = _events(400, seed=11)
    state = EventState()
    state.add(events[:300])
    arrays, ids = state.export()
    again = EventState.restore(arrays, ids, state.watermark)
    # In another process the ids hash alike (BLAKE2b, not Python's per-process string hash).
    code = "from core.recommend.history import id_hashes; print(id_hashes(['e1', 'e2']).tolist())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    assert out.stdout.strip() == str(id_hashes(["e1", "e2"]).tolist())
    for s in (state, again):
        s.add(events[250:])  # 50 seen before (and repeated ids among the rest)
    assert len(again) == len(state)
    for u in {e.user_id for e in events}:
        assert again.history(u) == state.history(u)
        assert again.recent(u, 50) == state.recent(u, 50)
    assert again.users(100) == state.users(100)
    assert again.type_counts() == state.type_counts()


def test_memory_is_counted_per_event_with_the_ids() -> None:
    state = EventState()
    empty = state.nbytes()
    state.add(_events(5000, seed=2))
    # 37 bytes of columns per event at least, plus the user and product ids
    assert state.nbytes() - empty >= 37 * len(state) and len(state) > 1000


def test_a_window_forgets_old_events_and_takes_none_older() -> None:
    events = [dataclasses.replace(e, event_id=f"x{k}") for k, e in enumerate(_events(600, seed=5))]
    cutoff = 1_700_000_000 + 25 * 60
    recent = [e for e in events if e.timestamp.timestamp() >= cutoff]
    state, ref = EventState(), EventState()
    state.add(events)
    ref.add(recent)
    assert ref.prune(cutoff) == 0  # nothing to drop; older events refused from now on, as in state
    generation = state.generation
    assert state.prune(cutoff) == len(events) - len(recent) > 0
    assert state.generation > generation and len(state) == len(ref) == len(recent)
    for s in (state, ref):  # older events are not taken any more; ids seen are still dropped
        s.add([*events, Event("u1", "P1", "view", datetime.fromtimestamp(cutoff + 3600, UTC), None, "new")])
    assert len(state) == len(ref) == len(recent) + 1
    for u in {e.user_id for e in events}:
        assert state.history(u) == ref.history(u)
        assert state.recent(u, 50) == ref.recent(u, 50)
    assert state.users(100) == ref.users(100)
    assert state.type_counts() == ref.type_counts()
    index = {f"P{i}": i for i in range(20)}
    a, b = state.arrays(index), ref.arrays(index)
    assert sorted(zip(a.item.tolist(), a.ts.tolist(), strict=True)) == sorted(
        zip(b.item.tolist(), b.ts.tolist(), strict=True)
    )
    assert state.prune(cutoff) == 0
