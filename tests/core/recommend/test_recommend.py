"""The hybrid and its signals on synthetic data with known answers, metrics, splits, model artifacts
(what every ranker must do is in test_ranker_contract.py)."""

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.sparse as sp

from core.events import Event, to_arrow
from core.recommend.artifact import ModelStore, from_bytes, to_bytes
from core.recommend.data import EventArrays, aggregate, time_split
from core.recommend.hybrid import HybridParams, on_items
from core.recommend.metrics import evaluate_scores, make_split, ranking_metrics
from core.recommend.online import CatalogSnapshot, _Compiled
from core.recommend.signals import (
    TimePopularity,
    _max_normalise,
    binary_matrix,
    block,
    fit_ease,
    fit_projection,
    history_matrix,
    history_weights,
)
from core.recommend.tuning import factors_for, train_hybrid
from core.settings import Settings
from core.storage import ObjectStore
from core.types import Product, Weights

Row = tuple[str, str, str, float | None, float]  # user, item, type, value, epoch seconds


def arrays(rows: list[Row], items: list[str] | None = None) -> EventArrays:
    events = [
        Event(u, i, t, datetime.fromtimestamp(ts, UTC), v, f"e{n}")  # type: ignore[arg-type]
        for n, (u, i, t, v, ts) in enumerate(rows)
    ]
    return EventArrays.from_arrow(to_arrow(events), items)


def clusters(seed: int = 0) -> tuple[list[Row], list[str]]:
    """Two tastes: A-users touch only A items, B-users only B items. User 'probe' saw A0..A4."""
    rng = np.random.default_rng(seed)
    items = [f"A{i}" for i in range(10)] + [f"B{i}" for i in range(10)]
    rows: list[Row] = []
    t = 1_000_000.0
    for u in range(40):
        group = "A" if u < 20 else "B"
        for i in rng.choice(10, 6, replace=False):
            t += 60
            rows.append((f"u{u}", f"{group}{i}", "view", None, t))
    for i in range(5):
        rows.append(("probe", f"A{i}", "purchase", None, t + i))
    return rows, items


