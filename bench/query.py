"""The query-path benchmark suite: our service against the reference stack, side by side.

    python -m bench.query --products 100000                  # ~10 min on 2 cores
    python -m bench.query --products 100000 --million        # + 1M-product store-only search
    pip install -e '.[bench]'                                # ChromaDB for the baseline

What it does, on this machine (the S3 server and the query process each in a process of their own):

1. Builds a catalog of ``--products`` products in LanceDB on the embedded S3 server (moto over
   HTTP). Stored vectors are synthetic at the real dimensions (512 CLIP, 384 MiniLM), drawn as a
   mixture around 300 product-type centres (real catalogs cluster; isotropic random vectors have
   no meaningful nearest neighbours for any index). Titles, categories and prices are realistic.
   Queries are embedded by the real model architectures (ViT-B-32 random init, MiniLM).
2. Starts the query process (``python -m bench.serve``: uvicorn on loopback, the real model
   architectures) and measures single-client p50/p95/p99 (a keep-alive ``http.client``) of text
   search (uncached: every query text is new), text search with filters, a repeated query (cache),
   image search, similar, and recommendations; then throughput and errors with ``--clients``
   concurrent clients of mixed traffic for ``--seconds``; upload-to-searchable latency (a second
   writer commits a product, we poll search until it is the top hit); peak RSS.
3. ANN recall@10 against exact search on the same queries (same candidate rule, no ANN).
4. Reference-stack baseline: ChromaDB (in-process, persistent, default HNSW) with the same
   vectors and the same query vectors; store-only and end-to-end (same query embedding) latency,
   and our/baseline ratios.
5. ``--million``: 1M products in memory (no S3: a 3.6 GB catalog does not fit the embedded S3
   server's RAM budget here), store-only search latency and the process's memory.

Prints one table and writes JSON to ``bench/results/query-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import random
import resource
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from bench.common import LightClient, ServeProcess, percentiles, report, s3_settings, timed
from core.catalog import Catalog, ProductRecord, products_schema
from core.embedding import l2_normalize, load_embedder
from core.hot import CategoryCodes, HotCatalog, HotSnapshot
from core.search import hot_ranked, similar
from core.types import Filters, Product, Weights
from functions.services import Services
from local.sample import BRANDS, COLOURS, ITEMS, MATERIALS, PATTERNS, PRICE_RANGES, generate

W = Weights(0.7, 0.3)
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
CENTRES = 300


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def mixture(n: int, dim: int, seed: int, types: np.ndarray) -> np.ndarray:
    centres = l2_normalize(np.random.default_rng(1000 + dim).standard_normal((CENTRES, dim)).astype(np.float32))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        noise = rng.standard_normal((e - s, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
        out[s:e] = l2_normalize(centres[types[s:e]] + noise)
    return out


def column_product(rows: dict[str, list[Any]], i: int, at: datetime) -> Product:
    """Product ``i`` of :func:`catalog_columns`' rows, created and updated ``at``."""
    return Product(
        rows["product_id"][i],
        rows["title"][i],
        "",
        rows["category"][i],
        rows["price"][i],
        rows["image_key"][i],
        {},
        at,
        at,
    )


