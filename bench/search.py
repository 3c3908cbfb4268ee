"""Query latency through the HTTP app (live uvicorn server on loopback) with the catalog on S3.

    python -m bench.search --products 10000 --queries 100

Stored vectors are synthetic at the real dimensions (512 CLIP, 384 MiniLM); queries are embedded
by the real model architectures (ViT-B-32 random init, MiniLM). Single client, sequential.
"""

from __future__ import annotations

import argparse
import base64
import random
import socket
import threading
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import uvicorn

from bench.common import percentiles, report, s3_settings, timed
from core.catalog import ProductRecord
from core.embedding import l2_normalize, load_embedder
from core.types import Product
from functions.app import create_app
from functions.services import Services
from local.sample import BRANDS, COLOURS, ITEMS, MATERIALS, PATTERNS, PRICE_RANGES, generate

QUERIES = [
    "blue running shoes",
    "red leather handbag",
    "striped cotton t-shirt",
    "ceramic coffee mug",
    "wireless headphones",
    "wool beanie",
    "green canvas backpack",
    "black smartwatch",
]


def synthetic_catalog(services: Services, n: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    cats = sorted(ITEMS)
    now = datetime.now(UTC)
    t = time.perf_counter()
    for start in range(0, n, 2000):
        recs = []
        count = min(2000, n - start)
        img = l2_normalize(nrng.standard_normal((count, services.embedder.clip.dim)).astype(np.float32))
        txt = l2_normalize(nrng.standard_normal((count, services.embedder.text.dim)).astype(np.float32))
        for j in range(count):
            i = start + j
            cat = rng.choice(cats)
            title = (
                f"{rng.choice(BRANDS)} {rng.choice(sorted(COLOURS))} {rng.choice(PATTERNS)} "
                f"{rng.choice(MATERIALS[cat])} {rng.choice(ITEMS[cat])}"
            )
            lo, hi = PRICE_RANGES[cat]
            p = Product(
                f"B{i:07d}",
                title,
                "",
                cat,
                round(rng.uniform(lo, hi), 2),
                None if i % 10 == 0 else f"img/{i}.jpg",
                {},
                now,
                now,
            )
            recs.append(ProductRecord(p, None if i % 10 == 0 else img[j], txt[j], content_hash=str(i)))
        services.catalog.upsert(recs)
    services.catalog.ensure_indexes()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    settings, server = s3_settings(clip_model="ViT-B-32", clip_pretrained="none")
    services = Services.from_settings(settings, embedder=load_embedder(settings))
    build_s = synthetic_catalog(services, args.products)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    userver = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=userver.run, daemon=True).start()
    while not userver.started:
        time.sleep(0.05)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    photo = base64.b64encode(generate(1)[0].image).decode()
    qi = iter(range(10**9))
    weights = {"image": 0.7, "text": 0.3}  # the production default (random-init mode would use text only)

    def text_search() -> None:
        q = QUERIES[next(qi) % len(QUERIES)] + f" {next(qi)}"  # unique text: no cache can help
        r = client.post("/search", json={"query": q, "top_k": 10, "weights": weights})
        assert r.status_code == 200, r.text

    def filtered() -> None:
        r = client.post(
            "/search",
            json={
                "query": QUERIES[next(qi) % 8] + f" {next(qi)}",
                "top_k": 10,
                "weights": weights,
                "filters": {"category": "Footwear", "max_price": 100},
            },
        )
        assert r.status_code == 200, r.text

    def image_search() -> None:
        r = client.post("/search", json={"image_base64": photo, "top_k": 10})
        assert r.status_code == 200, r.text

    def similar() -> None:
        r = client.get(f"/similar/B{(next(qi) * 7919) % args.products:07d}", params={"top_k": 10})
        assert r.status_code == 200, r.text

    def product() -> None:
        assert client.get(f"/products/B{(next(qi) * 7919) % args.products:07d}").status_code == 200

    rows = []
    for name, fn in [
        ("text search (uncached)", text_search),
        ("text search + filters", filtered),
        ("image search", image_search),
        ("similar", similar),
        ("get product", product),
    ]:
        rows.append({"operation": name, **percentiles(timed(fn, args.queries))})
    # Where the time goes for text search: the two query encoders alone.
    rows.append(
        {
            "operation": "  of which CLIP text encode",
            **percentiles(timed(lambda: services.embedder.clip.embed_texts(["blue running shoes"]), 30)),
        }
    )
    rows.append(
        {
            "operation": "  of which MiniLM encode",
            **percentiles(timed(lambda: services.embedder.text.embed_texts(["blue running shoes"]), 30)),
        }
    )
    userver.should_exit = True
    server.stop()
    report(
        "search",
        rows,
        {
            "products": args.products,
            "catalog_build_s": round(build_s, 1),
            "indexes": "IVF_PQ + scalar" if args.products >= settings.index_min_rows else "none (exact)",
        },
    )


if __name__ == "__main__":
    main()