def chains(n_items: int = 50, n_users: int = 300, length: int = 10, seed: int = 1) -> EventArrays:
    """Users walk a cycle of items in order: what comes next is fully determined by the last item."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for u in range(n_users):
        start, t0 = int(rng.integers(n_items)), float(rng.integers(10**6, 10**7))
        for step in range(length):
            rows.append((f"u{u}", f"i{(start + step) % n_items}", "rating", 5.0, t0 + 3600 * step))
    return arrays(rows)


def test_tuning_learns_order_where_plain_ease_cannot() -> None:
    ev = chains()  # each user's whole walk takes hours: hold out the end of each walk
    split = make_split(ev, 0.2, scheme="user")
    x = binary_matrix(split.train)
    b = fit_ease(x, 100.0)
    ease = evaluate_scores(split, lambda rows: np.asarray(x[rows] @ b))
    model = train_hybrid(split.train_ev, scheme="user")
    hist = history_matrix(split.train, model.params.alpha, model.params.half_life)
    pop = TimePopularity(split.train_ev, len(ev.items))
    ours = evaluate_scores(split, lambda rows: model.score(hist[rows], split.t_query[rows], pop, None))
    p = model.params
    assert np.isfinite(p.half_life), p  # it chose to let the latest items steer
    assert ours.ndcg > ease.ndcg + 0.15, (ours, ease)
    assert ours.ndcg > 0.8 and model.info["validation_ndcg"] > 0.8


def test_one_user_path_equals_the_batch_scores() -> None:
    """The query path (:class:`_Compiled`: a model kept in its own item space, placed at its
    products' rows of a larger catalog snapshot) gives the numbers of the evaluated batch path
    (:meth:`HybridModel.components` of the model re-indexed onto the whole snapshot) for every
    signal at once, and its reasons' blocks equal the batch model's."""
    ev = chains()
    split = make_split(ev, 0.2)
    model = train_hybrid(split.train_ev)
    model = replace_params(model, beta=0.3, gamma=0.2, half_life=4.0, alpha=1.0, eta=0.5)
    pop50 = TimePopularity(split.train_ev, len(ev.items))
    model = dataclasses.replace(model, choice=factors_for(split.train_ev, pop50, 4.0)[0])  # type: ignore[type-var]
    # The model covers 40 of the catalog's 54 products (50 with events, 4 new ones), which lists
    # them in another order.
    model = on_items(model, ev.items[:40])  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(ev.items))
    ids = [*(ev.items[j] for j in perm), "new0", "new1", "new2", "new3"]
    n = len(ids)
    row_of = np.argsort(perm)  # an item's code in ev -> its snapshot row
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    when = datetime.fromtimestamp(10**6, UTC)
    products = [Product(i, f"title {i}", "", None, None, None, {}, when, when) for i in ids]
    snap = CatalogSnapshot.build(0, products, None, vectors, Weights(0.0, 1.0))
    pop = TimePopularity(dataclasses.replace(split.train_ev, items=ids, item=row_of[split.train_ev.item]), n)
    compiled = _Compiled.of(model, snap, pop, 0)
    batch_model = on_items(model, ids)
    p = model.params
    hist = history_matrix(split.train, p.alpha, p.half_life)[:, np.argsort(row_of)]
    hist.resize((hist.shape[0], n))
    tr = split.train
    checked = 0
    for u in range(0, tr.n_users, 7):
        mine = tr.user == u
        if not mine.any():
            continue
        order = np.argsort(tr.rank[mine])  # most recent first
        rows = row_of[tr.item[mine][order]].astype(np.int32)
        strength = tr.strength[mine][order].astype(np.float32)
        w_hist = history_weights(strength, tr.rank[mine][order], p.alpha, p.half_life)
        t_u = float(split.t_query[u])
        batch = batch_model.components(hist[[u]], split.t_query[[u]], pop, vectors, np.array([u]))
        one = compiled.user_parts(snap, rows, w_hist, t_u, user=u)
        profile = w_hist @ snap.vectors[rows]
        one["content"] = p.gamma * _max_normalise(snap.exact_content(profile / np.linalg.norm(profile)))
        assert set(one) == set(batch) == {"collaborative", "popular", "content", "factors"}
        for name in one:
            assert np.allclose(one[name], batch[name][0], atol=1e-5), name
        outside = np.isin(np.arange(n), row_of[:40], invert=True)
        assert one["collaborative"][outside].max() == 0 < one["collaborative"].max()
        cols = [int(c) for c in rng.choice(n, 6, replace=False)]
        collab, factors = compiled.model_block(rows, cols)
        assert np.allclose(collab, batch_model.collaborative_block(rows, cols), atol=1e-6)
        assert batch_model.choice is not None and factors is not None
        assert np.allclose(factors, batch_model.choice.q[rows] @ batch_model.choice.q[cols].T, atol=1e-6)
        assert np.allclose(block(batch_model.ease, rows, cols), batch_model.ease[rows][:, cols].toarray())
        checked += 1
    assert checked >= 3


def replace_params(model: object, **changes: float) -> object:
    from dataclasses import replace

    return replace(model, params=replace(model.params, **changes))  # type: ignore[attr-defined, type-var]


def test_ease_matches_its_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((30, 8)) < 0.4).astype(np.float32))
    lam = 5.0
    b = fit_ease(x, lam)
    g = (x.T @ x).toarray() + lam * np.eye(8)
    p = np.linalg.inv(g)
    expected = np.eye(8) - p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(b, expected, atol=1e-5) and np.allclose(np.diag(b), 0)


def _latent_rows(n_users: int, n_items: int, per_user: int, dim: int, seed: int) -> list[Row]:
    """Purchases from a low-rank taste model: user ``a`` picks ``per_user`` distinct items with
    probabilities ``softmax(2 u_a . v_i)``, one per step in time."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
    rows: list[Row] = []
    for a in range(n_users):
        logits = 2.0 * (items @ users[a])
        p = np.exp(logits - logits.max())
        picks = rng.choice(n_items, per_user, replace=False, p=p / p.sum())
        rows += [(f"u{a}", f"i{i}", "purchase", None, float(1000 * a + k)) for k, i in enumerate(picks)]
    return rows


def test_projection_spans_the_leading_singular_vectors_of_the_fit() -> None:
    rows = _latent_rows(300, 80, 12, 4, seed=1)
    inter = aggregate(arrays(rows, [f"i{i}" for i in range(80)]))
    x = binary_matrix(inter)
    b = fit_ease(x, 10.0)
    v = fit_projection(x, b, 4)
    exact = np.linalg.svd(np.asarray(x @ b), full_matrices=False)[2][:4].T
    assert v.shape == (80, 4) and np.allclose(v.T @ v, np.eye(4), atol=1e-4)
    # The same subspace: every principal angle between the two is ~0.
    assert np.linalg.svd(exact.T @ v, compute_uv=False).min() > 0.999
    # Bit for bit the same when the users come in another order (events imported differently).
    shuffled = x[np.random.default_rng(2).permutation(x.shape[0])]
    assert np.array_equal(fit_projection(shuffled, b, 4), v)
    assert np.array_equal(fit_projection(x, b, 6)[:, :4], v)  # the leading directions, whatever the rank


def test_projection_rows_follow_the_catalogs_product_order() -> None:
    """A served model's low-rank directions are re-indexed onto the live catalog: products the
    model never saw get zero rows, products the catalog no longer has are dropped."""
    from core.recommend.hybrid import HybridModel

    v = np.arange(6, dtype=np.float32).reshape(3, 2)
    model = HybridModel(["a", "b", "c"], sp.csr_matrix((3, 3), dtype=np.float32), HybridParams(shrink=0.5), subspace=v)
    # The live catalog: "b" was deleted, "new" arrived after training.
    out = on_items(model, ["c", "new", "a"]).subspace
    assert np.array_equal(out, np.array([[4, 5], [0, 0], [0, 1]], dtype=np.float32))


def test_low_rank_shrinkage_recovers_tastes_that_few_events_show() -> None:
    """Six taste groups of 50 products; each user buys 12, half of them from their group and
    half at random. Co-occurrence of that few events is mostly noise; shrinking the collaborative
    scores towards the fit's leading directions (the groups) ranks the held-out products clearly
    better, and the model carries the directions it used."""
    rng = np.random.default_rng(3)
    n_items, groups = 300, 6
    rows: list[Row] = []
    for a in range(400):
        mine = np.flatnonzero(np.arange(n_items) % groups == a % groups)
        picks: list[int] = []
        while len(picks) < 12:
            i = int(rng.choice(mine)) if rng.random() < 0.5 else int(rng.integers(n_items))
            if i not in picks:
                picks.append(i)
        rows += [(f"u{a}", f"i{i}", "purchase", None, float(1000 * a + k)) for k, i in enumerate(picks)]
    split = make_split(arrays(rows, [f"i{i}" for i in range(n_items)]), 0.2, scheme="user")  # users come one by one
    hist = history_matrix(split.train, 0.0, float("inf"))

    def ndcg(shrink: float) -> float:
        model = train_hybrid(split.train_ev, None, params=HybridParams(lam=30.0, shrink=shrink, rank=groups))
        assert (model.subspace is None) == (shrink == 0)
        return evaluate_scores(split, lambda r: model.score(hist[r], split.t_query[r], None, None)).ndcg

    plain, shrunk = ndcg(0.0), ndcg(0.8)
    assert shrunk > 1.2 * plain, (plain, shrunk)


def test_metrics_by_hand() -> None:
    recs = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    rel = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 1]], dtype=np.float32))
    m = ranking_metrics(recs, rel, n_items=7, k=3)
    ndcg_user1 = 1 / np.log2(3)
    ndcg_user2 = (1.0 + 1 / np.log2(4)) / (1.0 + 1 / np.log2(3))  # hits at ranks 1 and 3, 2 relevant
    assert m.ndcg == pytest.approx((ndcg_user1 + ndcg_user2) / 2)
    assert m.recall == pytest.approx((1.0 + 1.0) / 2)
    assert m.coverage == pytest.approx(6 / 7) and m.users == 2


