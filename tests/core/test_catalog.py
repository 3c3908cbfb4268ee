"""Catalog on a real S3 protocol server (moto over HTTP) and on a local path."""

import threading
import time
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from core.catalog import Catalog, Compactor, compact_files
from core.errors import ConfigError, NotFound
from core.settings import Settings
from core.types import Filters
from tests.helpers import record

pytestmark = pytest.mark.integration
SPACE = {"clip": "t", "text": "t"}


def open_catalog(settings: Settings, clip_dim: int = 8, text_dim: int = 6) -> Catalog:
    return Catalog.from_settings(settings, clip_dim=clip_dim, text_dim=text_dim, space=SPACE)


def test_upsert_is_idempotent_and_latest_wins(s3_settings: Settings) -> None:
    cat = open_catalog(s3_settings)
    rng = np.random.default_rng(0)
    cat.upsert([record("P1", 8, 6, rng, title="first"), record("P2", 8, 6, rng)])
    created = cat.get("P1").created_at
    v1 = cat.version
    time.sleep(0.01)
    cat.upsert([record("P1", 8, 6, rng, title="second")])
    cat.upsert([record("P1", 8, 6, rng, title="third"), record("P1", 8, 6, rng, title="fourth")])
    assert cat.count() == 2
    p = cat.get("P1")
    assert p.title == "fourth"
    assert p.created_at == created  # kept across updates
    assert p.updated_at > created
    assert cat.version > v1
    # A second handle (another process) sees the same data.
    other = open_catalog(s3_settings)
    assert other.get("P1").title == "fourth"
    assert other.count() == 2


def test_upsert_returns_what_a_read_returns(s3_settings: Settings) -> None:
    """The PUT response is built from upsert's return value instead of reading the row back."""
    cat = open_catalog(s3_settings)
    rng = np.random.default_rng(3)
    first = record("R1", 8, 6, rng, title="one", price=12, category="shoes", with_image=False)
    first = replace(first, product=replace(first.product, attributes={"z": [1, "a"], "a": {"k": None}}))
    stored = cat.upsert([first, record("R2", 8, 6, rng)])
    assert [p.product_id for p in stored] == ["R1", "R2"]
    for p in stored:
        assert p == cat.get(p.product_id)
    created = stored[0].created_at
    # With ``prior`` from existing() (as the indexer passes it), created_at is still kept.
    time.sleep(0.01)
    prior = cat.existing(["R1", "R3"])
    again = cat.upsert([record("R1", 8, 6, rng, title="two"), record("R3", 8, 6, rng)], prior=prior)
    assert again[0].created_at == created and again[0].updated_at > created
    for p in again:
        assert p == cat.get(p.product_id)
    assert cat.upsert([]) == []


def test_compaction_keeps_versions_and_cleanup_runs_on_its_own_clock(s3_settings: Settings) -> None:
    cat = open_catalog(s3_settings)
    table = cat._table
    rng = np.random.default_rng(4)
    comp = Compactor(table, every=4, retention=timedelta(seconds=1), cleanup_every=timedelta(hours=1))
    for i in range(4):
        cat.upsert([record(f"C{i}", 8, 6, rng)])
        if i == 3:
            before = {v["version"] for v in table.list_versions()}
        comp.committed()
    assert table.stats()["fragment_stats"]["num_fragments"] == 1  # compacted...
    after = {v["version"] for v in table.list_versions()}
    assert before < after  # ...and no version removed (compaction adds its own)
    versions = len(after)
    time.sleep(1.2)
    comp.cleanup_every = timedelta(0)  # cleanup due now: it runs in a thread after the compaction
    for i in range(4, 8):
        cat.upsert([record(f"C{i}", 8, 6, rng)])
        comp.committed()
    for t in threading.enumerate():
        if t.name == "version-cleanup":
            t.join(timeout=60)
    assert len(table.list_versions()) < versions + 5
    assert cat.count() == 8 and cat.get("C7").title == "product C7"


def test_delete_and_not_found(s3_settings: Settings) -> None:
    cat = open_catalog(s3_settings)
    cat.upsert([record("P1", 8, 6, np.random.default_rng(1))])
    cat.delete("P1")
    assert cat.count() == 0
    with pytest.raises(NotFound):
        cat.get("P1")
    with pytest.raises(NotFound):
        cat.delete("P1")


