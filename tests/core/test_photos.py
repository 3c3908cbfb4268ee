"""Several photos per product: parsing, ingest, storage (and the upgrade of an older dataset),
and search where a product's image similarity is its best photo's, on every path (LanceDB, the
hot catalog exact and with ANN, after a delta refresh, from a start-up file)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from core.catalog import TABLE, Catalog, ProductRecord, added_columns, products_schema
from core.embedding import Embedder, embed_image_bytes, l2_normalize
from core.errors import InvalidInput
from core.hot import HotCatalog
from core.ingest import PendingProduct, content_hash, records_from_metadata, resolve_bucket_image
from core.recommend.history import EventState
from core.search import hot_ranked, ranked
from core.settings import Settings
from core.startup import read_startup, write_startup
from core.storage import ObjectStore
from core.types import MAX_IMAGES, Product, ProductInput, Weights
from functions.services import Services
from tests.helpers import jpeg

pytestmark = pytest.mark.integration
IMAGE_ONLY = Weights(image=1.0, text=0.0)
CLIP, TEXT = 32, 24


# ---- parsing -----------------------------------------------------------------------------------
def test_images_parse_in_order_with_image_first_and_no_repeats() -> None:
    p = ProductInput.from_mapping({"product_id": "A", "title": "t", "image": "a.jpg", "images": ["b.jpg", "a.jpg"]})
    assert p.images == ("a.jpg", "b.jpg") and p.image == "a.jpg" and p.more_images == ("b.jpg",)
    assert "images" not in p.attributes
    only_list = ProductInput.from_mapping({"product_id": "A", "title": "t", "images": ["x.jpg", "y.jpg", "z.jpg"]})
    assert only_list.image == "x.jpg" and only_list.more_images == ("y.jpg", "z.jpg")
    csv_cell = ProductInput.from_mapping({"product_id": "A", "title": "t", "images": "x.jpg|y.jpg"})
    assert csv_cell.images == ("x.jpg", "y.jpg")
    assert ProductInput.from_mapping({"product_id": "A", "title": "t"}).images == ()


@pytest.mark.parametrize(
    ("images", "why"),
    [
        ([f"{i}.jpg" for i in range(MAX_IMAGES + 1)], "at most"),
        (["a.jpg", 3], "list of object keys"),
        (["a.jpg", " "], "list of object keys"),
        ({"a": 1}, "list of object keys"),
    ],
)
def test_bad_image_lists_are_refused_with_the_reason(images: object, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        ProductInput.from_mapping({"product_id": "A", "title": "t", "images": images})


def test_a_product_with_one_photo_hashes_as_before_several_photos_existed() -> None:
    # Stored catalogs are not re-embedded by the upgrade: the hash of a one-photo product is the
    # formula it always had.
    p = ProductInput.from_mapping({"product_id": "A", "title": "t", "price": 3, "image": "a.jpg"})
    doc = {"title": "t", "description": "", "category": None, "price": 3.0, "image": "d1", "attributes": {}}
    old = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    assert content_hash(p, ["d1"]) == old
    assert content_hash(p, ["d1", "d2"]) not in (old, content_hash(p, ["d2", "d1"]))


# ---- ingest ------------------------------------------------------------------------------------
RED, GREEN, BLUE, GREY = (220, 20, 20), (20, 200, 30), (20, 30, 220), (128, 128, 128)


def test_photos_are_stored_in_order_and_a_bad_photo_fails_only_its_product(services: Services) -> None:
    store = services.store
    store.put_bytes("shop/red.jpg", jpeg(RED), "image/jpeg")
    store.put_bytes("shop/green.jpg", jpeg(GREEN), "image/jpeg")
    store.put_bytes("shop/broken.jpg", b"not an image", "image/jpeg")
    lines = [
        {"product_id": "TWO", "title": "Mug", "images": ["shop/red.jpg", "shop/green.jpg"]},
        {"product_id": "MISSING", "title": "Cup", "images": ["shop/red.jpg", "shop/nope.jpg"]},
        {"product_id": "BROKEN", "title": "Bowl", "image": "shop/green.jpg", "images": ["shop/broken.jpg"]},
        {"product_id": "ONE", "title": "Plate", "image": "shop/green.jpg"},
    ]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    report = services.indexer.index(records_from_metadata("up.jsonl", data, resolve_bucket_image))
    assert report.indexed == 2
    reasons = {e.product_id: e.reason for e in report.failed}
    assert set(reasons) == {"MISSING", "BROKEN"}
    assert reasons["MISSING"].startswith("image 2 of 2 'shop/nope.jpg'")
    assert reasons["BROKEN"].startswith("image 2 of 2:")
    two = services.catalog.get("TWO")
    assert two.images == ("shop/red.jpg", "shop/green.jpg") and two.image == "shop/red.jpg"
    assert services.catalog.get("ONE").images == ("shop/green.jpg",)
    # The same record again is unchanged; a new photo order is a change.
    again = services.indexer.index(records_from_metadata("up.jsonl", data, resolve_bucket_image))
    assert again.unchanged == 2 and again.indexed == 0
    swapped = json.dumps({"product_id": "TWO", "title": "Mug", "images": ["shop/green.jpg", "shop/red.jpg"]})
    assert services.indexer.index(records_from_metadata("b.jsonl", swapped.encode(), resolve_bucket_image)).indexed == 1
    assert services.catalog.get("TWO").image == "shop/green.jpg"


def test_photo_bytes_are_stored_under_content_keys(services: Services) -> None:
    product = ProductInput.from_mapping({"product_id": "B1", "title": "Bag"})
    stored = services.indexer.put(product, [jpeg(RED), jpeg(BLUE), jpeg(GREEN)])
    assert len(stored.images) == 3 and all(k.startswith("images/B1/") for k in stored.images)
    assert services.store.get_bytes(stored.images[1]) == jpeg(BLUE)
    assert services.catalog.get("B1") == stored


def _search_ids(services: Services, photo: bytes, k: int = 3) -> list[str]:
    q = embed_image_bytes(services.embedder.clip, [photo], max_bytes=10**7, max_pixels=10**8).vectors[0]
    assert services.hot is not None
    services.hot.refresh()
    snap = services.hot.snapshot
    assert snap is not None
    return [h.product.product_id for h in hot_ranked(services.hot, snap, q, None, IMAGE_ONLY, k)]


def test_a_product_is_found_by_its_second_photo(services: Services, fake: Embedder) -> None:
    items = [
        PendingProduct(
            ProductInput(product_id="SHOE", title="Shoe"), image_bytes=jpeg(RED), more_images=((jpeg(GREEN), None),)
        ),
        PendingProduct(ProductInput(product_id="HAT", title="Hat"), image_bytes=jpeg(BLUE)),
        PendingProduct(ProductInput(product_id="COAT", title="Coat"), image_bytes=jpeg(GREY)),
    ]
    assert services.indexer.index(items).indexed == 3
    assert _search_ids(services, jpeg(GREEN))[0] == "SHOE"
    assert _search_ids(services, jpeg(RED))[0] == "SHOE"
    assert _search_ids(services, jpeg(BLUE))[0] == "HAT"
    # The LanceDB path (before the hot copy is loaded) scores candidates by their best photo too.
    green = embed_image_bytes(fake.clip, [jpeg(GREEN)], max_bytes=10**7, max_pixels=10**8).vectors[0]
    hits = ranked(services.catalog, green, None, IMAGE_ONLY, 3)
    shoe = next(h for h in hits if h.product.product_id == "SHOE")
    assert shoe.image_similarity == pytest.approx(1.0, abs=1e-5)
    # Replacing the photos drops the old second one: the green photo no longer finds it first.
    services.indexer.put(ProductInput(product_id="SHOE", title="Shoe"), [jpeg(RED)])
    assert _search_ids(services, jpeg(GREEN))[0] != "SHOE"


# ---- the hot catalog, exact and ANN ------------------------------------------------------------
def _records(n: int, seed: int = 0) -> list[ProductRecord]:
    """Products with 0..3 photos each (random unit vectors; ``i % 7 == 0``: no photo at all)."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        photos = 0 if i % 7 == 0 else 1 + i % 3
        vecs = l2_normalize(rng.standard_normal((max(photos, 1), CLIP)).astype(np.float32))
        txt = l2_normalize(rng.standard_normal((1, TEXT)).astype(np.float32))[0]
        keys = tuple(f"img/{i}-{j}.jpg" for j in range(photos))
        p = Product(f"p{i:04d}", f"product {i}", "", "cat", float(i), keys[0] if keys else None, {}, now, now, keys[1:])
        out.append(ProductRecord(p, vecs[0] if photos else None, txt, f"h{i}-{seed}", tuple(vecs[1:photos])))
    return out


