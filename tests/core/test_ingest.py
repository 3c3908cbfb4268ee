"""Ingest on the S3 server: bad records fail alone with reasons, folders, grouped commits."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from core.ingest import iter_bucket_prefix, iter_folder
from core.types import Weights
from functions.services import Services
from local.sample import generate, write_folder
from tests.helpers import jpeg

pytestmark = pytest.mark.integration
W = Weights(0.7, 0.3)


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
    write_folder(generate(8, image_size=48, detail_photo_every=4), tmp_path)
    (tmp_path / "extra.csv").write_text(
        "product_id,title,price,image,images,color\n"
        "C1,CSV product,3.5,images/S00001.jpg,images/S00005-detail.jpg|images/S00002.jpg,red\n"
        "C2,bad,1\nC3,,1,,,\n"
    )
    report = services.indexer.index(iter_folder(tmp_path, services.settings))
    assert report.indexed == 9
    assert {(e.product_id, e.line) for e in report.failed} == {(None, 3), ("C3", 4)}
    p = services.catalog.get("C1")
    assert p.price == 3.5 and p.attributes == {"color": "red"}
    assert len(p.images) == 3 and all(k.startswith("images/C1/") for k in p.images)
    for key, name in zip(p.images, ["S00001.jpg", "S00005-detail.jpg", "S00002.jpg"], strict=True):
        assert services.store.get_bytes(key) == (tmp_path / "images" / name).read_bytes()
    # The sample's detail photos arrive as second photos.
    assert [len(services.catalog.get(f"S0000{i}").images) for i in range(1, 9)] == [2, 1, 1, 1, 2, 1, 1, 1]


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
