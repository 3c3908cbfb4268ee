"""Ingest + search on the S3 server with the deterministic fake embedder."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from core.embedding import Embedder
from core.errors import InvalidInput, NotFound
from core.images import decode_image
from core.ingest import iter_bucket_prefix, iter_folder
from core.models import Filters, Weights
from core.search import SearchQuery, search, similar
from functions.services import Services
from local.sample import generate, write_folder
from tests.helpers import jpeg, pending

pytestmark = pytest.mark.integration
W = Weights(0.7, 0.3)


def seed(services: Services, n: int = 24) -> list[dict[str, object]]:
    products = generate(n, text_only_every=6, image_size=64)
    for p in products:
        if p.image:
            services.store.put_bytes("uploads/" + p.image_name, p.image)
            p.record["image"] = "uploads/" + p.image_name
    services.store.put_bytes("uploads/catalog.jsonl", "".join(json.dumps(p.record) + "\n" for p in products).encode())
    report = services.indexer.index(iter_bucket_prefix(services.store, "uploads/", services.settings))
    assert report.failed == [] and report.indexed == n
    return [p.record for p in products]


def test_image_search_returns_own_image_first(services: Services) -> None:
    records = seed(services)
    for rec in records[:6]:
        if "image" not in rec:
            continue
        img = decode_image(services.store.get_bytes(str(rec["image"])), max_bytes=10**7, max_pixels=10**7)
        hits = search(services.catalog, services.embedder, SearchQuery(image=img, top_k=3), W)
        assert hits[0].product.product_id == rec["product_id"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert all(h.product.has_image for h in hits)  # photo queries only match products with images


def test_text_only_products_are_searchable(services: Services) -> None:
    records = seed(services)
    text_only = [r for r in records if "image" not in r]
    assert text_only
    for rec in text_only:
        hits = search(services.catalog, services.embedder, SearchQuery(text=str(rec["title"]), top_k=5), W)
        ids = [h.product.product_id for h in hits]
        assert rec["product_id"] in ids
        hit = hits[ids.index(str(rec["product_id"]))]
        assert hit.image_similarity is None and hit.text_similarity is not None
        assert hit.score == pytest.approx(hit.text_similarity)


def test_search_filters_and_weights(services: Services) -> None:
    records = seed(services, 36)
    f = Filters(categories=("Home", "Bags"), max_price=100)
    hits = search(services.catalog, services.embedder, SearchQuery(text="striped", top_k=100, filters=f), W)
    expected = {r["product_id"] for r in records if r["category"] in ("Home", "Bags") and float(r["price"]) <= 100}  # type: ignore[arg-type]
    assert {h.product.product_id for h in hits} == expected
    text_only = search(
        services.catalog, services.embedder, SearchQuery(text="striped", top_k=5, weights=Weights(0, 1)), W
    )
    assert all(h.image_similarity is None for h in text_only)
    assert [h.score for h in text_only] == sorted((h.score for h in text_only), reverse=True)


def test_similar_never_returns_itself(services: Services) -> None:
    records = seed(services)
    for rec in records[:8]:
        hits = similar(services.catalog, str(rec["product_id"]), 10, W)
        assert hits and all(h.product.product_id != rec["product_id"] for h in hits)
    with pytest.raises(NotFound):
        similar(services.catalog, "missing", 5, W)


def test_query_needs_text_or_image() -> None:
    with pytest.raises(InvalidInput):
        SearchQuery(text="  ")


def test_bad_records_fail_with_reasons_and_good_ones_index(services: Services) -> None:
    store = services.store
    store.put_bytes("in/ok.jpg", jpeg())
    store.put_bytes("in/corrupt.jpg", jpeg()[:50])
    store.put_bytes("in/text.jpg", b"hello, not an image")
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, "PNG")
    store.put_bytes("in/bomb.png", bomb.getvalue())
    lines = [
        {"product_id": "G1", "title": "Good one", "image": "in/ok.jpg", "price": 5},
        {"product_id": "G2", "title": "Good text-only"},
        "{not json",
        {"product_id": "B1"},
        {"product_id": "B2", "title": "neg", "price": -3},
        {"product_id": "B3", "title": "missing image", "image": "in/nope.jpg"},
        {"product_id": "B4", "title": "corrupt", "image": "in/corrupt.jpg"},
        {"product_id": "B5", "title": "not image", "image": "in/text.jpg"},
        {"product_id": "B6", "title": "bomb", "image": "in/bomb.png"},
        {"product_id": "B7", "title": "escape", "image": "../other-bucket/x.jpg"},
        {"product_id": "G3", "title": "Good after bad ones", "category": "X"},
    ]
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    store.put_bytes("in/products.jsonl", body.encode())
    report = services.indexer.index(iter_bucket_prefix(store, "in/", services.settings))
    assert report.indexed == 3
    reasons = {e.product_id or f"line{e.line}": e.reason for e in report.failed}
    assert set(reasons) == {"line3", "B1", "B2", "B3", "B4", "B5", "B6", "B7"}
    assert "invalid JSON" in reasons["line3"]
    assert "title is required" in reasons["B1"]
    assert "non-negative" in reasons["B2"]
    assert "not found" in reasons["B3"]
    assert "decode" in reasons["B4"] and "decode" in reasons["B5"]
    assert "pixels" in reasons["B6"]
    assert ".." in reasons["B7"]
    assert services.catalog.count() == 3
    # Re-running the same source re-embeds nothing.
    again = services.indexer.index(iter_bucket_prefix(store, "in/", services.settings))
    assert again.indexed == 0 and again.unchanged == 3


def test_folder_ingest_stores_images_in_bucket(services: Services, tmp_path: Path) -> None:
    write_folder(generate(8, image_size=48), tmp_path)
    (tmp_path / "extra.csv").write_text(
        "product_id,title,price,image,color\nC1,CSV product,3.5,images/S00001.jpg,red\nC2,bad,1\nC3,,1,,\n"
    )
    report = services.indexer.index(iter_folder(tmp_path, services.settings))
    assert report.indexed == 9
    assert {(e.product_id, e.line) for e in report.failed} == {(None, 3), ("C3", 4)}
    p = services.catalog.get("C1")
    assert p.price == 3.5 and p.attributes == {"color": "red"}
    assert p.image is not None and p.image.startswith("images/C1/")
    assert services.store.get_bytes(p.image) == (tmp_path / "images/S00001.jpg").read_bytes()


def test_fake_embedder_is_deterministic(fake: Embedder) -> None:
    a = fake.text.embed_texts(["red shoe"])
    b = fake.text.embed_texts(["red shoe"])
    assert (a == b).all()
    assert pending("x", "y").product.product_id == "x"


def test_a_long_import_commits_in_groups_and_bad_lines_only_fail_themselves(services: Services) -> None:
    """Each catalog commit costs more as the table grows: 100 products with INGEST_COMMIT_ROWS=40
    are three commits, whatever the embedding batch, and a bad line inside a group fails alone."""
    indexer = services.indexer
    indexer.batch_size, indexer.commit_rows = 8, 40
    lines = [json.dumps({"product_id": f"C{i:03d}", "title": f"Chair {i}"}) for i in range(100)]
    lines[50] = json.dumps({"product_id": "C050"})  # no title
    services.store.put_bytes("bulk/products.jsonl", "\n".join(lines).encode())
    before = services.catalog.latest_version()
    report = indexer.index(iter_bucket_prefix(services.store, "bulk/", services.settings))
    assert report.indexed == 99 and [f.product_id for f in report.failed] == ["C050"]
    assert services.catalog.latest_version() - before == 3  # groups of 40, 40 and 19
    assert services.catalog.count() == 99
    # An edited line re-embeds that product alone, in one more commit.
    lines[7] = json.dumps({"product_id": "C007", "title": "Chair 7, now oak"})
    services.store.put_bytes("bulk/products.jsonl", "\n".join(lines).encode())
    again = indexer.index(iter_bucket_prefix(services.store, "bulk/", services.settings))
    assert (again.indexed, again.unchanged) == (1, 98)
    assert services.catalog.latest_version() - before == 4
    assert services.catalog.get("C007").title == "Chair 7, now oak"