def _brute_force(records: list[ProductRecord], q: np.ndarray, k: int) -> list[str]:
    best = {}
    for r in records:
        if r.image_vector is None:
            continue
        best[r.product.product_id] = max(float(v @ q) for v in (r.image_vector, *r.more_image_vectors))
    return [pid for pid, _ in sorted(best.items(), key=lambda x: (-x[1], x[0]))[:k]]


def _catalog(settings: Settings) -> Catalog:
    return Catalog.from_settings(settings, clip_dim=CLIP, text_dim=TEXT, space={"clip": "t", "text": "t"})


@pytest.mark.parametrize("ann_min_rows", [10_000, 60])
def test_hot_ranking_is_by_best_photo_exact_and_with_ann(s3_settings: Settings, ann_min_rows: int) -> None:
    recs = _records(300)
    cat = _catalog(s3_settings)
    cat.upsert(recs)
    hot = HotCatalog(cat, ann_min_rows=ann_min_rows)
    hot.refresh()
    snap = hot.snapshot
    assert snap is not None
    assert len(snap.more_owner) == sum(len(r.more_image_vectors) for r in recs)
    assert (snap.ann_more_image is not None) == (ann_min_rows == 60)
    rng = np.random.default_rng(5)
    agree = 0
    for i in range(1, 300, 7):  # a query near one product's last photo
        r = recs[i]
        target = (r.more_image_vectors or (r.image_vector,))[-1]
        assert target is not None
        q = l2_normalize((target + 0.3 * rng.standard_normal(CLIP) / np.sqrt(CLIP)).astype(np.float32)[None])[0]
        got = [h.product.product_id for h in hot_ranked(hot, snap, q, None, IMAGE_ONLY, 10)]
        want = _brute_force(recs, q, 10)
        assert got[0] == r.product.product_id
        if ann_min_rows == 10_000:
            assert got == want
        agree += len(set(got) & set(want))
    assert agree / (10 * len(range(1, 300, 7))) >= 0.9  # recall@10 of the ANN path


