"""The synthetic MovieLens-like rating generator: determinism, schema and the structure it must reproduce."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local.synth_ratings import (
    DAY,
    GENRES,
    Simulation,
    SynthConfig,
    generate,
    gini,
    main,
    simulate,
    summarize,
)

SMALL = SynthConfig(n_users=200, n_items=400, mean_ratings_per_user=50.0, min_ratings_per_user=20, seed=3)
Data = tuple[list[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def data() -> Data:
    return generate(SMALL)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(SMALL)


def _genre_matrix(products: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[g in p["genres"].split("|") for g in GENRES] for p in products], dtype=float)


def _arrays(events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, value, timestamp), sorted by user then time."""
    u = np.array([int(e["user_id"][1:]) - 1 for e in events])
    i = np.array([int(e["product_id"][1:]) - 1 for e in events])
    v = np.array([e["value"] for e in events])
    t = np.array([e["timestamp"] for e in events])
    order = np.lexsort((np.arange(len(u)), t, u))
    return u[order], i[order], v[order], t[order]


def test_deterministic_by_seed(data: Data) -> None:
    assert generate(SMALL) == data
    other = generate(replace(SMALL, seed=4))
    assert other[0] != data[0] and other[1] != data[1]
    sim_a, sim_b = simulate(SMALL), simulate(SMALL)
    assert np.array_equal(sim_a.item, sim_b.item) and np.array_equal(sim_a.value, sim_b.value)
    # generate() is the records view of simulate().
    assert [e["value"] for e in data[1]] == sim_a.value.tolist()
    assert [e["product_id"] for e in data[1]] == [f"m{i + 1}" for i in sim_a.item.tolist()]


def test_schema(data: Data) -> None:
    products, events = data
    assert [p["product_id"] for p in products] == [f"m{i + 1}" for i in range(SMALL.n_items)]
    for p in products:
        assert set(p) == {"product_id", "title", "description", "category", "price", "genres"}
        genres = p["genres"].split("|")
        assert 1 <= len(genres) <= 3 and len(set(genres)) == len(genres) and set(genres) <= set(GENRES)
        assert p["category"] == genres[0]
        assert all(g.lower() in p["description"] for g in genres)
        assert re.fullmatch(r".+ \((19|20)\d\d\)", p["title"])
        assert isinstance(p["price"], float) and p["price"] > 0
    assert len({p["title"] for p in products}) == len(products)
    ids = {p["product_id"] for p in products}
    for e in events:
        assert set(e) == {"user_id", "product_id", "event_type", "value", "timestamp"}
        assert e["event_type"] == "rating" and e["product_id"] in ids and re.fullmatch(r"u\d+", e["user_id"])
        assert type(e["value"]) is int and 1 <= e["value"] <= 5 and type(e["timestamp"]) is int
    ts = [e["timestamp"] for e in events]
    assert ts == sorted(ts)
    json.dumps(data)  # plain JSON types only


def test_marginals_match_movielens_shape(data: Data) -> None:
    products, events = data
    s = summarize(products, events)
    assert s["users"] == SMALL.n_users
    assert s["per_user_min"] >= SMALL.min_ratings_per_user
    assert 0.8 * SMALL.n_users * SMALL.mean_ratings_per_user < s["ratings"] < 1.2 * SMALL.n_users * 50
    assert 3.35 < s["rating_mean"] < 3.7 and 0.5 < s["share_ge4"] < 0.6
    values = np.array([e["value"] for e in events])
    assert (np.bincount(values, minlength=6)[1:] / len(values)).min() > 0.04  # every star is used
    # Long-tailed activity and a strong (but not total) popularity skew.
    assert s["per_user_p95"] > 2 * s["per_user_median"]
    assert s["per_user_median"] < SMALL.mean_ratings_per_user
    assert 0.4 < s["item_gini"] < 0.8 and 0.25 < s["top10pct_item_share"] < 0.7
    assert s["unrated_items"] < 0.15 * SMALL.n_items
    assert 150 < s["span_days"] <= SMALL.span_days
    pairs = {(e["user_id"], e["product_id"]) for e in events}
    assert len(pairs) == len(events)  # no item rated twice by a user
    assert gini(np.ones(10)) == pytest.approx(0.0) and gini(np.r_[np.zeros(99), 1.0]) > 0.98


