"""The offline evaluation: one time cutoff, and nothing after it reaches any method."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from core.events import Event, parse_event, to_arrow
from core.recommend.data import EventArrays, global_split
from core.recommend.evaluate import BASELINES, HYBRID, evaluate
from core.recommend.metrics import make_split
from local.synth_ratings import SynthConfig, generate


def _events(n_users: int = 120, n_items: int = 160, seed: int = 3) -> list[Event]:
    config = SynthConfig(
        n_users=n_users, n_items=n_items, seed=seed, mean_ratings_per_user=30.0, min_ratings_per_user=10
    )
    _products, raw = generate(config)
    return [parse_event(e) for e in raw]


def _arrays(events: list[Event]) -> EventArrays:
    return EventArrays.from_arrow(to_arrow(events))


def test_global_split_cuts_everyone_at_one_time() -> None:
    ev = _arrays(_events())
    train, test, cutoff = global_split(ev, 0.2)
    assert len(train) + len(test) == len(ev)
    assert train.ts.max() < cutoff <= test.ts.min()
    assert abs(len(test) / len(ev) - 0.2) < 0.01
    split = make_split(ev, 0.2)
    assert split.scheme == "global" and np.all(split.t_query == cutoff)
    # Judged: users with history before T, on what they liked after T and had not touched before.
    has_history = np.bincount(split.train.user, minlength=len(ev.users)) > 0
    assert has_history[split.users].all() and len(split.users) > 10
    seen = set(zip(split.train.user.tolist(), split.train.item.tolist(), strict=True))
    rel = split.relevant.tocoo()
    assert not any((u, i) in seen for u, i in zip(rel.row.tolist(), rel.col.tolist(), strict=True))


def test_events_after_the_cutoff_change_no_score() -> None:
    """Poison after T (views, low ratings: no new test positives) on a few products by every
    user: if anything after T reached training, tuning or a signal of any method, its scores
    would move."""
    events = _events()
    ev = _arrays(events)
    _train, _test, cutoff = global_split(ev, 0.2)
    clean = evaluate(ev, None, cutoff=cutoff)
    rng = np.random.default_rng(0)
    targets = list(rng.choice(sorted({e.product_id for e in events}), 5, replace=False))
    users = sorted({e.user_id for e in events})
    poison = [
        Event(u, str(p), kind, datetime.fromtimestamp(cutoff + 3600 * (k + 1), UTC), value, f"poison-{u}-{p}-{kind}")  # type: ignore[arg-type]
        for u in users
        for k, p in enumerate(targets)
        for kind, value in (("view", None), ("rating", 1.0))
    ]
    poisoned = evaluate(_arrays(events + poison), None, cutoff=cutoff)
    assert [r.name for r in clean] == [*BASELINES, HYBRID]
    for a, b in zip(clean, poisoned, strict=True):
        assert a.metrics == b.metrics, (a.name, a.metrics, b.metrics)
        assert a.params == b.params, a.name
    # The poison itself is strong: served as of after it, "recent popularity" would rank it first.
    assert len(poison) == len(users) * 10