def test_delta_refresh_and_start_up_file_keep_every_photo(s3_settings: Settings) -> None:
    recs = _records(200)
    cat = _catalog(s3_settings)
    cat.upsert(recs)
    hot = HotCatalog(cat, ann_min_rows=60)
    hot.refresh()
    # p0003 loses its photos after the first, p0004 is deleted, two new products bring photos.
    now = datetime.now(UTC)
    old3 = recs[3]
    new3 = ProductRecord(
        Product("p0003", "product 3", "", "cat", 3.0, "img/3-0.jpg", {}, now, now),
        old3.image_vector,
        old3.text_vector,
        "h3-new",
    )
    extra = _records(210)[200:]
    cat.upsert([new3, *extra])
    cat.delete("p0004")
    hot.refresh()
    snap = hot.snapshot
    assert snap is not None and hot.delta_loads == 1 and snap.ann_more_image is not None
    live = [r for r in recs if r.product.product_id not in ("p0003", "p0004")] + [new3, *extra]
    for r in [old3, recs[4], *extra]:
        for v in (r.image_vector, *r.more_image_vectors):
            if v is None:
                continue
            got = [h.product.product_id for h in hot_ranked(hot, snap, v, None, IMAGE_ONLY, 5)]
            assert got == _brute_force(live, v, 5)
    # A process started from a start-up file holds the same photos and answers the same.
    events = EventState()
    write_startup(ObjectStore(s3_settings), cat, snap, None, events, IMAGE_ONLY)
    state = read_startup(ObjectStore(s3_settings), cat, IMAGE_ONLY)
    assert state is not None
    loaded = state.hot
    assert np.array_equal(loaded.more_owner, snap.more_owner) and loaded.ann_more_image is not None
    for r in extra:
        v = r.more_image_vectors[-1] if r.more_image_vectors else r.image_vector
        if v is not None:
            a = [h.product.product_id for h in hot_ranked(hot, loaded, v, None, IMAGE_ONLY, 5)]
            assert a == [h.product.product_id for h in hot_ranked(hot, snap, v, None, IMAGE_ONLY, 5)]