def catalog_columns(n: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    cats = sorted(ITEMS)
    types = np.random.default_rng(seed).integers(0, CENTRES, n)
    rows: dict[str, list[Any]] = {k: [] for k in ("product_id", "title", "category", "price", "image_key", "color")}
    for i in range(n):
        cat = cats[int(types[i]) % len(cats)]
        rows["product_id"].append(f"B{i:07d}")
        brand, colour = rng.choice(BRANDS), rng.choice(sorted(COLOURS))
        rows["title"].append(
            f"{brand} {colour} {rng.choice(PATTERNS)} {rng.choice(MATERIALS[cat])} {rng.choice(ITEMS[cat])}"
        )
        rows["color"].append(colour)
        rows["category"].append(cat)
        lo, hi = PRICE_RANGES[cat]
        rows["price"].append(round(rng.uniform(lo, hi), 2))
        rows["image_key"].append(None if i % 10 == 0 else f"img/{i}.jpg")
    return {"rows": rows, "types": types}


def build_catalog(catalog: Catalog, n: int, more_photos: int = 0) -> tuple[float, dict[str, Any]]:
    """Bulk-load ``n`` products (one Lance append per 20k rows: the catalog a long-running shop
    would have; upserts of single products are measured separately). ``more_photos``: photos
    after the first of each product with an image (other views: near its type's centre too)."""
    t = time.perf_counter()
    cols = catalog_columns(n)
    rows, types = cols["rows"], cols["types"]
    schema = products_schema(catalog.clip_dim, catalog.text_dim, catalog.space)
    now = datetime.now(UTC)
    for s in range(0, n, 20_000):
        e = min(n, s + 20_000)
        img = mixture(e - s, catalog.clip_dim, s + 1, types[s:e])
        txt = mixture(e - s, catalog.text_dim, s + 2, types[s:e] // 2)
        no_img = np.array([rows["image_key"][i] is None for i in range(s, e)])
        img_arr = pa.FixedSizeListArray.from_arrays(pa.array(img.reshape(-1)), catalog.clip_dim, mask=pa.array(no_img))
        table = pa.table(
            {
                "product_id": rows["product_id"][s:e],
                "title": rows["title"][s:e],
                "description": [""] * (e - s),
                "category": rows["category"][s:e],
                "price": rows["price"][s:e],
                "image_key": rows["image_key"][s:e],
                "attributes": [json.dumps({"color": c}) for c in rows["color"][s:e]],
                "content_hash": [f"h{i}" for i in range(s, e)],
                "created_at": pa.array([now] * (e - s), pa.timestamp("us", tz="UTC")),
                "updated_at": pa.array([now] * (e - s), pa.timestamp("us", tz="UTC")),
                "image_vector": img_arr,
                "text_vector": pa.FixedSizeListArray.from_arrays(pa.array(txt.reshape(-1)), catalog.text_dim),
                **extra_photos(catalog.clip_dim, types[s:e], no_img, more_photos, seed=s + 3),
                "in_stock": pa.nulls(e - s, pa.bool_()),  # null: in stock
                "embed_hash": pa.nulls(e - s, pa.string()),
            },
            schema=schema,
        )
        catalog._table.add(table)
    return time.perf_counter() - t, rows


def extra_photos(dim: int, types: np.ndarray, no_img: np.ndarray, k: int, seed: int) -> dict[str, pa.Array]:
    """The ``more_image_keys`` / ``more_image_vectors`` columns: ``k`` photos for each product
    with an image (none: nulls)."""
    n = len(types)
    if k == 0:
        return {
            "more_image_keys": pa.nulls(n, pa.list_(pa.string())),
            "more_image_vectors": pa.nulls(n, pa.list_(pa.list_(pa.float32(), dim))),
        }
    vecs = mixture(n * k, dim, seed, np.repeat(types, k))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    mask = pa.array(no_img)
    keys = pa.ListArray.from_arrays(offsets, pa.array([f"img/more-{seed}-{j}.jpg" for j in range(n * k)]), mask=mask)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    return {"more_image_keys": keys, "more_image_vectors": pa.ListArray.from_arrays(offsets, inner, mask=mask)}


def seed_events(client: LightClient, n_products: int, users: int = 2000, per_user: int = 10) -> None:
    rng = random.Random(7)
    types = ["view", "view", "click", "add_to_cart", "purchase"]
    now = time.time()
    batch = []
    for u in range(users):
        base = rng.randrange(n_products)
        for j in range(per_user):
            pid = (base + rng.randrange(200)) % n_products
            batch.append(
                {
                    "user_id": f"U{u}",
                    "product_id": f"B{pid:07d}",
                    "event_type": rng.choice(types),
                    "timestamp": now - 86400 * rng.random() * 30 + j,
                }
            )
    for s in range(0, len(batch), 5000):
        status, body = client.request("POST", "/events", batch[s : s + 5000])
        assert status == 202, body


def throughput(base: str, n_products: int, clients: int, seconds: float) -> dict[str, Any]:
    """Mixed traffic from ``clients`` threads for ``seconds``: 40% uncached text search, 10%
    repeated popular queries, 30% similar, 20% recommendations."""
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    lat: list[float] = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        c = LightClient(base, timeout=30)
        i = 0
        while time.monotonic() < stop:
            i += 1
            roll = rng.random()
            t = time.perf_counter()
            if roll < 0.4:
                status, _ = c.request("POST", "/search", {"query": f"{rng.choice(QUERIES)} {k}-{i}", "top_k": 10})
            elif roll < 0.5:
                status, _ = c.request("POST", "/search", {"query": rng.choice(QUERIES), "top_k": 10})
            elif roll < 0.8:
                status, _ = c.request("GET", f"/similar/B{rng.randrange(n_products):07d}?top_k=10")
            else:
                status, _ = c.request("GET", f"/recommendations/U{rng.randrange(2000)}?top_k=10")
            dt = (time.perf_counter() - t) * 1000
            with lock:
                counts["ok" if status == 200 else "errors"] += 1
                lat.append(dt)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    elapsed = time.perf_counter() - started
    total = counts["ok"] + counts["errors"]
    return {
        "requests": total,
        "req_per_s": round(total / elapsed, 1),
        "errors": counts["errors"],
        **percentiles(lat),
    }


def upload_to_searchable(settings: Any, client: LightClient, services: Services, tries: int = 20) -> list[float]:
    """Another writer (its own Catalog object, as an indexer function would be) commits a new
    product; time until the query process returns it as the top hit of its exact title."""
    writer = Catalog.from_settings(
        settings, clip_dim=services.catalog.clip_dim, text_dim=services.catalog.text_dim, space=services.catalog.space
    )
    out = []
    for k in range(tries):
        title = f"Zephyr quasar {k} limited edition {random.random():.6f}"
        vec = services.embedder.text.embed_texts([title])[0]
        now = datetime.now(UTC)
        pid = f"NEW{k}"
        p = Product(pid, title, "", "Footwear", 50.0, None, {}, now, now)
        writer.upsert([ProductRecord(p, None, vec, f"new{k}")])
        t = time.perf_counter()
        while True:
            r = client.request("POST", "/search", {"query": title, "top_k": 1})[1]["results"]
            if r and r[0]["product_id"] == pid:
                break
            if time.perf_counter() - t > 60:
                raise RuntimeError("new product not searchable after 60 s")
            time.sleep(0.05)
        out.append((time.perf_counter() - t) * 1000)
    return out


def exact_top10(services: Services, qi: np.ndarray, qt: np.ndarray, f: Filters) -> set[str]:
    """The exact answer: same candidate rule and fused score, every row scanned (no ANN)."""
    assert services.hot is not None and services.hot.snapshot is not None
    snap = services.hot.snapshot
    ref = HotSnapshot(**{**snap.__dict__, "ann_image": None, "ann_text": None})
    return {h.product.product_id for h in hot_ranked(services.hot, ref, qi, qt, W, 10, f)}


def in_distribution_queries(n: int = 50) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Query vectors drawn like the catalog's (the synthetic catalog's vectors are not in the
    random-init models' output space, so real-model queries are out of its distribution)."""
    types = np.random.default_rng(3).integers(0, CENTRES, n)
    return list(mixture(n, 384, 78, types // 2)), list(mixture(n, 512, 77, types))


def ann_recall(services: Services, q_txt: list[np.ndarray], q_img: list[np.ndarray]) -> dict[str, Any]:
    hot = services.hot
    assert hot is not None and hot.snapshot is not None
    snap = hot.snapshot
    out = {}
    d_txt, d_img = in_distribution_queries()
    for qname, (qts, qis) in (("real-model queries", (q_txt, q_img)), ("in-distribution queries", (d_txt, d_img))):
        for name, f in (("no filter", Filters()), ("category filter", Filters(categories=("Footwear",)))):
            hits = total = 0
            for qt, qi in zip(qts, qis, strict=True):
                got = {h.product.product_id for h in hot_ranked(hot, snap, qi, qt, W, 10, f)}
                want = exact_top10(services, qi, qt, f)
                hits += len(got & want)
                total += len(want)
            out[f"{qname}, {name}"] = round(hits / max(1, total), 4)
    return out


def runtime(encoder: object) -> str:
    return f"on {getattr(encoder, 'text_runtime', 'torch')}"


def chroma_baseline(
    services: Services, q_txt: list[np.ndarray], q_img: list[np.ndarray], embed_ms: float, ref_embed_ms: float
) -> list[dict[str, Any]]:
    """``embed_ms``: our query embedding; ``ref_embed_ms``: the same models run as the reference
    design runs them (PyTorch), added to the baseline's end-to-end time."""
    try:
        from bench.baseline_chroma import ChromaBaseline
    except ImportError as exc:  # chromadb not installed
        print(f"ChromaDB baseline skipped: {exc} (pip install -e '.[bench]')")
        return []
    snap = services.hot.snapshot if services.hot else None
    assert snap is not None
    ids = [p.product_id for p in snap.products]
    metas: list[dict[str, object]] = [{"category": p.category, "price": p.price} for p in snap.products]
    image = np.where(snap.has_image[:, None], snap.image, 0).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        base = ChromaBaseline(tmp)
        build_s = base.build(ids, image, snap.text, metas)
        hot = services.hot
        assert hot is not None
        ours, theirs, recall_hits, total = [], [], 0, 0
        ours_exact = chroma_exact = 0
        ours_f, theirs_f = [], []
        for qt, qi in zip(q_txt, q_img, strict=True):
            t = time.perf_counter()
            mine = [h.product.product_id for h in hot_ranked(hot, snap, qi, qt, W, 10)]
            ours.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            other = base.search(qi, qt, W.image, W.text, 10)
            theirs.append((time.perf_counter() - t) * 1000)
            recall_hits += len(set(mine) & set(other))
            truth = exact_top10(services, qi, qt, Filters())
            ours_exact += len(set(mine) & truth)
            chroma_exact += len(set(other) & truth)
            total += 10
            f = Filters(categories=("Footwear",), max_price=100.0)
            t = time.perf_counter()
            hot_ranked(hot, snap, qi, qt, W, 10, f)
            ours_f.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            base.search(qi, qt, W.image, W.text, 10, category="Footwear", max_price=100.0)
            theirs_f.append((time.perf_counter() - t) * 1000)
        sim_ours, sim_theirs = [], []
        for k in range(len(q_txt)):
            pid = ids[(k * 7919) % len(ids)]
            t = time.perf_counter()
            similar(services.catalog, pid, 10, W, hot=hot)
            sim_ours.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            base.similar(pid, 10)
            sim_theirs.append((time.perf_counter() - t) * 1000)

    def pair(name: str, a: list[float], b: list[float], extra_a: float = 0.0, extra_b: float = 0.0) -> dict[str, Any]:
        pa_, pb = statistics.median(a) + extra_a, statistics.median(b) + extra_b
        qa = statistics.quantiles(a, n=100)[94] + extra_a
        qb = statistics.quantiles(b, n=100)[94] + extra_b
        return {
            "operation": name,
            "ours_p50_ms": round(pa_, 2),
            "chroma_p50_ms": round(pb, 2),
            "ours_p95_ms": round(qa, 2),
            "chroma_p95_ms": round(qb, 2),
            "speedup_p50": round(pb / pa_, 1),
        }

    return [
        {"operation": "chroma build (2 collections)", "seconds": round(build_s, 1)},
        pair("store-only text+image-side query", ours, theirs),
        pair("store-only same + category/price filter", ours_f, theirs_f),
        pair("store-only similar", sim_ours, sim_theirs),
        pair("end-to-end text search (+ same query embedding)", ours, theirs, embed_ms, embed_ms),
        pair("end-to-end, own encoder runtime (ours ONNX, reference PyTorch)", ours, theirs, embed_ms, ref_embed_ms),
        {"operation": "top-10 overlap ours vs chroma", "overlap": round(recall_hits / max(1, total), 3)},
        {"operation": "recall@10 vs exact: ours", "overlap": round(ours_exact / max(1, total), 3)},
        {"operation": "recall@10 vs exact: chroma", "overlap": round(chroma_exact / max(1, total), 3)},
    ]


def recs_content_index(services: Services, users: int = 300) -> list[dict[str, Any]]:
    """Recommendations in this process (same catalog, the events the query process stored):
    the content signal through the PQ content index against the exact pass over all vectors,
    in-process latency of both and their top-10 agreement (unfiltered and with filters)."""
    recs = services.recommender
    recs.refresh()
    assert recs.snapshot.content_index is not None, "the catalog is under ANN_MIN_ROWS"
    shoes = Filters(categories=("Footwear",), max_price=100.0)
    served = recs.snapshot
    # The exact pass at its fastest (the transposed copy, which snapshots with an index skip).
    recs.snapshot = replace(served, vectors_t=np.ascontiguousarray(served.dense_vectors().T))
    got: dict[tuple[bool, bool], list[set[str]]] = {}
    lat: dict[tuple[bool, bool], list[float]] = {}
    for ann in (True, False):
        recs.ann_content = ann
        for filt in (False, True):
            ids, ms = [], []
            for u in range(users):
                t = time.perf_counter()
                result = recs.recommend(f"U{u}", 10, shoes if filt else Filters())
                ms.append((time.perf_counter() - t) * 1000)
                ids.append({r.product.product_id for r in result.items})
            got[ann, filt], lat[ann, filt] = ids, ms
    recs.ann_content = True
    recs.snapshot = served

    def agreement(filt: bool) -> float:
        pairs = zip(got[True, filt], got[False, filt], strict=True)
        return round(sum(len(a & b) for a, b in pairs) / max(1, sum(len(b) for b in got[False, filt])), 3)

    return [
        {"operation": "in-process recommendations, content via PQ index", **percentiles(lat[True, False])},
        {"operation": "in-process recommendations, exact content pass", **percentiles(lat[False, False])},
        {"operation": "in-process recommendations + filters, PQ index", **percentiles(lat[True, True])},
        {"operation": "in-process recommendations + filters, exact pass", **percentiles(lat[False, True])},
        {"operation": "recs top-10 agreement PQ index vs exact", "overlap": agreement(False)},
        {"operation": "recs top-10 agreement PQ index vs exact, filters", "overlap": agreement(True)},
    ]


def million(queries: list[tuple[np.ndarray, np.ndarray]], n: int = 1_000_000) -> list[dict[str, Any]]:
    """Store-only search over 1M products held in memory (built directly, no S3)."""
    gc.collect()
    before = current_rss_mb()
    t = time.perf_counter()
    cols = catalog_columns(n, seed=5)
    rows, types = cols["rows"], cols["types"]
    now = datetime.now(UTC)
    products = [column_product(rows, i, now) for i in range(n)]
    image = mixture(n, 512, 11, types)
    has_image = np.array([k is not None for k in rows["image_key"]])
    image[~has_image] = 0
    text = mixture(n, 384, 12, types // 2)
    snap = HotSnapshot(
        version=0,
        products=products,
        index={p.product_id: i for i, p in enumerate(products)},
        hashes={},
        alive=np.ones(n, dtype=bool),
        categories=CategoryCodes.of(rows["category"]),
        prices=np.array(rows["price"], dtype=np.float64),
        image=image,
        has_image=has_image,
        text=text,
    )
    built_arrays = time.perf_counter() - t

    hot = HotCatalog(None, ann_min_rows=20_000)  # type: ignore[arg-type]  # no catalog: snapshot built here
    d_txt, d_img = in_distribution_queries()
    t = time.perf_counter()
    snap = hot._with_ann(snap)
    ann_s = time.perf_counter() - t
    after = current_rss_mb()
    lat = []
    lat_f = []
    for qt, qi in queries:
        t0 = time.perf_counter()
        hot_ranked(hot, snap, qi, qt, W, 10)
        lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        hot_ranked(hot, snap, qi, qt, W, 10, Filters(categories=("Footwear",), max_price=100.0))
        lat_f.append((time.perf_counter() - t0) * 1000)
    exact = HotSnapshot(**{**snap.__dict__, "ann_image": None, "ann_text": None})
    hits = hits_d = 0
    for qt, qi in queries[:20]:
        got = {h.product.product_id for h in hot_ranked(hot, snap, qi, qt, W, 10)}
        want = {h.product.product_id for h in hot_ranked(hot, exact, qi, qt, W, 10)}
        hits += len(got & want)
    for qt, qi in list(zip(d_txt, d_img, strict=True))[:20]:
        got = {h.product.product_id for h in hot_ranked(hot, snap, qi, qt, W, 10)}
        want = {h.product.product_id for h in hot_ranked(hot, exact, qi, qt, W, 10)}
        hits_d += len(got & want)
    return [
        {"operation": "1M: store-only search", **percentiles(lat)},
        {"operation": "1M: store-only search + filters", **percentiles(lat_f)},
        {
            "operation": "1M: build / memory",
            "arrays_s": round(built_arrays, 1),
            "ann_build_s": round(ann_s, 1),
            "rss_added_mb": round(after - before),
            "recall@10_vs_exact": round(hits / 200, 3),
            "recall@10_in_distribution": round(hits_d / 200, 3),
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--million", action="store_true")
    ap.add_argument("--no-chroma", action="store_true")
    args = ap.parse_args()

    settings, s3 = s3_settings(
        own_process=True, clip_model="ViT-B-32", clip_pretrained="none", index_min_rows=10**9, recs_refresh_seconds=1.0
    )
    embedder = load_embedder(settings)
    services = Services.from_settings(settings, embedder=embedder)
    build_s, _ = build_catalog(services.catalog, args.products)
    meta: dict[str, Any] = {"products": args.products, "catalog_build_s": round(build_s, 1)}
    # The query process runs on its own (python -m bench.serve), as deployed: this process
    # (clients, recall and baseline computations) and the S3 server do not share its GIL.
    t = time.perf_counter()
    serve = ServeProcess(settings, fake_embedder=False)
    meta["query_process_start_s (models + hot catalog load)"] = round(time.perf_counter() - t, 1)
    assert services.hot is not None
    services.hot.refresh()  # this process's own copy, for recall and the baseline
    assert services.hot.snapshot is not None
    meta["ann_nlist"] = getattr(services.hot.snapshot.ann_text, "nlist", None)
    client = LightClient(serve.base, timeout=60)
    seed_events(client, args.products)
    while client.request("GET", "/recommendations/U0?top_k=1")[1]["strategy"] == "popular":
        time.sleep(0.2)  # the query process reads the seeded events on its next refresh
    photo = base64.b64encode(generate(1)[0].image).decode()
    counter = iter(range(10**9))
    out: list[dict[str, Any]] = []

    def ok(status: int, body: Any) -> None:
        assert status == 200, body

    def text_search() -> None:
        q = f"{QUERIES[next(counter) % len(QUERIES)]} {next(counter)}"  # new text: uncached
        ok(*client.request("POST", "/search", {"query": q, "top_k": 10, "weights": {"image": 0.7, "text": 0.3}}))

    def text_vector() -> None:
        q = f"{QUERIES[next(counter) % len(QUERIES)]} {next(counter)}"
        body = {"query": q, "top_k": 10, "weights": {"image": 0.7, "text": 0.3}, "mode": "vector"}
        ok(*client.request("POST", "/search", body))

    def filtered() -> None:
        body = {
            "query": f"{QUERIES[next(counter) % 8]} {next(counter)}",
            "top_k": 10,
            "weights": {"image": 0.7, "text": 0.3},
            "filters": {"category": "Footwear", "max_price": 100},
        }
        ok(*client.request("POST", "/search", body))

    def cached() -> None:
        ok(*client.request("POST", "/search", {"query": "blue running shoes", "top_k": 10}))

    def image_search() -> None:
        ok(*client.request("POST", "/search", {"image_base64": photo, "top_k": 10}))

    shoes = {"query": "blue running shoes", "top_k": 10, "filters": {"category": "Footwear"}}

    def category_cached() -> None:
        ok(*client.request("POST", "/search", shoes))

    def with_rules() -> None:  # the same request, three saved rules fire for it
        status, body = client.request("POST", "/search", shoes)
        ok(status, body)
        assert body["applied_rules"] == ["pin-shoes", "bury-shoes", "boost-blue"], body["applied_rules"]

    some = [f"B{i:07d}" for i in range(0, 80, 8)]
    three_rules = [
        {"id": "pin-shoes", "when": {"query": "Blue running shoes"}, "pin": some[:3]},
        {"id": "bury-shoes", "when": {"query": "blue running shoes"}, "bury": some[3:8]},
        {
            "id": "boost-blue",
            "when": {"category": "Footwear"},
            "boost": [{"filters": {"attributes": {"color": "blue"}}, "factor": 1.5}],
        },
    ]

    def rules_on() -> None:
        ok(*client.request("PUT", "/rules", {"rules": three_rules}))

    def rules_off() -> None:
        ok(*client.request("PUT", "/rules", {"rules": []}))

    def faceted() -> None:  # a shop's listing page: the query's vectors cached, facets, a sort, page 3
        body = {
            "query": QUERIES[next(counter) % len(QUERIES)],
            "top_k": 20,
            "offset": 40,
            "sort": "price_asc",
            "facets": ["category", "price", "attributes.color"],
        }
        ok(*client.request("POST", "/search", body))

    def typo() -> None:  # a misspelt query (cached vectors): the corrections of its words
        ok(*client.request("POST", "/search", {"query": "blue runing shoos", "top_k": 10, "mode": "keyword"}))

    prefixes = [q[:n] for q in QUERIES for n in (2, 4, 7, 10)] + ["snea", "runing", "blue r", "leathr b"]

    def suggest_() -> None:  # the search box while typing: a prefix of a query, or a typo in one
        ok(*client.request("GET", f"/suggest?q={urllib.parse.quote(prefixes[next(counter) % len(prefixes)])}&limit=10"))

    def similar_() -> None:
        ok(*client.request("GET", f"/similar/B{(next(counter) * 7919) % args.products:07d}?top_k=10"))

    def recs() -> None:
        ok(*client.request("GET", f"/recommendations/U{next(counter) % 2000}?top_k=10"))

    ops: list[tuple[str, Callable[[], None], int]] = [
        ("HTTP text search (uncached, incl. embedding; hybrid, the default)", text_search, args.queries),
        ("HTTP text search (uncached, mode vector)", text_vector, args.queries),
        ("HTTP text search + filters (uncached)", filtered, args.queries),
        ("HTTP text search (repeated query, cached)", cached, args.queries),
        ("HTTP text search + category (cached), no rules", category_cached, args.queries),
        ("  the same, 3 saved rules firing (3 pins, 5 burials, a boost)", with_rules, args.queries),
        ("HTTP image search (photo, incl. CLIP image)", image_search, max(20, args.queries // 10)),
        ("HTTP search + 3 facets + price sort, page 3 (cached vectors)", faceted, args.queries),
        ("HTTP keyword search with typos", typo, args.queries),
        ("HTTP suggest (search-box prefixes, some with a typo)", suggest_, args.queries),
        ("HTTP similar", similar_, args.queries),
        ("HTTP recommendations (known user)", recs, args.queries),
    ]
    for name, fn, n in ops:
        if fn is with_rules:
            rules_on()
        out.append({"operation": name, **percentiles(timed(fn, n))})
        if fn is with_rules:
            rules_off()
    clip_ms = percentiles(timed(lambda: embedder.clip.embed_texts([f"blue running shoes {next(counter)}"]), 50))
    minilm_ms = percentiles(timed(lambda: embedder.text.embed_texts([f"blue running shoes {next(counter)}"]), 50))
    out.append({"operation": f"  of which CLIP text encode ({runtime(embedder.clip)})", **clip_ms})
    out.append({"operation": f"  of which MiniLM encode ({runtime(embedder.text)})", **minilm_ms})
    # The same models on PyTorch, as the reference design runs them (and TEXT_RUNTIME=torch does).
    on_torch = load_embedder(settings.model_copy(update={"text_runtime": "torch"}))
    clip_torch = percentiles(timed(lambda: on_torch.clip.embed_texts([f"blue running shoes {next(counter)}"]), 50))
    minilm_torch = percentiles(timed(lambda: on_torch.text.embed_texts([f"blue running shoes {next(counter)}"]), 50))
    out.append({"operation": "  CLIP text encode on PyTorch (TEXT_RUNTIME=torch)", **clip_torch})
    out.append({"operation": "  MiniLM encode on PyTorch (TEXT_RUNTIME=torch)", **minilm_torch})
    # Recall and the baseline first: the upload test below adds products with real-model text
    # vectors, which real-model queries would find far closer than any synthetic one.
    q_txt = [embedder.text.embed_texts([f"{q} {i}"])[0] for i, q in enumerate(QUERIES * 13)][:100]
    q_img = [embedder.clip.embed_texts([f"{q} {i}"])[0] for i, q in enumerate(QUERIES * 13)][:100]
    meta["ann_recall@10_vs_exact"] = ann_recall(services, q_txt, q_img)
    out += recs_content_index(services)
    embed_ms = clip_ms["p50_ms"] + minilm_ms["p50_ms"]
    if not args.no_chroma:
        out += chroma_baseline(services, q_txt, q_img, embed_ms, clip_torch["p50_ms"] + minilm_torch["p50_ms"])
    tput = throughput(serve.base, args.products, args.clients, args.seconds)
    out.append({"operation": f"mixed traffic, {args.clients} clients, {args.seconds:.0f} s", **tput})
    ups = upload_to_searchable(settings, client, services)
    out.append({"operation": "upload-to-searchable (other writer -> top hit)", **percentiles(ups + ups[:1])})
    meta["peak_rss_mb_query_process"] = serve.stop()
    meta["peak_rss_mb_bench_process"] = round(rss_mb())
    s3.stop()
    if args.million:
        del services
        gc.collect()
        out += million(list(zip(q_txt, q_img, strict=True)))
        meta["peak_rss_mb_after_1M"] = round(rss_mb())
    report("query", out, meta)


if __name__ == "__main__":
    main()