def test_time_structure(data: Data, sim: Simulation) -> None:
    products, events = data
    # Items are only rated after release; most of a user's ratings come within days of their first one.
    assert (sim.timestamp >= sim.items.release[sim.item]).all()
    assert summarize(products, events)["share_within_3d_of_first"] > 0.6
    # Hype: ratings of items released during the timeline bunch up soon after release. Measured as the share of
    # all ratings between the item's release and each of its ratings, out of those after its release: ~0.5 if
    # items were picked regardless of their age (0.45-0.47 with ageing alone), ~0.38 with the default hype.
    ts = np.sort(sim.timestamp)
    new = sim.items.release[sim.item] >= SMALL.start_timestamp
    before = np.searchsorted(ts, sim.items.release[sim.item][new])
    upto = np.searchsorted(ts, sim.timestamp[new], side="right")
    assert new.mean() > 0.05 and np.median((upto - before) / (len(ts) - before)) < 0.43
    # Users are active at different times: per-user median times spread across the timeline.
    user_mid = np.array([np.median(sim.timestamp[sim.user == u]) for u in range(SMALL.n_users)])
    assert np.ptp(user_mid) > 0.8 * SMALL.span_days * DAY and np.std(user_mid) > 30 * DAY


def test_user_history_structure(data: Data) -> None:
    products, events = data
    genres = _genre_matrix(products)
    u, i, _, _ = _arrays(events)
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    ends = np.r_[starts[1:], len(u)]

    def profile(items: np.ndarray) -> np.ndarray:
        v = genres[items].sum(axis=0)
        unit: np.ndarray = v / np.linalg.norm(v)
        return unit

    same, other = [], []
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        cut = a + int(0.8 * (b - a))
        head, tail = profile(i[a:cut]), profile(i[cut:b])
        a2, b2 = starts[(k + 1) % len(starts)], ends[(k + 1) % len(starts)]
        same.append(head @ tail)
        other.append(head @ profile(i[a2 + int(0.8 * (b2 - a2)) : b2]))
    # The last 20% resembles the user's first 80% more than another user's, but is not a copy.
    assert np.mean(same) > np.mean(other) + 0.05 and np.mean(same) < 0.97
    # Genre runs: consecutive ratings share a genre more often than in a shuffled history.
    nxt = u[1:] == u[:-1]
    shared = (genres[i[1:]] * genres[i[:-1]]).sum(axis=1) > 0
    perm = np.random.default_rng(0).permutation(len(i))
    shuffled = (genres[i[perm][1:]] * genres[i[perm][:-1]]).sum(axis=1) > 0
    assert shared[nxt].mean() > shuffled.mean() + 0.04


def test_ratings_follow_affinity_quality_and_exposure(sim: Simulation) -> None:
    # Rating values carry taste and quality signal.
    aff = sim.users.affinity0[sim.user, sim.item]
    assert np.corrcoef(aff, sim.value)[0, 1] > 0.2
    assert np.corrcoef(sim.items.quality[sim.item], sim.value)[0, 1] > 0.2
    # Choices favour high-affinity items, yet exposure makes users rate some items they dislike, popular ones too.
    assert aff.mean() > 0.3
    counts = np.bincount(sim.item, minlength=SMALL.n_items)
    top = np.argsort(-counts)[: SMALL.n_items // 10]
    on_top = np.isin(sim.item, top)
    assert 0.04 < (sim.value[on_top] <= 2).mean() < (sim.value[~on_top] <= 2).mean()
    # Popular items are rated a bit better on average (quality and popularity correlate).
    assert sim.value[on_top].mean() > sim.value[~on_top].mean()


# Shifts over time (what makes the request time matter): compared on the same seed with the mechanism on and off.
TIMED = SynthConfig(n_users=300, n_items=600, mean_ratings_per_user=50.0, min_ratings_per_user=20)


def _genre_shares(sim: Simulation, mask: np.ndarray) -> np.ndarray:
    v = sim.items.genres[sim.item[mask]].sum(axis=0).astype(float)
    shares: np.ndarray = v / v.sum()
    return shares


def _thirds_shift(sim: Simulation) -> float:
    """L1 distance between the genre shares of the events in the first and in the last third of the timeline."""
    t0, t1 = sim.timestamp.min(), sim.timestamp.max()
    first = sim.timestamp < t0 + (t1 - t0) / 3
    last = sim.timestamp >= t0 + 2 * (t1 - t0) / 3
    return float(np.abs(_genre_shares(sim, first) - _genre_shares(sim, last)).sum())


def _users_with_gap(sim: Simulation, days: float) -> float:
    """Share of users with two consecutive ratings at least ``days`` apart."""
    order = np.lexsort((sim.timestamp, sim.user))
    u, t = sim.user[order], sim.timestamp[order]
    same = u[1:] == u[:-1]
    gap = same & (np.diff(t) >= days * DAY)
    return len(np.unique(u[1:][gap])) / len(np.unique(u))


def test_genre_waves_shift_what_is_popular() -> None:
    on_shift: list[float] = []
    off_shift: list[float] = []
    corr_on: list[float] = []
    corr_off: list[float] = []
    for seed in (0, 1):
        cfg = replace(TIMED, seed=seed)
        on, off = simulate(cfg), simulate(replace(cfg, genre_wave=0.0))
        assert off.items.genre_wave.std() == 0 and 0.4 < on.items.genre_wave.std() < 0.6
        # The catalog is the same whatever the waves' strength; only the choices differ.
        assert np.array_equal(on.items.release, off.items.release)
        assert np.array_equal(on.timestamp, off.timestamp)
        on_shift.append(_thirds_shift(on))
        off_shift.append(_thirds_shift(off))
        # Per genre and fortnight, the genre's share of the ratings follows its wave (log share vs mean wave).
        for sim, out in ((on, corr_on), (off, corr_off)):
            day = (sim.timestamp - cfg.start_timestamp) // DAY
            big = sim.items.genres.sum(axis=0) >= 50
            xs, ys = [], []
            for k in range(int(day.max()) // 14):
                in_bin = (day >= 14 * k) & (day < 14 * (k + 1))
                ys.append(np.log(_genre_shares(sim, in_bin)[big]))
                xs.append(on.items.genre_wave[14 * k : 14 * (k + 1), big].mean(axis=0))
            x, y = np.array(xs), np.array(ys)
            x, y = x - x.mean(axis=0), y - y.mean(axis=0)  # within genre: over time only
            out.append(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]))
    assert np.mean(on_shift) > 1.3 * np.mean(off_shift)
    assert min(corr_on) > 0.4 and min(corr_on) > max(corr_off) + 0.3  # off: chance (who is active when)


