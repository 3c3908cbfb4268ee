"""Start-up files: a query process that starts from one serves what a process that loaded the
dataset serves, and catches up on the products and events that came after the file."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from core.embedding import Embedder
from core.events import parse_events
from core.ingest import PendingProduct
from core.search import hot_ranked
from core.settings import Settings
from core.startup import LATEST, PREFIX
from core.types import ProductInput, Weights
from functions.jobs import train_recommender
from functions.services import Services
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

CATEGORIES = ("Shoes", "Bags", "Hats", "Coats")


def _product(i: int, title: str | None = None) -> PendingProduct:
    return PendingProduct(
        ProductInput.from_mapping(
            {
                "product_id": f"P{i:03d}",
                "title": title or f"{CATEGORIES[i % 4]} model {i} in colour {i % 7}",
                "category": CATEGORIES[i % 4],
                "price": float(10 + i),
            }
        )
    )


def _events(start: int, n: int, now: float) -> list[dict[str, object]]:
    # Users favour one category each; ids are stable so a re-sent event is the same event.
    return [
        {
            "event_id": f"e{k}",
            "user_id": f"u{k % 15}",
            "product_id": f"P{(4 * ((k * 7) % 30) + (k % 15) % 4):03d}",
            "event_type": "purchase" if k % 3 == 0 else "view",
            "timestamp": now - 86400 + k * 60,
        }
        for k in range(start, start + n)
    ]


def _process(settings: Settings, fake: Embedder, *, from_file: bool) -> Services:
    """A query process as the app's lifespan starts one (hot catalog first, then the recommender),
    from the start-up file or (``from_file`` False) from the dataset as without one."""
    svc = Services.from_settings(settings, embedder=fake)
    assert svc.hot is not None
    if from_file:
        assert svc.load_startup_file()
    svc.hot.refresh()
    svc.recommender.refresh()
    return svc


def _same_answers(a: Services, b: Services, users: list[str]) -> None:
    assert a.hot is not None and b.hot is not None
    sa, sb = a.hot.snapshot, b.hot.snapshot
    assert sa is not None and sb is not None
    assert sa.version == sb.version and sorted(sa.index) == sorted(sb.index)
    for pid, row in sa.index.items():
        assert np.array_equal(sa.text[row], sb.text[sb.index[pid]]), pid
        assert sa.products[row] == sb.products[sb.index[pid]]
        assert sa.hashes[pid] == sb.hashes[pid]
    rng = np.random.default_rng(3)
    w = Weights(0.0, 1.0)
    for q in rng.standard_normal((5, sa.text.shape[1])).astype(np.float32):
        ids_a = [h.product.product_id for h in hot_ranked(a.hot, sa, None, q, w, 10)]
        ids_b = [h.product.product_id for h in hot_ranked(b.hot, sb, None, q, w, 10)]
        assert ids_a == ids_b
    for query in ("Shoes model", "colour 3 Hats"):
        rows_a, scores_a = sa.keywords.scores(query, sa.alive)
        rows_b, scores_b = sb.keywords.scores(query, sb.alive)
        got_a = dict(zip([sa.products[r].product_id for r in rows_a], scores_a.round(9), strict=True))
        got_b = dict(zip([sb.products[r].product_id for r in rows_b], scores_b.round(9), strict=True))
        assert got_a == got_b
    assert len(a.recommender.state) == len(b.recommender.state)
    for u in users:
        ra, rb = a.recommender.recommend(u, 5), b.recommender.recommend(u, 5)
        assert [(i.product.product_id, round(i.score, 5), i.reason) for i in ra.items] == [
            (i.product.product_id, round(i.score, 5), i.reason) for i in rb.items
        ]
        assert a.recommender.state.history(u) == b.recommender.state.history(u)


def test_a_process_started_from_the_file_serves_as_one_that_loaded_the_dataset(
    s3_endpoint: str, bucket: str, fake: Embedder
) -> None:
    # Small ANN thresholds: the file carries both ANN indexes and the recommender's content index.
    settings = make_settings(s3_endpoint, bucket, ann_min_rows=40, startup_file_min_products=0)
    writer = Services.from_settings(settings, embedder=fake)
    assert writer.indexer.index([_product(i) for i in range(120)]).indexed == 120
    now = datetime.now(UTC).timestamp() - 7200
    good, bad = parse_events(_events(0, 300, now))
    assert not bad
    writer.events.append(good)

    report = train_recommender(settings)
    assert report is not None and report.startup_file is not None
    assert report.startup_file.startswith(PREFIX) and "(120 products, 300 events)" in report.startup_file
    assert writer.store.head(LATEST).size > 0

    users = [f"u{k}" for k in range(15)]
    warm = _process(settings, fake, from_file=True)
    cold = _process(settings, fake, from_file=False)
    assert warm.hot is not None and cold.hot is not None
    assert warm.hot.full_loads == 0 and cold.hot.full_loads == 1  # no load of the dataset at all
    assert warm.hot.snapshot is not None and warm.hot.snapshot.ann_text is not None
    assert warm.recommender.snapshot.content_index is not None
    _same_answers(warm, cold, users)

    # After the file: one product changed, one deleted, two new; new events and two re-sent ones.
    changed = writer.indexer.index([_product(5, "Shoes model 5 relaunched"), _product(200), _product(201)])
    assert changed.indexed == 3
    writer.catalog.delete("P007")
    more, _ = parse_events(_events(298, 40, now))  # e298, e299 are already in the file
    writer.events.append(more)
    caught_up = _process(settings, fake, from_file=True)
    fresh = _process(settings, fake, from_file=False)
    assert caught_up.hot is not None
    assert caught_up.hot.full_loads == 0 and caught_up.hot.delta_loads == 1
    assert len(caught_up.recommender.state) == 338 == len(fresh.recommender.state)
    snap = caught_up.hot.snapshot
    assert snap is not None and "P007" not in snap.index and "P201" in snap.index
    assert snap.products[snap.index["P005"]].title == "Shoes model 5 relaunched"
    _same_answers(caught_up, fresh, users)

    # The next training writes its file from this one plus what changed; two files are kept.
    assert train_recommender(settings) is not None
    assert train_recommender(settings) is not None
    ids = {o.key.split("/")[1] for o in writer.store.list(PREFIX) if o.key.count("/") >= 2}
    assert len(ids) == 2
    # That file holds the replaced and deleted rows as tombstones; a process starting from it
    # still serves what the dataset holds.
    _same_answers(_process(settings, fake, from_file=True), fresh, users)


def test_no_file_for_small_catalogs_and_a_file_that_does_not_fit_is_skipped(
    s3_endpoint: str, bucket: str, fake: Embedder
) -> None:
    settings = make_settings(s3_endpoint, bucket, startup_file_min_products=50)
    writer = Services.from_settings(settings, embedder=fake)
    writer.indexer.index([_product(i) for i in range(30)])
    good, _ = parse_events(_events(0, 60, datetime.now(UTC).timestamp() - 7200))
    writer.events.append(good)
    report = train_recommender(settings)
    assert report is not None and report.startup_file is None
    assert not list(writer.store.list(PREFIX))

    writer.indexer.index([_product(i) for i in range(30, 60)])
    report = train_recommender(settings)
    assert report is not None and report.startup_file is not None and report.startup_file.startswith(PREFIX)
    # A file written for other vector dimensions (another text model) is not used.
    other = Services.from_settings(settings, embedder=fake)
    other.catalog.text_dim += 1
    assert other.load_startup_file() is False
