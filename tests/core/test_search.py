"""Search and similar on the S3 server with the deterministic fake embedder."""

import json
import threading

import pytest

from core.errors import InvalidInput, NotFound
from core.images import decode_image
from core.ingest import iter_bucket_prefix
from core.search import SearchQuery, search, similar
from core.types import Filters, Weights
from functions.services import Services
from local.sample import generate

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
        hits = search(services.catalog, services.embedder, SearchQuery(image=img, top_k=3), W).hits
        assert hits[0].product.product_id == rec["product_id"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert all(h.product.has_image for h in hits)  # photo queries only match products with images


def test_text_only_products_are_searchable(services: Services) -> None:
    records = seed(services)
    text_only = [r for r in records if "image" not in r]
    assert text_only
    for rec in text_only:
        hits = search(services.catalog, services.embedder, SearchQuery(text=str(rec["title"]), top_k=5), W).hits
        ids = [h.product.product_id for h in hits]
        assert rec["product_id"] in ids
        hit = hits[ids.index(str(rec["product_id"]))]
        assert hit.image_similarity is None and hit.text_similarity is not None
        assert hit.score == pytest.approx(hit.text_similarity)


def test_search_filters_and_weights(services: Services) -> None:
    records = seed(services, 36)
    f = Filters(categories=("Home", "Bags"), max_price=100)
    hits = search(services.catalog, services.embedder, SearchQuery(text="striped", top_k=100, filters=f), W).hits
    expected = {r["product_id"] for r in records if r["category"] in ("Home", "Bags") and float(r["price"]) <= 100}  # type: ignore[arg-type]
    assert {h.product.product_id for h in hits} == expected
    text_only = search(
        services.catalog, services.embedder, SearchQuery(text="striped", top_k=5, weights=Weights(0, 1)), W
    ).hits
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


def test_batched_and_single_flight_search_answer_exactly_as_direct(services: Services) -> None:
    """The process's batched encoder and single-flight give the same ranking and scores as direct
    encodes, for text, photo and both, under concurrent callers."""
    records = seed(services)
    assert services.encoder is not None and services.flights is not None
    photo = next(r for r in records if "image" in r)
    img = decode_image(services.store.get_bytes(str(photo["image"])), max_bytes=10**7, max_pixels=10**7)
    queries = [SearchQuery(text=str(r["title"]), top_k=5) for r in records[:6]]
    queries += [SearchQuery(image=img, top_k=5), SearchQuery(text="striped mug", image=img, top_k=5)]

    def run(q: SearchQuery, batched: bool) -> list[tuple[str, float]]:
        extra = {"encoder": services.encoder, "flights": services.flights} if batched else {}
        hits = search(services.catalog, services.embedder, q, W, **extra).hits  # type: ignore[arg-type]
        return [(h.product.product_id, round(h.score, 5)) for h in hits]

    direct = [run(q, False) for q in queries]
    got: dict[int, list[tuple[str, float]]] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, run(queries[i % 8], True))) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [got[i] for i in range(24)] == [direct[i % 8] for i in range(24)]
