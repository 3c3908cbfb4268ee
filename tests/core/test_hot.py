"""The in-memory hot catalog against the LanceDB path, on the S3 server: same answers (exact
mode), high recall (ANN mode), filters always honoured, incremental refresh, read-your-writes."""

from datetime import UTC, datetime

import numpy as np
import pytest

from core.catalog import Catalog, ProductRecord
from core.embedding import l2_normalize
from core.hot import FusedVectors, HotCatalog, append_rows, score_rows
from core.search import ranked, similar
from core.settings import Settings
from core.types import Filters, Product, Weights

pytestmark = pytest.mark.integration
W = Weights(0.7, 0.3)
CATS = ("shoes", "bags", "hats", "mugs")


def mixture(rows: np.ndarray, dim: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """Unit vectors around 40 fixed centres (embeddings of real catalogs cluster by product type;
    isotropic random vectors have no near neighbours for any ANN to find)."""
    centres = l2_normalize(np.random.default_rng(1234 + dim).standard_normal((40, dim)).astype(np.float32))
    x = centres[rows % 40] + noise * rng.standard_normal((len(rows), dim)).astype(np.float32) / np.sqrt(dim)
    return l2_normalize(x)


def records(n: int, start: int = 0, seed: int = 0, clip_dim: int = 32, text_dim: int = 24) -> list[ProductRecord]:
    rng = np.random.default_rng(seed)
    rows = np.arange(start, start + n) * 7 + seed
    img = mixture(rows, clip_dim, rng)
    txt = mixture(rows // 3, text_dim, rng)
    now = datetime.now(UTC)
    out = []
    for j in range(n):
        i = start + j
        p = Product(
            product_id=f"p{i:05d}",
            title=f"product {i}",
            description="",
            category=None if i % 17 == 0 else CATS[i % 4],
            price=None if i % 13 == 0 else float(5 + (i * 7) % 200),
            image=None if i % 5 == 0 else f"img/{i}.jpg",
            attributes={},
            created_at=now,
            updated_at=now,
        )
        out.append(ProductRecord(p, None if i % 5 == 0 else img[j], txt[j], f"h{i}-{seed}"))
    return out


def catalog(settings: Settings) -> Catalog:
    return Catalog.from_settings(settings, clip_dim=32, text_dim=24, space={"clip": "t", "text": "t"})


def queries(n: int, seed: int = 99) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 10_000, n)
    return list(zip(mixture(rows, 32, rng, 0.8), mixture(rows // 3, 24, rng, 0.8), strict=True))


FILTERS = [
    Filters(),
    Filters(categories=("shoes",)),
    Filters(categories=("bags", "hats"), max_price=100.0),
    Filters(min_price=50.0, max_price=60.0),
]


def test_exact_mode_gives_the_lance_answers(s3_settings: Settings) -> None:
    cat = catalog(s3_settings)
    cat.upsert(records(300))
    hot = HotCatalog(cat, ann_min_rows=10_000)
    hot.refresh()
    snap = hot.snapshot
    assert snap is not None and snap.live == 300 and snap.ann_text is None
    from core.search import hot_ranked

    for q_img, q_txt in queries(5):
        for f in FILTERS:
            for qi, qt, w in ((q_img, q_txt, W), (q_img, None, Weights(1, 0)), (None, q_txt, Weights(0, 1))):
                want = ranked(cat, qi, qt, w, 10, f)
                got = hot_ranked(hot, snap, qi, qt, w, 10, f)
                assert [h.product.product_id for h in got] == [h.product.product_id for h in want]
                assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
                assert [h.image_similarity is None for h in got] == [h.image_similarity is None for h in want]
    # similar(): never itself, same as the Lance path
    for pid in ("p00001", "p00005", "p00100"):
        got_ids = [h.product.product_id for h in similar(cat, pid, 8, W, hot=hot)]
        want_ids = [h.product.product_id for h in similar(cat, pid, 8, W)]
        assert got_ids == want_ids and pid not in got_ids


def test_ann_mode_recall_and_filters(s3_settings: Settings) -> None:
    cat = catalog(s3_settings)
    cat.upsert(records(3000))
    hot = HotCatalog(cat, ann_min_rows=500)
    exact = HotCatalog(cat, ann_min_rows=10**9)
    hot.refresh()
    exact.refresh()
    snap, ref = hot.snapshot, exact.snapshot
    assert snap is not None and ref is not None and snap.ann_text is not None and snap.ann_image is not None
    from core.search import hot_ranked

    hits = total = 0
    for q_img, q_txt in queries(40):
        for f in FILTERS:
            got = hot_ranked(hot, snap, q_img, q_txt, W, 10, f)
            want = hot_ranked(exact, ref, q_img, q_txt, W, 10, f)
            for h in got:
                p = h.product
                if f.categories is not None:
                    assert p.category in f.categories
                if f.min_price is not None:
                    assert p.price is not None and p.price >= f.min_price
                if f.max_price is not None:
                    assert p.price is not None and p.price <= f.max_price
            hits += len({h.product.product_id for h in got} & {h.product.product_id for h in want})
            total += len(want)
    recall = hits / total
    print(f"recall@10 {recall:.3f}")
    assert recall >= 0.95, recall


def test_incremental_refresh_and_read_your_writes(s3_settings: Settings) -> None:
    cat = catalog(s3_settings)
    cat.upsert(records(1200))
    hot = HotCatalog(cat, ann_min_rows=500)
    hot.refresh()
    assert hot.full_loads == 1
    first = hot.snapshot
    assert first is not None
    first_text = first.text.copy()
    # Change 3 products (new vectors), add 2, delete 1, through this catalog object.
    changed = records(3, start=10, seed=7) + records(2, start=5000, seed=7)
    cat.upsert(changed)
    cat.delete("p00020")
    snap = hot.current()  # a local write: refreshed before answering
    assert snap is not None and snap.version == cat.version
    assert hot.delta_loads >= 1 and hot.full_loads == 1
    assert snap.live == 1201 and "p00020" not in snap.index and "p05001" in snap.index
    np.testing.assert_array_equal(first.text, first_text)  # the older snapshot still reads its rows
    from core.search import hot_ranked

    for rec in changed:
        vec = rec.image_vector if rec.image_vector is not None else None
        got = hot_ranked(hot, snap, vec, rec.text_vector, W, 3, Filters())
        assert got[0].product.product_id == rec.product.product_id
        assert got[0].score == pytest.approx(1.0, abs=1e-4)
    old_vec = records(21)[20].text_vector
    assert all(h.product.product_id != "p00020" for h in hot_ranked(hot, snap, None, old_vec, W, 10, Filters()))
    # The patched snapshot answers like a fresh full load of the same version.
    fresh = HotCatalog(cat, ann_min_rows=10**9)
    fresh.refresh()
    assert fresh.snapshot is not None
    for q_img, q_txt in queries(10):
        a = {h.product.product_id for h in hot_ranked(hot, snap, q_img, q_txt, W, 10, Filters())}
        b = {h.product.product_id for h in hot_ranked(fresh, fresh.snapshot, q_img, q_txt, W, 10, Filters())}
        assert len(a & b) >= 9
    # Another writer (a second Catalog object): picked up by the next refresh.
    other = catalog(s3_settings)
    other.upsert(records(1, start=7000, seed=3))
    assert hot.refresh() and hot.snapshot is not None and "p07000" in hot.snapshot.index


def test_delta_rows_are_taken_by_row_id_and_moved_rows_fetched_by_id(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = catalog(s3_settings)
    cat.upsert(records(50))
    hot = HotCatalog(cat, ann_min_rows=10**9)
    _, keys = cat.scan(["product_id", "content_hash"], row_ids=True)
    ids = keys.column("product_id").to_pylist()
    row_ids = dict(zip(ids, keys.column("_rowid").to_pylist(), strict=True))
    hashes = dict(zip(ids, keys.column("content_hash").to_pylist(), strict=True))
    by_id = cat.rows_by_id
    monkeypatch.setattr(cat, "rows_by_id", lambda ids: pytest.fail(f"rows fetched by id, not taken: {ids}"))
    got = hot._fetch(["p00003", "p00007"], hashes, row_ids)
    monkeypatch.setattr(cat, "rows_by_id", by_id)
    assert got is not None and sorted(got.column("product_id").to_pylist()) == ["p00003", "p00007"]
    assert got.column("text_vector").type.list_size == 24
    # Another writer rewrites p00007 after our scan: its old row id now points at a deleted row,
    # so the take misses it and the id query fetches the current row.
    catalog(s3_settings).upsert(records(1, start=7, seed=5))
    cat.latest_version()
    got = hot._fetch(["p00003", "p00007"], hashes, row_ids)
    assert got is not None
    rows = dict(zip(got.column("product_id").to_pylist(), got.column("content_hash").to_pylist(), strict=True))
    assert rows == {"p00003": "h3-0", "p00007": "h7-5"}


def test_append_rows_reuses_room_in_the_buffer_and_never_changes_older_views() -> None:
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    b = append_rows(a, np.ones((2, 2), np.float32))  # `a` owns no spare room: copied, with headroom
    assert not np.shares_memory(a, b) and len(b) == 8
    c = append_rows(b, np.full((3, 2), 7, np.float32))  # room left: written in place, no copy
    assert np.shares_memory(b, c) and len(c) == 11
    np.testing.assert_array_equal(b, np.vstack([a, np.ones((2, 2))]))  # b's view is unchanged
    np.testing.assert_array_equal(c[8:], 7)
    np.testing.assert_array_equal(c[:6], a)
    d = append_rows(c[2:], np.zeros((1, 2), np.float32))  # not a prefix of its buffer: copied
    assert not np.shares_memory(c, d)
    np.testing.assert_array_equal(d[:-1], c[2:])


def test_recommender_snapshot_from_the_hot_copy_equals_a_dataset_read(s3_settings: Settings) -> None:
    from core.recommend.online import CatalogSnapshot

    cat = catalog(s3_settings)
    cat.upsert(records(300))
    hot = HotCatalog(cat, ann_min_rows=10**9)
    hot.refresh()
    cat.upsert(records(5, start=10, seed=4) + records(3, start=900, seed=4))  # changed + new rows
    cat.delete("p00042")
    hot.refresh()  # a delta: tombstones and appended rows in the hot copy
    assert hot.snapshot is not None and hot.delta_loads == 1
    for weights in (W, Weights(0.0, 1.0)):
        a = CatalogSnapshot.from_hot(hot.snapshot, weights)
        b = CatalogSnapshot.load(cat, weights)
        assert a.version == b.version and sorted(a.index) == sorted(b.index) and "p00042" not in a.index
        order = [a.index[pid] for pid in sorted(b.index, key=b.index.__getitem__)]
        np.testing.assert_allclose(a.vectors[order], b.vectors, atol=1e-6)
        # A view of the hot arrays, not a second copy of the catalog; a full pass agrees too.
        assert isinstance(a.vectors, FusedVectors) and a.vectors.text is hot.snapshot.text
        unit = b.vectors[5] / np.linalg.norm(b.vectors[5])
        np.testing.assert_allclose((a.vectors @ unit)[order], b.vectors @ unit, atol=1e-5)
        labels = a.categories.labels()
        assert [labels[i] for i in order] == b.categories.labels()
        np.testing.assert_array_equal(a.prices[order], b.prices)
        np.testing.assert_array_equal(a.created[order], b.created)


def test_large_catalogs_hold_float16_vectors_and_score_as_float32_would(s3_settings: Settings) -> None:
    """From ``ann_min_rows`` on, the hot copy stores its vectors as float16 (half the memory):
    search scores and the recommender's fused vectors stay within float16 rounding of the float32
    ones."""
    from core.recommend.online import CatalogSnapshot

    cat = catalog(s3_settings)
    cat.upsert(records(400))
    small, large = HotCatalog(cat, ann_min_rows=10**9), HotCatalog(cat, ann_min_rows=100)
    small.refresh()
    large.refresh()
    f32, f16 = small.snapshot, large.snapshot
    assert f32 is not None and f16 is not None
    assert f32.text.dtype == np.float32 and f16.text.dtype == np.float16 and f16.image.dtype == np.float16
    assert f16.ann_text is not None
    a, b = CatalogSnapshot.from_hot(f16, W), CatalogSnapshot.from_hot(f32, W)
    np.testing.assert_allclose(a.dense_vectors(), b.dense_vectors(), atol=2e-3)
    q = f32.text[7]
    rows = np.arange(len(f32.alive), dtype=np.int64)
    exact = score_rows(f32, rows, None, q, 0.0, 1.0)
    half = score_rows(f16, rows, None, q, 0.0, 1.0)
    np.testing.assert_allclose(half.score, exact.score, atol=2e-3)
    # A query after a delta keeps the dtype (rows appended to the float16 buffers).
    cat.upsert(records(3, start=900, seed=5))
    large.refresh()
    assert large.snapshot is not None and large.snapshot.text.dtype == np.float16 and "p00901" in large.snapshot.index


def test_recommender_takes_new_versions_from_the_hot_copy(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.events import EventLog
    from core.recommend.artifact import ModelStore
    from core.recommend.online import CatalogSnapshot, Recommender
    from core.storage import ObjectStore

    cat = catalog(s3_settings)
    cat.upsert(records(100))
    hot = HotCatalog(cat, ann_min_rows=10**9)
    recs = Recommender(cat, EventLog(cat), ModelStore(ObjectStore(s3_settings)), W, hot=hot)
    recs.refresh()  # the hot copy is not loaded yet: read from the dataset
    assert len(recs.snapshot) == 100
    cat.upsert(records(2, start=500))
    hot.refresh()

    def no_dataset_read(*args: object) -> None:
        pytest.fail("the recommender re-read the dataset although the hot copy had the version")

    monkeypatch.setattr(CatalogSnapshot, "load", no_dataset_read)
    recs._snapshot_cost = 0.0  # not rate-limited for this check
    recs.refresh()
    assert recs.snapshot.version == hot.snapshot.version and "p00501" in recs.snapshot.index  # type: ignore[union-attr]
    # The serving snapshot carries the transposed copy the content scan uses; training's does not.
    assert recs.snapshot.vectors_t is not None
    np.testing.assert_array_equal(recs.snapshot.vectors_t, recs.snapshot.dense_vectors().T)
    assert CatalogSnapshot.from_hot(hot.snapshot, W).vectors_t is None  # type: ignore[arg-type]


def test_recommendations_through_the_content_index_agree_with_the_exact_pass(s3_settings: Settings) -> None:
    """With the catalog over ``ann_min_rows`` the recommender scores content through its PQ
    index: the same top 10 as the exact pass for nearly every user, seen items still excluded,
    filters honoured, and "more like these" likewise."""
    from core.events import Event, EventLog
    from core.recommend.artifact import ModelStore
    from core.recommend.online import Recommender
    from core.storage import ObjectStore

    cat = catalog(s3_settings)
    cat.upsert(records(1500))
    recs = Recommender(cat, EventLog(cat), ModelStore(ObjectStore(s3_settings)), W, ann_min_rows=500)
    recs.refresh()
    assert recs.snapshot.content_index is not None and recs.snapshot.content_index.ntotal == 1500
    rng = np.random.default_rng(8)
    events = []
    for u in range(40):
        base = int(rng.integers(0, 1500))
        for j, pid in enumerate((base + rng.integers(0, 60, 6)) % 1500):
            ts = datetime.fromtimestamp(1_700_000_000 + u * 100 + j, UTC)
            events.append(Event(f"u{u}", f"p{pid:05d}", "view" if j % 3 else "purchase", ts, None, f"e{u}-{j}"))
    recs.observe(events)
    recs.refresh()
    shoes = Filters(categories=("shoes",), max_price=150.0)
    agree = total = 0
    for u in range(40):
        seen = {e.product_id for e in events if e.user_id == f"u{u}"}
        for filters in (Filters(), shoes):
            recs.ann_content = True
            got = recs.recommend(f"u{u}", 10, filters)
            recs.ann_content = False
            want = recs.recommend(f"u{u}", 10, filters)
            assert got.strategy == want.strategy == "content" and len(got.items) == 10
            ids = {r.product.product_id for r in got.items}
            assert not ids & seen
            if filters == shoes:
                assert all(r.product.category == "shoes" and (r.product.price or 0) <= 150 for r in got.items)
            agree += len(ids & {r.product.product_id for r in want.items})
            total += 10
    assert agree / total >= 0.95, agree / total
    recs.ann_content = True
    like = [r.product.product_id for r in recs.more_like(["p00010", "p00011"], ["p00400"]).items]
    recs.ann_content = False
    exact_like = [r.product.product_id for r in recs.more_like(["p00010", "p00011"], ["p00400"]).items]
    assert len(set(like) & set(exact_like)) >= 9


def test_category_codes_filter_like_the_strings() -> None:
    """Category filters compare integer codes: same rows as comparing the strings, across an
    extension with new names (the older column and its names table unchanged)."""
    from core.hot import CategoryCodes

    first = ["shoes", None, "bags", "shoes"]
    a = CategoryCodes.of(first)
    b = a.extend(["hats", "shoes", None])
    assert b.labels() == [*first, "hats", "shoes", None] and a.labels() == first
    assert "hats" not in a.names and len(a) == 4 and len(b) == 7
    for wanted in (["shoes"], ["hats", "bags"], ["nope"], []):
        want = [c in wanted for c in b.labels()]
        assert b.isin(wanted).tolist() == want
    assert a.extend(["bags"]).names is a.names  # no new name: the table is shared


def test_served_recommendations_rank_like_the_evaluated_model_with_every_signal(s3_settings: Settings) -> None:
    """What ``python -m local evaluate`` scores is what ``GET /recommendations`` serves: a model
    with every signal on (collaborative, trending, content, the trend multiplier, a
    reranker, the low-rank shrinkage of the collaborative part and the time-aware choice model)
    ranks each user's unseen products in the query process (one user, CSR arrays, cached rows)
    as the batch path does (scipy, all users at once), and the trend really moves rankings."""
    from dataclasses import replace

    from core.events import Event, to_arrow
    from core.events import EventLog as Log
    from core.recommend.artifact import ModelStore
    from core.recommend.data import EventArrays, aggregate
    from core.recommend.hybrid import RERANK_FEATURES, HybridParams, Reranker
    from core.recommend.online import CatalogSnapshot, Recommender
    from core.recommend.signals import TimePopularity, history_matrix, top_k
    from core.recommend.tuning import train_hybrid
    from core.storage import ObjectStore

    cat = catalog(s3_settings)
    cat.upsert(records(300))
    snap = CatalogSnapshot.load(cat, W)
    ids = [p.product_id for p in snap.products]
    rng = np.random.default_rng(4)
    events = []
    for u in range(60):
        day0 = int(rng.integers(0, 40))
        for j in range(12):
            # Products 200+ are "released" on day 20: chosen only afterwards.
            pick = int(rng.integers(0, 300 if day0 + j >= 20 else 200))
            ts = datetime.fromtimestamp(1_700_000_000 + (day0 + j) * 86400 + u, UTC)
            kind = "purchase" if j % 4 == 0 else "view"
            events.append(Event(f"u{u}", f"p{pick:05d}", kind, ts, None, f"e{u}-{j}"))  # type: ignore[arg-type]
    ev = EventArrays.from_arrow(to_arrow(events), ids)
    params = HybridParams(lam=10.0, alpha=1.0, half_life=5.0, beta=0.2, tau_days=4.0, gamma=0.3)
    models = ModelStore(ObjectStore(s3_settings))
    recs = Recommender(cat, Log(cat), models, W)
    recs.observe(events)
    inter = aggregate(ev)
    seen = history_matrix(inter, 0.0, float("inf"))
    users = [f"u{u}" for u in range(60)]
    rows = np.array([ev.users.index(u) for u in users])
    t_end = float(ev.ts.max()) + 3600.0  # the request time, after every event: as of "now"
    t_query = np.full(len(rows), t_end)
    pop = TimePopularity(ev, len(ids))
    # A reranker with a weight on every feature (fixed, so the test does not depend on a fit).
    coef = tuple(float(c) for c in np.random.default_rng(1).normal(0.0, 1.0, len(RERANK_FEATURES)))
    reranker = Reranker((0.0,) * len(coef), (1.0,) * len(coef), coef, 0.0, candidates=30)
    batch_tops = {}
    configs = ((0.0, None, 0.0, 0.0), (1.0, None, 0.0, 0.0), (1.0, reranker, 0.0, 0.0), (1.0, reranker, 0.7, 0.0))
    for trend, rr, shrink, eta in (*configs, (1.0, reranker, 0.7, 1.0)):
        trained = train_hybrid(ev, snap.vectors, params=replace(params, trend=trend, shrink=shrink, rank=8, eta=eta))
        assert (trained.choice is None) == (eta == 0)
        assert (trained.subspace is None) == (shrink == 0) and (
            trained.subspace is None or trained.subspace.shape == (300, 8)
        )
        model = replace(trained, reranker=rr)
        models.save(model)
        recs.refresh()
        p = model.params
        hist = history_matrix(inter, p.alpha, p.half_life)[rows]
        batch = top_k(model.score(hist, t_query, pop, snap.vectors, seen[rows], rows), 10, seen[rows])
        agree = exact = 0
        taste_reasons = []
        for n, user in enumerate(users):
            items = recs.recommend(user, 10, as_of=t_end).items
            served = [r.product.product_id for r in items]
            want = [ids[i] for i in batch[n]]
            agree += len(set(served) & set(want))
            exact += served == want
            taste_reasons += [(user, r.reason) for r in items if r.reason.startswith("Matches your taste for ")]
        assert agree / (10 * len(users)) >= 0.98, (trend, rr, shrink, eta, agree)
        assert bool(taste_reasons) == (eta > 0)  # the choice model's own reason, only when it is on
        for user, reason in taste_reasons:  # naming a product the user really chose
            mine = {e.product_id for e in events if e.user_id == user}
            assert any(f"for {snap.products[snap.index[pid]].title}, which you" in reason for pid in mine), reason
        if rr is not None:
            assert exact / len(users) >= 0.95, exact  # the reranker's order itself, not only the set
        batch_tops[trend, rr is not None, shrink, eta] = batch
    tops = {key[:2]: batch for key, batch in batch_tops.items() if key[2] == 0.0}
    with_factors = batch_tops[1.0, True, 0.7, 1.0]
    moved = sum(len(set(a) ^ set(b)) > 0 for a, b in zip(tops[0.0, False], tops[1.0, False], strict=True))
    assert moved >= 10  # the multiplier changes what users get
    reranked = sum(list(a) != list(b) for a, b in zip(tops[1.0, False], tops[1.0, True], strict=True))
    assert reranked >= 30  # and so does the reranker
    shrunk = sum(list(a) != list(b) for a, b in zip(tops[1.0, True], batch_tops[1.0, True, 0.7, 0.0], strict=True))
    assert shrunk >= 30  # and so does the shrinkage
    factored = sum(list(a) != list(b) for a, b in zip(batch_tops[1.0, True, 0.7, 0.0], with_factors, strict=True))
    assert factored >= 30  # and so does the choice model
