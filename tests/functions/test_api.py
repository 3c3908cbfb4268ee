"""The HTTP contract through the app factory (fake embedder, catalog on the S3 server)."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.embedding import Embedder
from core.ingest import PendingProduct
from core.settings import Settings
from core.types import ProductInput
from functions.app import create_app
from functions.routes import deps
from functions.services import Services
from local.sample import generate
from tests.conftest import make_settings, new_bucket
from tests.helpers import jpeg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(s3_endpoint: str, fake: Embedder) -> TestClient:
    """One seeded catalog per module (one batch commit); tests that write use their own ids."""
    bucket = new_bucket(s3_endpoint, "api")
    services = Services.from_settings(make_settings(s3_endpoint, bucket), embedder=fake)
    items = []
    for p in generate(18, text_only_every=6, image_size=48):
        rec = {k: v for k, v in p.record.items() if k != "image"}
        items.append(PendingProduct(ProductInput.from_mapping(rec), image_bytes=p.image or None))
    assert services.indexer.index(items).indexed == 18
    return TestClient(create_app(services))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_search_text_and_filters(client: TestClient) -> None:
    r = client.post("/search", json={"query": "striped cotton", "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 5 and body["query_time_ms"] >= 0
    first = body["results"][0]
    assert set(first) >= {"product_id", "title", "description", "category", "price", "image_url", "score"}
    r = client.post(
        "/search",
        json={
            "query": "bag",
            "top_k": 100,
            "filters": {"category": ["Bags", "Home"], "min_price": 5, "max_price": 80},
        },
    )
    for hit in r.json()["results"]:
        assert hit["category"] in ("Bags", "Home") and 5 <= hit["price"] <= 80


def test_search_pages_sorts_facets_and_attribute_filters(client: TestClient) -> None:
    """The matching set through HTTP: totals, pages of one ranking, a price sort, facet counts
    that add up, attribute filters; a service without the in-memory catalog says what it lacks."""
    ask = {"query": "striped bag", "top_k": 100, "facets": ["category", "price", "attributes.material"]}
    body = client.post("/search", json=ask).json()
    everything, total = body["results"], body["total_matches"]
    assert total == len(everything) > 0
    counts = {f["value"]: f["count"] for f in body["facets"]["category"]}
    assert counts == {c: sum(h["category"] == c for h in everything) for c in {h["category"] for h in everything}}
    assert sum(b["count"] for b in body["facets"]["price"]) == sum(h["price"] is not None for h in everything)
    materials = body["facets"]["attributes.material"]
    assert materials and sum(m["count"] for m in materials) == sum("material" in h["attributes"] for h in everything)
    pages = [client.post("/search", json={**ask, "top_k": 4, "offset": o}).json()["results"] for o in range(0, 100, 4)]
    assert [h["product_id"] for p in pages for h in p] == [h["product_id"] for h in everything]
    cheap = client.post("/search", json={**ask, "sort": "price_asc"}).json()["results"]
    prices = [h["price"] for h in cheap if h["price"] is not None]
    assert prices == sorted(prices) and {h["product_id"] for h in cheap} == {h["product_id"] for h in everything}
    material = materials[0]["value"]
    only = client.post("/search", json={"query": "bag", "filters": {"attributes": {"material": material}}}).json()
    assert only["results"] and all(h["attributes"]["material"] == material for h in only["results"])
    typo = client.post("/search", json={"query": "stripd", "mode": "keyword"}).json()  # 6 letters, 1 edit
    assert typo["results"] and all("striped" in (h["title"] + h["description"]).lower() for h in typo["results"])
    exact = client.post("/search", json={"query": "stripd", "mode": "keyword", "typo_tolerance": False}).json()
    assert exact["results"] == [] and exact["total_matches"] == 0


def test_keyword_mode_without_a_started_hot_catalog(client: TestClient, s3_endpoint: str, fake: Embedder) -> None:
    """A host that never ran the app's lifespan loads the hot copy on the first keyword query;
    a service configured without it (HOT_CATALOG=false) says so with a 422."""
    r = client.post("/search", json={"query": "striped", "mode": "keyword", "top_k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits and all("striped" in h["title"].lower() or "striped" in h["description"].lower() for h in hits)
    assert all(0 < h["keyword_score"] <= 1 and h["score"] == h["keyword_score"] for h in hits)
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "nohot"), hot_catalog=False)
    cold = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    r = cold.post("/search", json={"query": "striped", "mode": "keyword"})
    assert r.status_code == 422 and "HOT_CATALOG" in r.json()["detail"]
    for ask in ({"sort": "newest"}, {"facets": ["category"]}, {"filters": {"attributes": {"material": "cotton"}}}):
        r = cold.post("/search", json={"query": "striped", **ask})
        assert r.status_code == 422 and "HOT_CATALOG" in r.json()["detail"], ask
    assert cold.post("/search", json={"query": "striped"}).status_code == 200  # hybrid -> vector


def test_search_by_image_and_image_endpoint(client: TestClient) -> None:
    product = client.get("/products/S00001").json()
    img = client.get("/products/S00001/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    r = client.post("/search", json={"image_base64": "data:image/jpeg;base64," + b64(img.content), "top_k": 3})
    assert r.status_code == 200
    assert r.json()["results"][0]["product_id"] == product["product_id"]
    assert client.get("/products/S00006/image").status_code == 404  # text-only product


def test_similar(client: TestClient) -> None:
    r = client.get("/similar/S00002", params={"top_k": 4})
    assert r.status_code == 200
    ids = [p["product_id"] for p in r.json()["similar_products"]]
    assert len(ids) == 4 and "S00002" not in ids
    assert client.get("/similar/NOPE").status_code == 404
    r = client.get("/similar/S00002", params={"category": "Home"})
    assert all(p["category"] == "Home" for p in r.json()["similar_products"])


def test_product_crud(client: TestClient) -> None:
    r = client.put("/products/NEW-1", json={"title": "Green mug", "price": 9.5, "category": "Home", "glaze": "matte"})
    assert r.status_code == 200
    assert r.json()["attributes"] == {"glaze": "matte"} and r.json()["image_url"] is None
    assert client.get("/products/NEW-1").json() == r.json()  # the response is what was stored
    created = r.json()["created_at"]
    r = client.put("/products/NEW-1", json={"title": "Green mug v2", "image_base64": b64(jpeg((0, 200, 0)))})
    assert r.json()["title"] == "Green mug v2" and r.json()["created_at"] == created
    assert r.json()["image"].startswith("images/NEW-1/")
    assert client.get("/products/NEW-1").json() == r.json()
    # An unchanged PUT writes nothing and answers with the stored product.
    again = client.put("/products/NEW-1", json={"title": "Green mug v2", "image": r.json()["image"]})
    assert again.status_code == 200 and again.json() == r.json()
    assert client.delete("/products/NEW-1").json() == {"product_id": "NEW-1", "deleted": True}
    assert client.get("/products/NEW-1").status_code == 404
    assert client.delete("/products/NEW-1").status_code == 404


def test_several_photos_per_product(client: TestClient) -> None:
    red, green, blue = jpeg((220, 20, 20)), jpeg((20, 200, 30)), jpeg((20, 30, 220))
    r = client.put("/products/PHOTOS-1", json={"title": "Mug", "image_base64": b64(red), "images_base64": [b64(green)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 2 and body["image"] == body["images"][0]
    assert body["image_urls"][0] == body["image_url"] and body["image_urls"][1].endswith("/image?index=1")
    assert client.get("/products/PHOTOS-1/image", params={"index": 1}).content == green
    assert client.get("/products/PHOTOS-1/image").content == red
    missing = client.get("/products/PHOTOS-1/image", params={"index": 2})
    assert missing.status_code == 404 and "2 photo(s)" in missing.json()["detail"]
    assert client.get("/products/PHOTOS-1/image", params={"index": 10}).status_code == 422
    # A photo search with the second photo finds the product, at the similarity of that photo.
    r = client.post("/search", json={"image_base64": b64(green), "top_k": 1, "mode": "vector"})
    top = r.json()["results"][0]
    assert top["product_id"] == "PHOTOS-1" and top["image_similarity"] == pytest.approx(1.0, abs=1e-4)
    # Keys of stored objects work too; the photos replace the old ones.
    keys = body["images"][::-1]
    r = client.put("/products/PHOTOS-1", json={"title": "Mug", "images": keys})
    assert r.json()["images"] == keys and client.get("/products/PHOTOS-1/image").content == green
    r = client.put("/products/PHOTOS-1", json={"title": "Mug", "images_base64": [b64(blue)]})
    assert len(r.json()["images"]) == 1 and r.json()["image_urls"] == [r.json()["image_url"]]
    bad = client.put("/products/PHOTOS-1", json={"title": "Mug", "images": [keys[0], "missing/x.jpg"]})
    assert bad.status_code == 422 and "image 2 of 2" in bad.json()["detail"]
    assert client.get("/products/PHOTOS-1").json()["images"] == r.json()["images"]  # nothing lost
    assert client.delete("/products/PHOTOS-1").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/search", {"top_k": 3}, 422),
        ("post", "/search", {"query": "  "}, 422),
        ("post", "/search", {"query": "x", "top_k": 0}, 422),
        ("post", "/search", {"query": "x", "top_k": 101}, 422),
        ("post", "/search", {"query": "x", "filters": {"min_price": "cheap"}}, 422),
        ("post", "/search", {"query": "x", "filters": {"min_price": 9, "max_price": 1}}, 422),
        ("post", "/search", {"query": "x", "filters": {"colour": "red"}}, 422),
        ("post", "/search", {"query": "x", "weights": {"image": 0, "text": 0}}, 422),
        ("post", "/search", {"image_base64": "!!!not base64!!!"}, 422),
        ("post", "/search", {"image_base64": b64(b"plain text")}, 422),
        ("post", "/search", {"query": "x" * 1001}, 422),
        ("post", "/search", {"query": "x", "offset": 1001}, 422),
        ("post", "/search", {"query": "x", "offset": -1}, 422),
        ("post", "/search", {"query": "x", "sort": "cheapest"}, 422),
        ("post", "/search", {"query": "x", "facets": ["colour"]}, 422),
        ("post", "/search", {"query": "x", "facets": ["category"] * 11}, 422),
        ("post", "/search", {"query": "x", "filters": {"attributes": {}}}, 422),
        ("post", "/search", {"query": "x", "filters": {"attributes": {"c": ["red"]}}}, 422),
        ("get", "/similar/S00001?top_k=0", None, 422),
        ("get", "/similar/S00001?min_price=5&max_price=1", None, 422),
        ("get", "/products/unknown", None, 404),
        ("put", "/products/P1", {"price": 3}, 422),
        ("put", "/products/P1", {"title": "t", "price": -1}, 422),
        ("put", "/products/P1", {"title": "t", "image": "../x.jpg"}, 422),
        ("put", "/products/P1", {"title": "t", "image": "missing/key.jpg"}, 422),
        ("put", "/products/P1", {"title": "t", "image": "a.jpg", "image_base64": "aGk="}, 422),
        ("put", "/products/P1", {"title": "t", "product_id": "P2"}, 422),
        ("put", "/products/P1", {"title": "t", "image_base64": b64(jpeg()[:40])}, 422),
        ("put", "/products/P1", {"title": "t", "images": ["a.jpg"], "images_base64": ["aGk="]}, 422),
        ("put", "/products/P1", {"title": "t", "images_base64": ["aGk="] * 11}, 422),
        ("put", "/products/P1", {"title": "t", "images_base64": [b64(jpeg()), "!!"]}, 422),
        ("put", "/products/P1", {"title": "t", "images": "a.jpg"}, 422),
        ("get", "/products/S00001/image?index=-1", None, 422),
    ],
)
def test_bad_input_is_4xx_never_500(client: TestClient, method: str, path: str, body: object, status: int) -> None:
    r = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_malformed_json_and_oversized_bodies(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = b"x" * (Settings(_env_file=None).max_request_bytes + 1)  # type: ignore[call-arg]
    r = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_image_pixel_limit_is_413(s3_endpoint: str, bucket: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, bucket, max_image_pixels=10_000)
    c = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buf, "PNG")
    assert c.post("/search", json={"image_base64": b64(buf.getvalue())}).status_code == 413
    assert c.put("/products/P", json={"title": "t", "image_base64": b64(buf.getvalue())}).status_code == 413


def test_api_key_guards_writes(s3_endpoint: str, bucket: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, bucket, api_key="k-123")
    c = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    assert c.put("/products/P", json={"title": "t"}).status_code == 401
    assert c.put("/products/P", json={"title": "t"}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = c.put("/products/P", json={"title": "t"}, headers={"Authorization": "Bearer k-123"})
    assert ok.status_code == 200
    assert c.delete("/products/P").status_code == 401
    assert c.get("/products/P").status_code == 200  # reads stay open
    assert "k-123" not in c.get("/health").text


def test_recommendations_cold_start(client: TestClient) -> None:
    r = client.get("/recommendations/U1", params={"top_k": 3, "category": "Tops"})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "U1" and body["strategy"] == "newest"
    assert len(body["recommendations"]) == 3
    assert all(x["category"] == "Tops" and x["reason"] == "New in Tops" for x in body["recommendations"])


def test_health_and_metrics(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "healthy" and h["models_loaded"] and h["database_connected"]
    assert h["product_count"] >= 18 and h["clip_mode"] == "pretrained"
    assert h["text_runtime"] == {"clip": "fake", "text": "fake"} and h["image_runtime"] == "fake"
    m = client.get("/metrics")
    assert m.status_code == 200
    assert 'api_request_duration_seconds_count{method="PUT",route="/products/{product_id}",status="200"}' in m.text
    assert "catalog_products " in m.text and "clip_random_init 0.0" in m.text


def test_health_reports_random_init_clip(s3_settings: Settings, fake: Embedder) -> None:
    class RandomClip:
        random_init = True
        dim = fake.clip.dim
        name = "random"
        embed_images = fake.clip.embed_images
        embed_texts = fake.clip.embed_texts

    svc = Services.from_settings(s3_settings, embedder=Embedder(clip=RandomClip(), text=fake.text))
    h = TestClient(create_app(svc)).get("/health").json()
    assert h["status"] == "degraded"
    assert h["clip_mode"].startswith("random-init")
    assert any("CLIP_PRETRAINED=none" in w for w in h["warnings"])
    assert (svc.default_weights.image, svc.default_weights.text) == (0.0, 1.0)


def test_hot_catalog_serves_search_with_cache_and_metrics(s3_settings: Settings, fake: Embedder) -> None:
    """With the app running (lifespan), queries come from the in-memory snapshot: a product
    written through the API is found by the very next search; repeated query texts hit the
    cache; the query-path metrics are exported."""
    svc = Services.from_settings(s3_settings, embedder=fake)
    with TestClient(create_app(svc)) as c:
        for i, title in enumerate(["red canvas sneaker", "blue wool scarf", "green ceramic mug"]):
            assert (
                c.put(f"/products/h{i}", json={"title": title, "category": "misc", "price": 10 + i}).status_code == 200
            )
        assert svc.hot is not None and svc.hot.snapshot is not None
        first = c.post("/search", json={"query": "blue wool scarf", "top_k": 2}).json()["results"]
        assert first[0]["product_id"] == "h1"
        assert svc.hot.snapshot.version == svc.catalog.version and svc.hot.snapshot.live == 3
        again = c.post("/search", json={"query": "blue wool scarf", "top_k": 2}).json()["results"]
        assert [r["product_id"] for r in again] == [r["product_id"] for r in first]
        assert c.get("/similar/h1?top_k=5").json()["similar_products"][0]["product_id"] != "h1"
        # Written after the snapshot loaded: visible at once (this process wrote it).
        assert c.put("/products/h9", json={"title": "yellow rain boot", "price": 30}).status_code == 200
        got = c.post("/search", json={"query": "yellow rain boot", "top_k": 1}).json()["results"]
        snap = svc.hot.snapshot
        assert got[0]["product_id"] == "h9", (snap.version, svc.catalog.version, sorted(snap.index), got)
        c.delete("/products/h9")
        ids = [
            r["product_id"] for r in c.post("/search", json={"query": "yellow rain boot", "top_k": 5}).json()["results"]
        ]
        assert "h9" not in ids
        text = c.get("/metrics").text
    # two distinct query texts, each asked twice: 2 misses (embedded), 2 hits (not embedded)
    assert 'query_cache_requests_total{result="hit"} 2.0' in text
    assert 'query_cache_requests_total{result="miss"} 2.0' in text
    assert "cache_hit_rate 0.5" in text
    assert 'model_inference_duration_seconds_count{kind="text"} 2.0' in text
    assert 'vector_search_duration_seconds_count{route="/search"} 4.0' in text
    assert 'vector_search_duration_seconds_count{route="/similar"} 1.0' in text
    fresh = [ln for ln in text.splitlines() if ln.startswith("index_freshness_seconds ")]
    assert fresh and 0 <= float(fresh[0].split()[1]) < 5
    assert f"index_served_version {float(svc.catalog.version)}" in text
    # latency by matched route template (the ASGI timing middleware reads the router's match)
    assert 'api_request_duration_seconds_count{method="GET",route="/similar/{product_id}",status="200"} 1.0' in text
    assert 'api_request_duration_seconds_count{method="POST",route="/search",status="200"}' in text


def test_an_uncached_text_search_awaits_its_encode_without_a_worker_thread(
    s3_settings: Settings, fake: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text search that only needs its encode before a search from memory awaits the batcher
    on the event loop; a search that walks the matching set still goes to the thread pool."""
    svc = Services.from_settings(s3_settings, embedder=fake)
    with TestClient(create_app(svc)) as c:
        for i, title in enumerate(["red canvas sneaker", "blue wool scarf"]):
            assert c.put(f"/products/w{i}", json={"title": title, "category": "misc"}).status_code == 200
        assert svc.hot is not None and svc.hot.current() is not None and svc.hot.in_memory  # holds the writes
        handed: list[object] = []
        real = deps.run_in_threadpool
        monkeypatch.setattr(deps, "run_in_threadpool", lambda fn, *a: handed.append(fn) or real(fn, *a))
        got = c.post("/search", json={"query": "blue wool scarf", "top_k": 1}).json()["results"]
        assert got[0]["product_id"] == "w1"
        assert handed == [] and svc.encoder is not None and svc.encoder.texts.batch_sizes == {1: 1}
        faceted = c.post("/search", json={"query": "red canvas sneaker", "facets": ["category"]})
        assert faceted.status_code == 200 and faceted.json()["results"][0]["product_id"] == "w0"
        assert len(handed) == 1  # the facet walk ran in a thread (and encoded there, batched)
        assert svc.encoder.texts.batch_sizes == {1: 2}
        # This process writes while the encode runs: the search that follows refreshes the
        # snapshot (I/O), so it goes to a thread with the vectors already encoded.
        submit = svc.encoder.submit_text

        def submit_then_write(text: str, with_clip: bool) -> object:
            future = submit(text, with_clip)
            svc.catalog.local_writes += 1
            return future

        monkeypatch.setattr(svc.encoder, "submit_text", submit_then_write)
        got = c.post("/search", json={"query": "red canvas", "top_k": 1}).json()["results"]
        assert got[0]["product_id"] == "w0" and len(handed) == 2
        assert svc.encoder.texts.batch_sizes == {1: 3}  # encoded once, on the event loop's request
        text = c.get("/metrics").text
    assert 'query_cache_requests_total{result="miss"} 3.0' in text
    assert 'model_inference_duration_seconds_count{kind="text"} 3.0' in text


