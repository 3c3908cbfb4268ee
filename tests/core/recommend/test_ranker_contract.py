"""The contract every ranker of the offline comparison keeps (:class:`core.recommend.baselines.Ranker`),
run on each of them over one small synthetic shop whose right answers are planted:

- two tastes: A-users buy and view only A products, B-users only B products; the user ``probe``
  bought A0..A4, so the products they should get next are A5..A9;
- ``hit`` was viewed by most users long ago (the all-time best seller);
- ``fresh`` was viewed by a handful of users the day before the cutoff (popular lately).

A new ranker is one line in :data:`RANKERS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest

from core.events import Event, to_arrow
from core.recommend import baselines as b
from core.recommend.data import EventArrays
from core.recommend.evaluate import BASELINES
from core.recommend.hybrid import HybridParams
from core.recommend.metrics import Split, make_split

DAY = 86400.0
T0 = 1_700_000_000.0
CUTOFF = T0 + 40 * DAY
TASTE = [f"A{i}" for i in range(5, 10)]
ITEMS = [*(f"A{i}" for i in range(10)), *(f"B{i}" for i in range(10)), "hit", "fresh"]

RANKERS: dict[str, tuple[Callable[[], b.Ranker], str]] = {
    "popularity": (b.Popularity, "hit"),
    "recent popularity": (lambda: b.RecentPopularity(3.0), "fresh"),
    "item-kNN (cosine)": (lambda: b.ItemKNN(10), "taste"),
    "EASE": (lambda: b.Ease(10.0), "taste"),
    "EASE + recent pop.": (lambda: b.EaseRecentBlend(b.Ease(10.0), b.RecentPopularity(3.0), 1.0), "taste"),
    b.HYBRID: (lambda: b.Hybrid(None), "taste"),  # tuned inside the training part, as the comparison runs it
    "hybrid, fixed parameters": (
        lambda: b.Hybrid(None, params=HybridParams(lam=10.0, beta=0.2, half_life=3.0)),
        "taste",
    ),
}
"""Each ranker as the tests make it, and what it must put first: ``hit`` or ``fresh`` for every
user, or the probe's ``taste`` (A5..A9 above every B product)."""

Row = tuple[str, str, str, float]  # user, product, event type, epoch seconds


def _shop_rows() -> list[Row]:
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    for u in range(40):
        group = "A" if u < 20 else "B"
        for step, i in enumerate(rng.choice(10, 6, replace=False)):
            kind = "purchase" if step % 2 else "view"
            rows.append((f"{group}-user{u}", f"{group}{i}", kind, T0 + (u % 10 + 4 * step + 1) * DAY + u))
        if u % 4 != 3:
            rows.append((f"{group}-user{u}", "hit", "view", T0 + u))
    rows += [(f"{'A' if u < 20 else 'B'}-user{u}", "fresh", "view", CUTOFF - DAY - u) for u in range(0, 40, 5)]
    rows += [("probe", f"A{i}", "purchase", T0 + 35 * DAY + i) for i in range(5)]
    # Held out (after the cutoff): what users liked next, so that the split judges someone.
    rows += [("probe", "A5", "purchase", CUTOFF + DAY)]
    rows += [(f"B-user{u}", f"B{u % 10}", "purchase", CUTOFF + DAY + u) for u in range(20, 40)]
    return rows


def _split(rows: list[Row]) -> Split:
    events = [
        Event(u, i, kind, datetime.fromtimestamp(ts, UTC), None, f"e{n}")  # type: ignore[arg-type]
        for n, (u, i, kind, ts) in enumerate(rows)
    ]
    return make_split(EventArrays.from_arrow(to_arrow(events), ITEMS), cutoff=CUTOFF)


@functools.cache
def _shop() -> Split:
    return _split(_shop_rows())


@functools.cache
def _poisoned() -> Split:
    """The same shop with much more happening after the cutoff: every user buys B0 and B1 and
    views ``hit`` (new held-out positives and popularity that no ranker may see)."""
    users = sorted({r[0] for r in _shop_rows()})
    late = [
        (u, p, kind, CUTOFF + 2 * DAY + k)
        for k, u in enumerate(users)
        for p in ("B0", "B1")
        for kind in ("view", "purchase")
    ]
    return _split(_shop_rows() + late + [(u, "hit", "view", CUTOFF + 3 * DAY) for u in users])


@functools.cache
def _scores(name: str, poisoned: bool = False) -> np.ndarray:
    split = _poisoned() if poisoned else _shop()
    return RANKERS[name][0]().fit(split).score(np.arange(len(split.train_ev.users), dtype=np.int32))


def test_the_planted_shop_is_what_the_tests_assume() -> None:
    split, poisoned = _shop(), _poisoned()
    assert split.train_ev.users == poisoned.train_ev.users and split.train_ev.items == ITEMS
    assert len(split.train_ev) == len(poisoned.train_ev) and len(split.users) > 0
    assert split.relevant.nnz < poisoned.relevant.nnz  # the poison adds held-out positives


def test_every_ranker_of_the_comparison_runs_the_contract() -> None:
    assert {*BASELINES, b.HYBRID} <= set(RANKERS)


@pytest.mark.parametrize("name", RANKERS)
def test_scores_are_finite_float32_for_every_user_and_product(name: str) -> None:
    split = _shop()
    s = _scores(name)
    assert s.shape == (len(split.train_ev.users), len(ITEMS)) and s.dtype == np.float32
    assert np.isfinite(s).all() and s.std() > 0
    some = np.array([3, 0, 7], dtype=np.int32)  # any rows, in any order
    np.testing.assert_array_equal(RANKERS[name][0]().fit(split).score(some), s[some])


@pytest.mark.parametrize("name", RANKERS)
def test_fitting_twice_gives_the_same_scores(name: str) -> None:
    split = _shop()
    again = RANKERS[name][0]().fit(split).score(np.arange(len(split.train_ev.users), dtype=np.int32))
    np.testing.assert_array_equal(again, _scores(name))


@pytest.mark.parametrize("name", RANKERS)
def test_fit_sees_only_the_training_part(name: str) -> None:
    """Events after the cutoff (new held-out positives, a burst of popularity) change no score."""
    np.testing.assert_array_equal(_scores(name, poisoned=True), _scores(name))


@pytest.mark.parametrize("name", RANKERS)
def test_the_planted_answer_ranks_first(name: str) -> None:
    s = _scores(name)
    users = _shop().train_ev.users
    planted = RANKERS[name][1]
    if planted == "taste":
        probe = s[users.index("probe")]
        cluster = ITEMS[5:20]  # A5..A9 and every B product: what the probe has not bought
        ranked = sorted(cluster, key=lambda item: -probe[ITEMS.index(item)])
        assert sorted(ranked[:5]) == TASTE, (name, ranked)
    else:
        first = {ITEMS[int(i)] for i in np.argmax(s, axis=1)}
        assert first == {planted}, (name, first)