def test_time_split_holds_out_each_users_latest_events() -> None:
    rows: list[Row] = [("u", f"i{k}", "view", None, 100.0 + k) for k in range(10)]
    rows += [("v", "i0", "view", None, 5.0), ("w", "i1", "view", None, 7.0), ("w", "i2", "view", None, 7.0)]
    train, test = time_split(arrays(rows), 0.2)
    held = {(train.users[u], train.items[i]) for u, i in zip(test.user, test.item, strict=True)}
    assert held == {("u", "i8"), ("u", "i9"), ("w", "i2")}  # ties keep arrival order; v's only event trains
    assert len(train) == 10


def test_aggregate_keeps_strongest_event_and_recency_rank() -> None:
    rows: list[Row] = [
        ("u", "a", "view", None, 1.0),
        ("u", "a", "purchase", None, 2.0),
        ("u", "b", "rating", 2.0, 3.0),
        ("u", "c", "click", None, 0.5),
    ]
    ev = arrays(rows)
    inter = aggregate(ev)
    got = {ev.items[i]: (float(s), int(r)) for i, s, r in zip(inter.item, inter.strength, inter.rank, strict=True)}
    assert got == {"a": (5.0, 1), "b": (1.25, 0), "c": (1.5, 2)}


@pytest.mark.integration
def test_model_artifact_round_trip_in_the_bucket(s3_settings: Settings) -> None:
    rows, items = clusters()
    model = train_hybrid(arrays(rows, items), None, params=HybridParams(lam=10.0, shrink=0.5, rank=4))
    back = from_bytes(to_bytes(model))
    assert back.items == model.items and back.params == model.params
    assert model.subspace is not None and back.subspace is not None and np.array_equal(back.subspace, model.subspace)
    # A model from before the shrinkage (no `shrink` in its parameters, no `v`) serves unshrunk.
    old = HybridParams.from_dict({k: v for k, v in model.params.as_dict().items() if k not in ("shrink", "rank")})
    assert old.shrink == 0.0 and isinstance(old.rank, int)
    unshrunk = dataclasses.replace(model, subspace=None, params=dataclasses.replace(model.params, shrink=0.0))
    assert from_bytes(to_bytes(unshrunk)).subspace is None
    assert np.allclose(back.ease.toarray(), model.ease.toarray())
    store = ObjectStore(s3_settings)
    models = ModelStore(store)
    assert models.latest() is None and models.load_if_changed(None) is None
    keys = [models.save(model) for _ in range(7)]
    assert len(set(keys)) == 7
    loaded = models.load_if_changed(None)
    assert loaded is not None and loaded[0] == keys[-1] and loaded[1].items == items
    assert models.load_if_changed(keys[-1]) is None  # unchanged: nothing downloaded
    kept = [o.key for o in store.list("models/recommender/") if o.key.endswith(".npz")]
    assert len(kept) == 6 and keys[-1] in kept  # the newest plus KEEP=5 older ones