def test_hybrid_search_finds_names_and_codes(s3_settings: Settings, fake: Embedder) -> None:
    """Default mode is hybrid: an exact title or a SKU typed without its dash ranks its product
    first, with its keyword score; `vector` gives the plain fused score; `keyword` runs BM25 alone."""
    svc = Services.from_settings(s3_settings, embedder=fake)
    with TestClient(create_app(svc)) as c:
        items = [
            ("k1", "Kestrel Virzan 3 blue running shoes", "KS-48213"),
            ("k2", "Kestrel Quador 3 blue running shoes", "KS-11873"),
            ("k3", "Kestrel Maren 5 blue running shoes", "KS-90412"),
            ("k4", "Acme red striped cotton t-shirt", "AC-55555"),
        ]
        for pid, title, sku in items:
            body = {"title": title, "category": "Footwear", "price": 80, "sku": sku}
            assert c.put(f"/products/{pid}", json=body).status_code == 200
        for pid, title, sku in items:
            hits = c.post("/search", json={"query": title, "top_k": 3}).json()["results"]
            assert hits[0]["product_id"] == pid and 0 < hits[0]["keyword_score"] <= 1
            by_code = c.post("/search", json={"query": sku.replace("-", "").lower(), "mode": "keyword"}).json()
            assert [h["product_id"] for h in by_code["results"]] == [pid]
        plain = c.post("/search", json={"query": "Kestrel Quador 3", "mode": "vector", "top_k": 4}).json()["results"]
        assert all(h["keyword_score"] is None for h in plain)
        hybrid = c.post("/search", json={"query": "Kestrel Quador 3", "top_k": 4}).json()["results"]
        by_id = {h["product_id"]: h for h in plain}
        for h in hybrid:  # hybrid score = vector score + 0.5 x keyword score
            assert h["score"] == pytest.approx(by_id[h["product_id"]]["score"] + 0.5 * h["keyword_score"], abs=2e-6)
        weighted = c.post("/search", json={"query": "Kestrel Quador 3", "keyword_weight": 0, "top_k": 4}).json()
        assert [h["product_id"] for h in weighted["results"]] == [h["product_id"] for h in plain]
        assert c.post("/search", json={"query": "x", "mode": "fuzzy"}).status_code == 422
        assert c.post("/search", json={"query": "x", "keyword_weight": -1}).status_code == 422
        photo = {"image_base64": b64(jpeg()), "mode": "keyword"}
        r = c.post("/search", json=photo)
        assert r.status_code == 422 and "keyword search" in r.json()["detail"]