def test_filters_are_exact(s3_settings: Settings) -> None:
    cat = open_catalog(s3_settings)
    rng = np.random.default_rng(2)
    cats = ["Shoes", "Bags", "Hats", "O'Brien"]
    recs = [record(f"P{i}", 8, 6, rng, category=cats[i % 4], price=None if i % 7 == 0 else float(i)) for i in range(80)]
    cat.upsert(recs)
    q = rng.standard_normal(6).astype(np.float32)
    f = Filters(categories=("Shoes", "O'Brien"), min_price=10, max_price=60)
    expected = {
        r.product.product_id
        for r in recs
        if r.product.category in f.categories  # type: ignore[operator]
        and r.product.price is not None
        and 10 <= r.product.price <= 60
    }
    hits = cat.vector_search("text", q, 100, f)
    got = {h.product.product_id for h in hits}
    assert got == expected  # nothing violates the filter, nothing that satisfies it is missed
    # Scores come back ordered (dot on unit vectors).
    sims = [float(np.dot(q, h.text_vector)) for h in hits]  # type: ignore[arg-type]
    assert sims == sorted(sims, reverse=True)


def test_image_search_skips_products_without_image(s3_settings: Settings) -> None:
    cat = open_catalog(s3_settings)
    rng = np.random.default_rng(3)
    cat.upsert([record(f"P{i}", 8, 6, rng, with_image=i % 2 == 0) for i in range(10)])
    hits = cat.vector_search("image", rng.standard_normal(8).astype(np.float32), 50)
    assert {h.product.product_id for h in hits} == {f"P{i}" for i in range(0, 10, 2)}
    assert all(h.image_vector is not None for h in hits)
    assert cat.get_candidate("P1").image_vector is None


def test_dimension_mismatch_is_a_clear_error(s3_settings: Settings) -> None:
    open_catalog(s3_settings, clip_dim=8)
    with pytest.raises(ConfigError, match="dimension"):
        open_catalog(s3_settings, clip_dim=16)


@pytest.mark.slow
def test_indexes_created_when_large_enough(tmp_path: object) -> None:
    settings = Settings(_env_file=None, catalog_uri=str(tmp_path), index_min_rows=256)  # type: ignore[call-arg]
    cat = open_catalog(settings, clip_dim=32, text_dim=32)
    rng = np.random.default_rng(4)
    recs = [
        record(f"P{i}", 32, 32, rng, category="A" if i % 2 else "B", price=float(i), with_image=i % 5 != 0)
        for i in range(600)
    ]
    cat.upsert(recs)
    assert cat.ensure_indexes() == ["product_id", "category", "price", "image_vector", "text_vector"]
    # New rows after indexing are still found (unindexed rows are searched exactly).
    extra = record("NEW", 32, 32, rng, category="A", price=1.0)
    cat.upsert([extra])
    hits = cat.vector_search("text", extra.text_vector, 5, Filters(categories=("A",)))
    assert hits[0].product.product_id == "NEW"
    assert all(h.product.category == "A" for h in hits)
    # Recall of the ANN path against exact top-10 on the text column.
    vecs = np.stack([r.text_vector for r in recs])
    recall = []
    for _ in range(20):
        q = rng.standard_normal(32).astype(np.float32)
        exact = {recs[i].product.product_id for i in np.argsort(-(vecs @ q))[:10]}
        got = {h.product.product_id for h in cat.vector_search("text", q, 10) if h.product.product_id != "NEW"}
        recall.append(len(exact & got) / 10)
    assert np.mean(recall) >= 0.9
    assert cat.ensure_indexes() == []  # second call folds new rows in, creates nothing
    # So does the compaction that runs every 32 commits.
    late = record("LATE", 32, 32, rng, category="B", price=2.0)
    cat.upsert([late])
    assert cat._table.index_stats("text_vector_idx").num_unindexed_rows == 1
    compact_files(cat._table)
    assert cat._table.index_stats("text_vector_idx").num_unindexed_rows == 0
    assert cat.vector_search("text", late.text_vector, 1)[0].product.product_id == "LATE"


def test_local_path_catalog(local_settings: Settings) -> None:
    cat = open_catalog(local_settings)
    cat.upsert([record("L1", 8, 6, np.random.default_rng(5), category="X")])
    assert cat.get("L1").category == "X"
    assert cat.newest(5)[0].product_id == "L1"