# ---- upgrading a dataset from before several photos ----------------------------------------------
def test_a_dataset_from_before_several_photos_is_upgraded_in_place(local_settings: Settings) -> None:
    space = {"clip": "t", "text": "t"}
    old_schema = products_schema(CLIP, TEXT, space)
    old_schema = pa.schema(
        [f for f in old_schema if f.name not in {c.name for c in added_columns(CLIP)}], metadata=old_schema.metadata
    )
    db = lancedb.connect(local_settings.resolved_catalog_uri)
    table = db.create_table(TABLE, schema=old_schema)
    recs = [r for r in _records(20) if not r.more_image_vectors]
    rows = []
    for r in recs:
        p = r.product
        rows.append(
            {
                "product_id": p.product_id,
                "title": p.title,
                "description": "",
                "category": p.category,
                "price": p.price,
                "image_key": p.image,
                "attributes": "{}",
                "content_hash": r.content_hash,
                "created_at": p.created_at,
                "updated_at": p.updated_at,
                "image_vector": None if r.image_vector is None else r.image_vector.tolist(),
                "text_vector": r.text_vector.tolist(),
            }
        )
    table.add(pa.Table.from_pylist(rows, schema=old_schema))
    before = table.version

    cat = _catalog(local_settings)
    assert cat.version == before + 1  # one new version: the two null columns
    assert {c.name for c in added_columns(CLIP)} <= set(cat._table.schema.names)
    assert cat.get(recs[0].product.product_id).images == recs[0].product.images
    assert cat.existing([recs[0].product.product_id])[recs[0].product.product_id][0] == recs[0].content_hash
    cat.upsert(_records(30)[20:])  # products with several photos go into the upgraded table
    hot = HotCatalog(cat, ann_min_rows=10_000)
    hot.refresh()
    assert hot.snapshot is not None and hot.snapshot.live == len(recs) + 10
    _catalog(local_settings)  # opening it again changes nothing
    assert cat.latest_version() == before + 2


# ---- updates that leave the text or the photos alone reuse their vectors --------------------------
def test_an_update_reembeds_only_what_changed(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"images": 0, "texts": 0}
    clip, text = services.embedder.clip, services.embedder.text
    embed_images, embed_texts = clip.embed_images, text.embed_texts

    def count_images(images: list[object]) -> object:
        calls["images"] += len(images)
        return embed_images(images)  # type: ignore[arg-type]

    def count_texts(texts: list[str]) -> object:
        calls["texts"] += len(texts)
        return embed_texts(texts)

    monkeypatch.setattr(clip, "embed_images", count_images)
    monkeypatch.setattr(text, "embed_texts", count_texts)

    def put(second: tuple[int, int, int] = GREEN, **fields: object) -> tuple[int, int]:
        calls.update(images=0, texts=0)
        raw = {"product_id": "R1", "title": "Red mug", "price": 5, **fields}
        services.indexer.put(ProductInput.from_mapping(raw), [jpeg(RED), jpeg(second)])
        return calls["images"], calls["texts"]

    assert put() == (2, 1)
    first = services.catalog.stored_vectors(["R1"])["R1"]
    assert put(in_stock=False, price=7) == (0, 0)  # stock and price: nothing to embed
    again = services.catalog.stored_vectors(["R1"])["R1"]
    assert np.array_equal(again.text_vector, first.text_vector) and len(again.more_image_vectors) == 1
    assert services.catalog.get("R1").in_stock is False and services.catalog.get("R1").price == 7
    assert put(in_stock=False, price=7, title="Red mug, large") == (0, 1)  # the photos stay
    assert put(BLUE, in_stock=False, price=7, title="Red mug, large") == (2, 0)  # the text stays
    calls.update(images=0, texts=0)
    assert services.indexer.index([services_item(services, "R1")], force=True).indexed == 1
    assert (calls["images"], calls["texts"]) == (2, 1)  # a forced re-index runs the models again


def services_item(services: Services, pid: str) -> PendingProduct:
    p = services.catalog.get(pid)
    raw = {"product_id": pid, "title": p.title, "images": list(p.images), "in_stock": p.in_stock}
    return PendingProduct(
        ProductInput.from_mapping(raw), image_key=p.images[0], more_images=tuple((None, k) for k in p.images[1:])
    )
