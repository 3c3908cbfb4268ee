"""Training stays within bounds: the collaborative model covers the products most active lately,
only their vectors are read, and data that would need more memory than allowed is refused with a
message that names the settings."""

from datetime import UTC, datetime

import numpy as np
import pytest

from core.errors import ConfigError
from core.events import Event, parse_events, to_arrow
from core.ingest import PendingProduct
from core.recommend.data import EventArrays, aggregate
from core.recommend.hybrid import on_items
from core.recommend.online import CatalogSnapshot
from core.recommend.signals import DAY, active_items, history_matrix
from core.recommend.train import train, vectors_of
from core.recommend.tuning import train_hybrid
from core.types import ProductInput, default_weights
from functions.services import Services

T0 = 1_700_000_000.0


def _arrays(rows: list[tuple[str, str, float]]) -> EventArrays:
    events = [
        Event(u, i, "purchase", datetime.fromtimestamp(ts, UTC), None, f"e{n}") for n, (u, i, ts) in enumerate(rows)
    ]
    return EventArrays.from_arrow(to_arrow(events))


def test_active_items_prefer_what_is_touched_lately_over_old_volume() -> None:
    rows = [(f"u{k}", "old", T0) for k in range(30)]  # 30 events a year before the rest
    rows += [(f"u{k}", "new", T0 + 365 * DAY) for k in range(5)]
    rows += [(f"u{k}", "mid", T0 + 300 * DAY) for k in range(20)]
    ev = _arrays(rows)
    kept = [ev.items[i] for i in active_items(ev, 2)]
    assert sorted(kept) == ["mid", "new"]
    assert list(active_items(ev, 5)) == [0, 1, 2]  # all of them when they fit


def test_train_hybrid_covers_at_most_max_items() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"P{int(i)}", T0 + u * 60.0) for u in range(200) for i in rng.choice(40, 5, replace=False)]
    ev = _arrays(rows)
    vectors = rng.standard_normal((len(ev.items), 8)).astype(np.float32)
    model = train_hybrid(ev, vectors, max_items=25, rerank="off")
    assert len(model.items) == 25 and set(model.items) == {ev.items[i] for i in active_items(ev, 25)}
    assert model.ease.shape == (25, 25) and model.info["catalog_items"] == 40
    # Offline scoring over the whole catalog: the uncovered products get no collaborative weight.
    full = on_items(model, ev.items)
    at = [ev.items.index(i) for i in model.items]
    b = full.ease.toarray()
    np.testing.assert_array_equal(b[np.ix_(at, at)], model.ease.toarray())
    others = [k for k in range(40) if k not in at]
    assert not b[others].any() and not b[:, others].any()
    hist = history_matrix(aggregate(ev), 1.0, 20.0)
    scores = full.score(hist[:5], np.full(5, T0 + 300 * 60.0), None, vectors)
    assert scores.shape == (5, 40)


@pytest.mark.integration
def test_training_reads_the_vectors_of_the_covered_products_and_refuses_what_would_not_fit(
    services: Services,
) -> None:
    products = [
        PendingProduct(ProductInput.from_mapping({"product_id": f"P{i}", "title": f"Item {i} colour {i % 3}"}))
        for i in range(8)
    ]
    assert services.indexer.index(products).indexed == 8
    now = datetime.now(UTC).timestamp()
    old = now - 200 * DAY
    raw = [
        # P0..P3 are bought lately; P4..P7 only long ago.
        {"user_id": f"u{u}", "product_id": f"P{(u + k) % 4}", "event_type": "purchase", "timestamp": now - 3600}
        for u in range(12)
        for k in range(2)
    ] + [
        {"user_id": f"u{u}", "product_id": f"P{4 + (u + k) % 4}", "event_type": "purchase", "timestamp": old}
        for u in range(12)
        for k in range(3)
    ]
    good, bad = parse_events(raw)
    assert not bad
    services.events.append(good)
    catalog, weights = services.catalog, default_weights(0.5, 0.5, True)
    _, ids = catalog.scan(["product_id"], row_ids=True)
    order = [5, 2, 7]
    pids = [str(ids.column("product_id")[k]) for k in order]
    got = vectors_of(catalog, weights, pids, [int(ids.column("_rowid")[k].as_py()) for k in order])
    snap = CatalogSnapshot.load(catalog, weights)
    assert np.allclose(got, snap.vectors[[snap.index[p] for p in pids]])

    with pytest.raises(ConfigError) as refused:
        train(catalog, services.events, services.recommender.model_store, weights, max_items=4, memory_gb=0.5)
    assert "RECS_TRAIN_MEMORY_GB=0.5" in str(refused.value) and "RECS_MAX_ITEMS=4" in str(refused.value)
    assert services.recommender.model_store.latest() is None  # nothing saved

    report = train(catalog, services.events, services.recommender.model_store, weights, max_items=4, rerank="off")
    assert sorted(report.model.items) == ["P0", "P1", "P2", "P3"]
    assert report.items == 8 and "(the 4 most active in the collaborative model)" in report.summary()