@pytest.mark.slow
def test_without_the_hot_catalog_queries_use_lancedb_ann_indexes_on_s3(s3_endpoint: str, fake: Embedder) -> None:
    """HOT_CATALOG=false (a catalog beyond one process's memory): search and similar read the
    dataset on the S3 server through LanceDB's own IVF-PQ and scalar indexes, filters included."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "lanceann"), hot_catalog=False, index_min_rows=256)
    services = Services.from_settings(settings, embedder=fake)
    assert services.hot is None
    items = []
    for p in generate(400, text_only_every=4, image_size=32):
        rec = {k: v for k, v in p.record.items() if k != "image"}
        items.append(PendingProduct(ProductInput.from_mapping(rec), image_bytes=p.image or None))
    assert services.indexer.index(items).indexed == 400
    assert set(services.catalog.ensure_indexes()) == {"product_id", "category", "price", "image_vector", "text_vector"}
    client = TestClient(create_app(services))
    # The same queries answered exactly by a process with the hot catalog (exact below ANN_MIN_ROWS).
    with TestClient(
        create_app(Services.from_settings(settings.model_copy(update={"hot_catalog": True}), embedder=fake))
    ) as exact:
        found = total = 0
        for pid in ("S00003", "S00123", "S00250", "S00377"):
            title = client.get(f"/products/{pid}").json()["title"]
            got = client.post("/search", json={"query": title, "top_k": 5})
            want = exact.post("/search", json={"query": title, "top_k": 5})
            assert got.status_code == want.status_code == 200
            ids = [h["product_id"] for h in got.json()["results"]]
            found += len(set(ids) & {h["product_id"] for h in want.json()["results"]})
            total += 5
        assert found / total >= 0.6, f"recall@5 against exact {found / total:.2f}"
    # Pages from LanceDB are slices of one ranking too; without the matching set there is no total.
    eight = client.post("/search", json={"query": title, "top_k": 8}).json()
    halves = [client.post("/search", json={"query": title, "top_k": 4, "offset": o}).json() for o in (0, 4)]
    assert [h["product_id"] for p in halves for h in p["results"]] == [h["product_id"] for h in eight["results"]]
    assert eight["total_matches"] is None
    r = client.post("/search", json={"query": title, "top_k": 5, "filters": {"max_price": 50}})
    assert r.status_code == 200 and r.json()["results"] and all(h["price"] <= 50 for h in r.json()["results"])
    r = client.get("/similar/S00123?top_k=5")
    assert r.status_code == 200
    similar_ids = [h["product_id"] for h in r.json()["similar_products"]]
    assert len(similar_ids) == 5 and "S00123" not in similar_ids


def test_suggest(client: TestClient) -> None:
    client.post("/search", json={"query": "Zigzag  Tote", "top_k": 1})  # recorded normalised
    past = client.get("/suggest", params={"q": "zigz"}).json()["suggestions"]
    assert past[0] == {"text": "zigzag tote", "kind": "query", "product_id": None}
    r = client.get("/suggest", params={"q": "stri", "limit": 5})
    assert r.status_code == 200, r.text
    found = r.json()["suggestions"]
    products = [s for s in found if s["kind"] == "product"]
    assert products and all("striped" in s["text"].lower() for s in products)
    assert client.get(f"/products/{products[0]['product_id']}").status_code == 200
    assert len(found) <= 5
    assert client.get("/suggest", params={"q": ""}).status_code == 422
    assert client.get("/suggest", params={"q": "x", "limit": 21}).status_code == 422