def test_too_little_data_to_tune_falls_back_to_a_default_blend() -> None:
    from core.recommend.hybrid import NO_SIGNAL

    model = train_hybrid(arrays([("u", "a", "purchase", None, 1.0), ("u", "b", "view", None, 2.0)]))
    assert model.info["validation_ndcg"] == 0.0 and model.params == NO_SIGNAL and "fallback" in model.info


def _content_snapshot(n: int, seed: int = 0) -> object:
    """A clustered catalog of ``n`` products (image 32 + text 24 dims, a tenth without image)."""
    from core.recommend.online import CatalogSnapshot
    from core.types import Product, Weights

    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 40, n)
    image = rng.standard_normal((40, 32))[kinds] + 0.6 * rng.standard_normal((n, 32))
    text = rng.standard_normal((40, 24))[kinds // 2] + 0.6 * rng.standard_normal((n, 24))
    image = (image / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32)
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    image[::10] = 0
    now = datetime.now(UTC)
    cats = ("shoes", "bags", "hats", "mugs")
    products = [
        Product(f"p{i:05d}", f"t{i}", "", cats[int(kinds[i]) % 4], float(i % 97), None, {}, now, now) for i in range(n)
    ]
    return CatalogSnapshot.build(1, products, image, text, Weights(0.7, 0.3))


def test_content_index_candidates_match_the_exact_content_pass() -> None:
    """Large catalogs score content through a PQ index: the rows it scores carry their exact dot
    products, the blended top 10 agrees with the exact pass (the maximum used to normalise
    included), a selective filter scores every allowed row exactly, and a new snapshot reuses
    the trained codebooks."""
    import faiss

    snap = _content_snapshot(6000)
    small = snap.serving(ann_min_rows=10_000)  # type: ignore[attr-defined]
    assert small.content_index is None and small.vectors_t is not None  # the exact pass, transposed
    served = snap.serving(ann_min_rows=1000)  # type: ignore[attr-defined]
    assert served.content_index is not None and served.content_index.ntotal == 6000
    assert served.vectors_t is None  # scored through the index: no transposed copy kept
    rng = np.random.default_rng(5)
    agree, total = 0, 0
    for q in range(60):
        hist = rng.choice(6000, 6, replace=False) if q % 2 else rng.choice(600, 6, replace=False) * 10
        unit = rng.random(6).astype(np.float32) @ served.vectors[hist]
        unit /= np.linalg.norm(unit)
        others = (0.3 * rng.random(6000)).astype(np.float32)
        allowed = np.ones(6000, dtype=bool)
        allowed[hist] = False  # the user's own items: excluded, yet the highest content scores
        exact = served.vectors @ unit
        approx = served.content_candidates(unit, allowed, _best_by(others, allowed), always=hist)[0]
        scored = approx != 0
        assert scored.sum() < 6000 and np.allclose(approx[scored], exact[scored], atol=1e-5)
        assert approx.max() == pytest.approx(exact.max(), abs=1e-6)  # the same normalisation
        want = np.argsort(-np.where(allowed, exact / exact.max() + others, -np.inf))[:10]
        got = np.argsort(-np.where(allowed, approx / approx.max() + others, -np.inf))[:10]
        agree += len(set(want) & set(got))
        total += 10
        half = allowed & (np.arange(6000) % 2 == 0)  # a filter keeping half: more codes scanned
        approx = served.content_candidates(unit, half, _best_by(others, half), always=hist)[0]
        assert approx.max() == pytest.approx(exact.max(), abs=1e-6)
        want = np.argsort(-np.where(half, exact / exact.max() + others, -np.inf))[:10]
        got = np.argsort(-np.where(half, approx / approx.max() + others, -np.inf))[:10]
        agree += len(set(want) & set(got))
        total += 10
        selective = np.zeros(6000, dtype=bool)
        selective[rng.choice(6000, 300, replace=False)] = True
        sel = served.content_candidates(unit, selective, None)[0]
        np.testing.assert_allclose(sel[selective], exact[selective], atol=1e-5)
    assert agree / total >= 0.95, agree / total
    again = _content_snapshot(6000, seed=1).serving(ann_min_rows=1000, previous=served)  # type: ignore[attr-defined]
    old_codes = faiss.vector_to_array(served.content_index.pq.centroids)
    np.testing.assert_array_equal(faiss.vector_to_array(again.content_index.pq.centroids), old_codes)
    old_lists = served.content_index.quantizer.reconstruct_n(0, served.content_index.nlist)
    np.testing.assert_array_equal(again.content_index.quantizer.reconstruct_n(0, again.content_index.nlist), old_lists)
    assert again.content_index is not served.content_index and again.content_index.ntotal == 6000


def _best_by(others: np.ndarray, allowed: np.ndarray, k: int = 1000) -> np.ndarray:
    """The ``k`` best allowed rows by ``others``: what the recommender passes as ``extra``."""
    rows = np.flatnonzero(allowed)
    return rows[np.argsort(-others[rows])[:k]]


def test_content_index_edges_small_catalog_and_nothing_allowed() -> None:
    """A catalog under the candidate count is scored exactly everywhere; a filter allowing
    nothing still returns a score per product (the caller ranks nothing)."""
    snap = _content_snapshot(600).serving(ann_min_rows=500)  # type: ignore[attr-defined]
    assert snap.content_index is not None
    unit = snap.vectors[3] / np.linalg.norm(snap.vectors[3])
    scores, rows = snap.content_candidates(unit, np.ones(600, dtype=bool))
    assert rows is not None and len(rows) == 600
    np.testing.assert_allclose(scores, snap.vectors @ unit, atol=1e-5)
    none_allowed = np.zeros(600, dtype=bool)
    scores, rows = snap.content_candidates(unit, none_allowed, np.array([7, 9]), always=np.array([3]))
    assert scores.shape == (600,) and rows is not None and 3 in rows
    assert scores[3] == pytest.approx(float(snap.vectors[3] @ unit), abs=1e-5)


def _timeline() -> tuple[EventArrays, float]:
    return arrays(_timeline_rows()), 1_700_000_000.0 + 119 * 86400.0


def _timeline_rows() -> list[Row]:
    """120 days: 'steady' chosen once a day all along, 'new' five times a day in the last 10 days
    only, 'old' five times a day in the first 10 days only, 'rare' once on day 118; other items
    fill every day so the daily totals are not flat."""
    day = 86400.0
    t0 = 1_700_000_000.0
    rows: list[Row] = []
    for d in range(120):
        rows.append((f"s{d}", "steady", "view", None, t0 + d * day))
        for k in range(3 + d % 4):
            rows.append((f"f{d}-{k}", f"filler{k}", "view", None, t0 + d * day + k))
        if d >= 110:
            rows += [(f"n{d}-{k}", "new", "view", None, t0 + d * day + 10 + k) for k in range(5)]
        if d < 10:
            rows += [(f"o{d}-{k}", "old", "view", None, t0 + d * day + 10 + k) for k in range(5)]
    rows.append(("r", "rare", "view", None, t0 + 118 * day))
    return rows


def test_trend_factor_lifts_rising_items_and_lowers_ageing_ones() -> None:
    """The trend factor compares an item's choices just before a time with its history up to
    then: a new release rises far above 1, an item that was only chosen long ago falls far below,
    a steady item stays near 1 while nothing else changes, one lone event barely moves it (the
    prior), events after the time change nothing, and the one-row (query) path equals the batch
    path."""
    ev, t_end = _timeline()
    pop = TimePopularity(ev, len(ev.items))
    col = {item: n for n, item in enumerate(ev.items)}
    f = pop.trend(np.array([t_end]), 7.0)[0]
    assert f[col["new"]] > 3.0
    assert f[col["old"]] < 0.6
    assert 1.0 < f[col["rare"]] < 1.3
    t_mid = t_end - 60 * 86400.0
    mid = pop.trend(np.array([t_mid]), 7.0)[0]
    assert 0.85 < mid[col["steady"]] < 1.15  # mid-timeline: its usual share
    assert f[col["old"]] < f[col["steady"]] < mid[col["steady"]]  # at the end 'new' takes a share
    batch = pop.trend(np.array([t_end, t_mid]), 7.0)
    np.testing.assert_allclose(batch[0], f, rtol=1e-6)
    np.testing.assert_allclose(batch[1], pop.trend(np.array([t_mid]), 7.0)[0], rtol=1e-6)
    assert batch[1][col["new"]] == 1.0 < batch[0][col["new"]]  # before its release nothing is known: neutral
    # Causal: what happens after a request time does not change the trend as of it.
    later = arrays([*_timeline_rows(), *[(f"x{k}", "old", "view", None, t_mid + 86400.0 * 2 + k) for k in range(50)]])
    np.testing.assert_allclose(
        TimePopularity(later, len(later.items)).trend(np.array([t_mid]), 7.0)[0][
            [later.items.index(i) for i in ev.items]
        ],
        mid,
        rtol=1e-6,
    )
    np.testing.assert_allclose(pop.trend(np.array([t_end]), 7.0, 0.25)[0], f**0.25, rtol=1e-6)  # cached per power
    from core.recommend.signals import ROW_CACHE

    for d in range(119):  # a busy query process sees many days: the one-row cache stays bounded
        pop.trend(np.array([t_end - d * 86400.0]), 7.0)
    assert 0 < len(pop._rows) <= ROW_CACHE


def test_trend_multiplier_moves_rising_items_up_and_is_off_by_default() -> None:
    """``boost`` multiplies positive scores and divides negative ones, so a factor above 1
    always helps; with ``trend > 0`` the model's score is the summed signals times
    ``trend_factor``, and with the default ``trend = 0`` nothing changes."""
    from core.recommend.signals import boost

    np.testing.assert_allclose(boost(np.array([2.0, -2.0, 0.0], np.float32), np.array([2.0, 2.0, 2.0])), [4, -1, 0])
    ev, t_end = _timeline()
    model = train_hybrid(ev, None, params=HybridParams(lam=10.0))
    assert model.trend_factor(np.array([t_end]), TimePopularity(ev, len(ev.items))) is None
    pop = TimePopularity(ev, len(ev.items))
    split = make_split(ev, 0.2)
    hist = history_matrix(split.train, 0.0, INF_HALF_LIFE)
    plain = model.score(hist, split.t_query, pop, None)
    on = replace_params(model, trend=0.5, trend_tau_days=7.0)
    summed = sum(on.components(hist, split.t_query, pop, None).values())  # type: ignore[attr-defined]
    factor = pop.trend(split.t_query, 7.0) ** 0.5
    np.testing.assert_allclose(on.score(hist, split.t_query, pop, None), boost(summed, factor), rtol=1e-5)  # type: ignore[attr-defined]
    np.testing.assert_allclose(summed, plain, rtol=1e-6)
    assert not np.allclose(factor, 1.0)


INF_HALF_LIFE = float("inf")


def _rated_clusters(seed: int = 0) -> EventArrays:
    """4 clusters of 25 products; every user rates 15 products of their cluster in turn. The first
    13 of each cluster are good (4-5 stars), the rest bad (1-2 stars): which ones a user rates is
    chance, so co-occurrence cannot tell good from bad, the ratings others gave can."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for u in range(400):
        c = u % 4
        for n, j in enumerate(rng.choice(25, 15, replace=False)):
            stars = float(rng.integers(4, 6) if j < 13 else rng.integers(1, 3))
            rows.append((f"u{u}", f"c{c}i{j:02d}", "rating", stars, 1_700_000_000.0 + u * 60 + n * 86400))
    return arrays(rows, [f"c{c}i{j:02d}" for c in range(4) for j in range(25)])


def test_reranker_learns_what_the_blend_cannot_see() -> None:
    """A blend without ratings (rho = 0, alpha = 0) ranks good and bad products of a cluster
    alike; the reranker, fitted on one split, learns from the products' mean stars and lifts the
    good ones on another (held-out) split."""
    from dataclasses import replace

    from core.recommend.hybrid import RERANK_FEATURES
    from core.recommend.tuning import fit_reranker

    params = HybridParams(lam=10.0)
    fit_on, judge_on = make_split(_rated_clusters(0)), make_split(_rated_clusters(1))

    def parts(split: object) -> tuple[object, object]:
        return (
            history_matrix(split.train, 0.0, INF_HALF_LIFE),  # type: ignore[attr-defined]
            TimePopularity(split.train_ev, split.train.n_items),  # type: ignore[attr-defined]
        )

    model = train_hybrid(fit_on.train_ev, None, params=params)
    hist, pop = parts(fit_on)
    reranker = fit_reranker(fit_on, model, hist, pop, None, candidates=20)  # type: ignore[arg-type]
    assert reranker is not None
    assert reranker.coef[RERANK_FEATURES.index("mean_stars")] > 0.5

    def ndcg(m: object) -> float:
        split = judge_on
        hist, pop = parts(split)
        seen = binary_matrix(split.train)
        return evaluate_scores(
            split,
            lambda rows: m.score(hist[rows], split.t_query[rows], pop, None, seen[rows]),  # type: ignore[attr-defined]
        ).ndcg

    judged = train_hybrid(judge_on.train_ev, None, params=params)
    plain, reranked = ndcg(judged), ndcg(replace(judged, reranker=reranker))
    assert reranked > plain + 0.2, (plain, reranked)


def _users_renumbered(ev: EventArrays) -> EventArrays:
    """The same events with the users numbered in another order."""
    perm = np.random.default_rng(5).permutation(len(ev.users))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return EventArrays(
        [ev.users[i] for i in perm], ev.items, inv[ev.user].astype(ev.user.dtype), *dataclasses.astuple(ev)[3:]
    )


def test_training_does_not_depend_on_the_order_users_arrive_in() -> None:
    """The same events with the users numbered in another order (events imported through the API
    in another order than an offline file) train the same model, bit for bit: tuned parameters,
    EASE weights, low-rank directions and reranker."""
    ev = _rated_clusters(0)
    renumbered = _users_renumbered(ev)
    models = [train_hybrid(e, None, rerank="always") for e in (ev, renumbered)]
    assert models[0].params == models[1].params and models[0].reranker is not None
    assert models[0].reranker == models[1].reranker
    assert np.array_equal(models[0].ease.toarray(), models[1].ease.toarray())
    shrunk = [
        train_hybrid(e, None, params=HybridParams(lam=10.0, shrink=0.5, rank=4)).subspace for e in (ev, renumbered)
    ]
    assert shrunk[0] is not None and shrunk[1] is not None and np.array_equal(shrunk[0], shrunk[1])


def test_reranker_needs_positives_and_travels_with_the_model() -> None:
    from dataclasses import replace

    from core.recommend.hybrid import RERANK_FEATURES, Reranker
    from core.recommend.tuning import fit_reranker

    rows, items = clusters()  # views and purchases; no purchase held out for anyone below
    ev = arrays([r for r in rows if r[2] == "view"], items)
    split = make_split(ev)
    model = train_hybrid(split.train_ev, None, params=HybridParams(lam=10.0))
    hist = history_matrix(split.train, 0.0, INF_HALF_LIFE)
    pop = TimePopularity(split.train_ev, split.train.n_items)
    assert fit_reranker(split, model, hist, pop, None) is None  # nothing to learn from

    n = len(RERANK_FEATURES)
    reranker = Reranker(tuple(range(n)), (2.0,) * n, tuple(-0.5 * k for k in range(n)), 0.25, 40)
    back = from_bytes(to_bytes(replace(model, reranker=reranker)))
    assert back.reranker == reranker
    assert from_bytes(to_bytes(model)).reranker is None  # a model without one loads without one
    other = replace(reranker, features=(*RERANK_FEATURES, "from_a_newer_version"))
    assert from_bytes(to_bytes(replace(model, reranker=other))).reranker is None  # ignored, blend served


def test_rerank_mode_decides_whether_the_model_gets_a_reranker(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECS_RERANK: ``off`` fits nothing, ``auto`` keeps a reranker that beats the blend on the
    other half of the validation users (here: the one that can see ratings), ``always`` keeps
    one whenever it can be fitted; ``local train`` says which happened."""
    from dataclasses import replace

    from core.recommend import tuning
    from core.recommend.hybrid import RERANK_FEATURES, Reranker
    from core.recommend.train import TrainReport
    from core.recommend.tuning import tune_hybrid

    ev = _rated_clusters(0)
    quick = {"grid": {"lam": [10.0]}, "start": HybridParams(lam=10.0, rho=0.0, alpha=0.0)}
    _, _, off = tune_hybrid(ev, None, rerank="off", **quick)  # type: ignore[arg-type]
    assert off.reranker is None and off.rerank_check is None
    _, _, auto = tune_hybrid(ev, None, rerank="auto", **quick)  # type: ignore[arg-type]
    assert auto.reranker is not None and auto.rerank_check is not None
    assert auto.rerank_check["reranked"] > auto.rerank_check["blend"] + 0.1, auto.rerank_check
    _, _, always = tune_hybrid(ev, None, rerank="always", **quick)  # type: ignore[arg-type]
    assert always.reranker == auto.reranker  # same fit, same data

    # A reranker that reverses the blend's order loses the check: auto drops it, always keeps it.
    n = len(RERANK_FEATURES)
    coef = tuple(5.0 if f == "log_rank" else 0.0 for f in RERANK_FEATURES)
    backwards = Reranker((0.0,) * n, (1.0,) * n, coef, 0.0, 20)
    monkeypatch.setattr(tuning, "fit_reranker", lambda *a, **k: backwards)
    _, _, auto = tune_hybrid(ev, None, rerank="auto", **quick)  # type: ignore[arg-type]
    assert auto.reranker is None and auto.rerank_check is not None
    assert auto.rerank_check["reranked"] < auto.rerank_check["blend"], auto.rerank_check
    _, _, always = tune_hybrid(ev, None, rerank="always", **quick)  # type: ignore[arg-type]
    assert always.reranker == backwards and always.rerank_check == auto.rerank_check
    monkeypatch.undo()

    model = train_hybrid(ev, None, params=HybridParams(lam=10.0))

    def line(info: dict[str, object], kept: bool) -> str:
        m = replace(model, info=info, reranker=backwards if kept else None)
        return TrainReport("k", m, 1, 1, 1, 0.1).summary().splitlines()[-1]

    assert line({"rerank_mode": "off"}, False) == "  reranker: off (RECS_RERANK=off)"
    worse = {"blend": 0.3, "reranked": 0.2, "users": 10.0}
    assert line({"rerank_mode": "auto", "rerank_check": worse}, False).endswith("dropped: no better than the blend")
    assert line({"rerank_mode": "always", "rerank_check": worse}, True).endswith("kept anyway (RECS_RERANK=always)")
    better = {"blend": 0.2, "reranked": 0.3, "users": 10.0}
    assert line({"rerank_mode": "auto", "rerank_check": better}, True).endswith(", kept")
    assert Settings(recs_rerank="always").recs_rerank == "always"
    with pytest.raises(ValueError):
        Settings(recs_rerank="sometimes")  # type: ignore[arg-type]


def test_choice_model_learns_taste_likes_and_timing() -> None:
    """The time-aware choice model on rated clusters: a user's unseen products of their own cluster
    score above every other cluster's (taste, from what was chosen), the good ones (4-5 stars from
    others) above the bad ones (the rating head: choices alone cannot tell them apart), an item
    hyped at the user's time rises (the trend offset), users it never saw get zeros, and products
    it never saw get probability 0 after re-indexing onto a catalog."""
    from core.recommend.factors import FactorConfig

    ev = _rated_clusters(0)
    pop = TimePopularity(ev, len(ev.items))
    f, seconds = factors_for(ev, pop, 4.0, FactorConfig(dim=8, epochs=30, batch=256))
    assert seconds > 0 and f.rated and f.like_at == 4.0
    row = f.row_of()["u0"]  # cluster 0
    s = f.scores(np.array([row, -1]), None)
    seen = {ev.items[i] for i in ev.item[ev.user == ev.users.index("u0")]}
    unseen = [k for k, item in enumerate(ev.items) if item not in seen]
    own = [k for k in unseen if ev.items[k].startswith("c0")]
    good = [k for k in own if int(ev.items[k][-2:]) < 13]
    bad = [k for k in own if int(ev.items[k][-2:]) >= 13]
    others = [k for k in unseen if not ev.items[k].startswith("c0")]
    assert good and bad and others
    assert s[0, own].min() > s[0, others].max()
    assert s[0, good].min() > s[0, bad].max()
    assert s[0].max() == pytest.approx(1.0) and not s[1].any()
    last = min(good, key=lambda k: s[0, k])  # the good product the model likes least
    hyped = np.zeros((1, len(ev.items)), dtype=np.float32)
    hyped[0, last] = np.log(100.0)  # chosen 100x more than usual around the user's last day
    timed = f.scores(np.array([row]), hyped)[0]
    assert timed[last] == 1.0 and s[0, last] < 1.0  # it is now the most likely choice
    # Onto a catalog in reverse order, without the first product and with one new product.
    n = len(ev.items)
    to_new = np.arange(n, 0, -1, dtype=np.int64) - 1  # item i -> n - 1 - i
    to_new[0] = -1
    moved = f.reindexed(to_new, n + 1)
    again = moved.scores(np.array([row]), None)[0]
    assert again[n - 1] == 0.0 and again[n] == 0.0  # dropped position and new product: probability 0
    assert not f.reindexed(np.full(n, -1, dtype=np.int64), 3).scores(np.array([row]), None).any()  # none it knows
    assert np.allclose(again[to_new[1:]], s[0, 1:] / s[0, 1:].max(), atol=1e-6)
    # Over more products than max_items it fits the most chosen ones; the others get probability 0.
    capped, _ = factors_for(ev, pop, 4.0, FactorConfig(dim=8, epochs=2), max_items=30)
    most = set(np.argsort(-pop.global_counts, kind="stable")[:30].tolist())
    some = capped.scores(np.array([row]), None)[0]
    assert capped.q.shape == (len(ev.items), 8) and {int(k) for k in np.flatnonzero(some)} == most


def test_choice_model_travels_with_the_model_and_does_not_depend_on_numbering() -> None:
    """Users or products numbered in another order (events imported through the API in another
    order than an offline file) give the same factors bit for bit; the factors survive the model
    file; `local train` reports them."""
    ev = _rated_clusters(0)
    renumbered = _users_renumbered(ev)
    a, b = (train_hybrid(e, None, params=HybridParams(lam=10.0, eta=1.0)).choice for e in (ev, renumbered))
    assert a is not None and b is not None
    rows_a, rows_b = a.row_of(), b.row_of()
    by_id = [(rows_a[u], rows_b[u]) for u in ev.users]
    assert np.array_equal(a.p[[i for i, _ in by_id]], b.p[[j for _, j in by_id]])
    assert np.array_equal(a.q, b.q) and np.array_equal(a.choice_bias, b.choice_bias)
    # The same with the products numbered in another order (a catalog imported in another order).
    iperm = np.random.default_rng(6).permutation(len(ev.items))
    icode = np.empty_like(iperm)
    icode[iperm] = np.arange(len(iperm))
    reordered = dataclasses.replace(ev, items=[ev.items[j] for j in iperm], item=icode[ev.item].astype(ev.item.dtype))
    c = train_hybrid(reordered, None, params=HybridParams(lam=10.0, eta=1.0)).choice
    assert c is not None and np.array_equal(c.p, a.p)
    assert np.array_equal(c.q[icode], a.q) and np.array_equal(c.item_bias[icode], a.item_bias)
    # Users listed without any event (all of theirs after an evaluation cutoff) change nothing:
    # the model trained offline equals the one trained from the same events through the API.
    idle = dataclasses.replace(ev, users=[*ev.users, "idle-a", "idle-b"])
    d = train_hybrid(idle, None, params=HybridParams(lam=10.0, eta=1.0)).choice
    assert d is not None and np.array_equal(d.p[: len(ev.users)], a.p) and np.array_equal(d.q, a.q)
    assert not d.p[len(ev.users) :].any()
    model = train_hybrid(ev, None, params=HybridParams(lam=10.0, eta=1.0))
    back = from_bytes(to_bytes(model)).choice
    assert back is not None and model.choice is not None and back.users == model.choice.users
    for name in ("p", "user_bias", "q", "choice_bias", "item_bias"):
        assert np.array_equal(getattr(back, name), getattr(model.choice, name)), name
    assert (back.mean, back.scale, back.tau_days, back.like_at) == (
        model.choice.mean,
        model.choice.scale,
        model.choice.tau_days,
        model.choice.like_at,
    )
    assert (
        from_bytes(to_bytes(dataclasses.replace(model, choice=None))).choice is None
    )  # models without one load as before
    from core.recommend.train import TrainReport

    line = TrainReport("k", model, 1, 1, 1, 0.1).summary().splitlines()[-1]
    assert line.startswith("  choice model: 16 factors for 400 users, fitted in "), line