def test_users_return_after_long_gaps() -> None:
    on = simulate(TIMED)
    off = simulate(replace(TIMED, return_prob=0.0))
    every = simulate(replace(TIMED, return_prob=1.0))
    share_on, share_off, share_every = (_users_with_gap(s, 30) for s in (on, off, every))
    assert share_on > 0.2 and share_on > share_off + 0.07
    # Returns after the end of the timeline are censored: far fewer than all users show one, and nothing is dated
    # after the timeline.
    assert share_on + 0.15 < share_every < 0.9
    assert every.timestamp.max() <= TIMED.start_timestamp + TIMED.span_days * DAY
    # A return holds a small share of the user's ratings: count each user's ratings after their longest gap.
    order = np.lexsort((every.timestamp, every.user))
    u, t = every.user[order], every.timestamp[order]
    after = []
    for k in np.unique(u):
        tk = t[u == k]
        if len(tk) > 1 and np.diff(tk).max() >= 30 * DAY:
            after.append((len(tk) - 1 - int(np.argmax(np.diff(tk)))) / len(tk))
    assert 0.03 < np.median(after) < 0.25
    # Same overall activity.
    assert len(on.user) == len(off.user)


def test_new_items_arrive_until_late(sim: Simulation) -> None:
    t0, t1 = sim.timestamp.min(), sim.timestamp.max()
    late = t0 + 0.8 * (t1 - t0)
    first = np.full(SMALL.n_items, np.iinfo(np.int64).max)
    np.minimum.at(first, sim.item, sim.timestamp)
    first_late = first[first < np.iinfo(np.int64).max] >= late
    # Some items are first rated in the last 20% of the timeline, mostly releases of that time.
    assert first_late.sum() >= 0.02 * SMALL.n_items
    late_items = np.flatnonzero((first >= late) & (first < np.iinfo(np.int64).max))
    assert (sim.items.release[late_items] >= SMALL.start_timestamp).mean() > 0.5
    # Releases during the timeline are spread over it, not bunched at its start.
    new = sim.items.release[sim.items.release >= SMALL.start_timestamp]
    assert ((new - SMALL.start_timestamp) >= 0.8 * SMALL.span_days * DAY).mean() > 0.08


def test_rejects_impossible_configs() -> None:
    with pytest.raises(ValueError):
        generate(SynthConfig(n_users=5, n_items=50, mean_ratings_per_user=30.0, min_ratings_per_user=25))
    with pytest.raises(ValueError):
        generate(replace(SMALL, mean_ratings_per_user=15.0))
    for bad in (
        {"genre_wave": -0.1},
        {"genre_wave_days": (60.0, 30.0)},
        {"return_prob": 1.5},
        {"return_share": 0.0},
        {"return_gap_days": (0.0, 10.0)},
    ):
        with pytest.raises(ValueError):
            simulate(replace(SMALL, **bad))


def test_cli_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["--out", str(out), "--users", "30", "--items", "300", "--seed", "2"]) == 0
    products = [json.loads(x) for x in (out / "products.jsonl").read_text().splitlines()]
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert len(products) == 300 and len({e["user_id"] for e in events}) == 30
    assert (products, events) == generate(SynthConfig(n_users=30, n_items=300, seed=2))
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed and "30 users" in printed and f"{len(events)} ratings" in printed
