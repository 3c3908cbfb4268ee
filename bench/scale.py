"""Scale: a synthetic shop at 100k products x 1M events (and 1M x 10M) through the production code.

    python -m bench.scale --products 100000 --events 1000000
    python -m bench.scale --products 1000000 --events 10000000 --storage file
    python -m bench.scale --import-products 20000 --products 0     # the real text model via uploads/

Each stage runs in a fresh process (spawned); its time and peak memory (the larger of RSS polled
every 0.1 s and the kernel's high-water mark) are printed and saved to
``bench/results/scale-<stamp>.json``:

1. **catalog**: products with vectors at the real dimensions (512 CLIP, 384 MiniLM; a mixture
   around 300 product types, as ``bench.query`` draws them), stored by ``Catalog.upsert`` in groups
   of ``INGEST_COMMIT_ROWS`` (the indexer's commits), then ``ensure_indexes``.
2. **events**: events with popularity skew (Zipf within each product type), user tastes (each user
   favours one to three types), activity skew (log-normal events per user) and time (180 days
   ending an hour ago; a product's events start at its release), stored by ``EventLog.append`` in
   batches of 10,000 (the path of ``POST /events``).
3. **train**: ``functions.jobs.train_recommender`` (the body of ``local train``), with
   ``RECS_TRAIN_MEMORY_GB`` and ``RECS_MAX_ITEMS`` at their defaults: the model, then the
   start-up file for query processes (timed apart).
4. **query**: a query process as the API builds it (fake embedder at the real dimensions: nothing
   here embeds), from the start-up file when there is one: seconds until ready (hot catalog with
   its ANN indexes, events, model, compiled recommender), its memory, known-user recommendation
   latency and store-only text search latency (a query vector against the hot catalog).
5. **import** (``--import-products``): text-only products as 10,000-line ``uploads/*.jsonl`` files
   through the upload processor with the real MiniLM: products/s per commit group, the first
   groups against the last, and the time spent embedding against the rest.

``--storage s3`` (default) keeps the dataset on the embedded S3 server (moto, its own process);
``--storage file`` puts it in a local directory, for sizes whose data would not fit that server's
memory here (its objects live in RAM), and keeps the bucket (models) on S3.

``--keep DIR`` (with ``--storage file``) leaves the dataset, the trained model and the start-up
file in ``DIR``; ``--reuse DIR`` runs only the query stage on them (the model and the file are
copied into a fresh bucket; ``--cold`` leaves the file out, ``--write-startup-file`` writes one
anew from the dataset in a stage of its own), so serving can be measured again without building
and training anew.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import percentiles, report, s3_settings
from core.settings import Settings
from core.startup import PREFIX as STARTUP_PREFIX
from core.storage import ObjectStore
from local.runtime import run_watched

DAY = 86400.0
SPAN_DAYS = 180
PRODUCT_TYPES = 300
EVENT_BATCH = 10_000
MB = 1 << 20


# ---- running a stage in its own process ------------------------------------------------------
def _with_maxrss(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    out = fn(*args)
    out["_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_stage(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a spawned process: its result, seconds and peak memory."""
    t = time.perf_counter()
    w = run_watched(_with_maxrss, fn, *args, name=f"scale-{name}")
    seconds = time.perf_counter() - t
    if w.reply is None:
        raise RuntimeError(f"stage {name} died: it {w.death()} at {w.peak_bytes / MB:.0f} MB")
    status, out = w.reply
    if status != "ok":
        raise RuntimeError(f"stage {name} failed: {out}")
    peak_mb = max(w.peak_bytes / MB, out.pop("_maxrss_mb"))
    row = {"stage": name, "seconds": round(seconds, 1), "peak_mb": round(peak_mb), **out}
    print(json.dumps(row), flush=True)
    return row


# ---- the stages --------------------------------------------------------------------------------
def _services(settings: Settings) -> Any:
    from core.embedding.fake import fake_embedder
    from functions.services import Services

    return Services.from_settings(settings, embedder=fake_embedder(clip_dim=512, text_dim=384))


def stage_catalog(settings: Settings, n: int) -> dict[str, Any]:
    from bench.query import catalog_columns, column_product, mixture
    from core.catalog import ProductRecord

    services = _services(settings)
    cols = catalog_columns(n, seed=5)
    rows, types = cols["rows"], cols["types"]
    step = settings.ingest_commit_rows
    start = datetime.now(UTC)
    t = time.perf_counter()
    rates = []
    for s in range(0, n, step):
        e = min(n, s + step)
        image = mixture(e - s, 512, 11 + s, types[s:e])
        text = mixture(e - s, 384, 12 + s, types[s:e] // 2)
        records = []
        for j, i in enumerate(range(s, e)):
            has_image = rows["image_key"][i] is not None
            p = column_product(rows, i, start)
            records.append(ProductRecord(p, image[j] if has_image else None, text[j], content_hash=str(i)))
        g = time.perf_counter()
        services.catalog.upsert(records)
        rates.append((e - s) / (time.perf_counter() - g))
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    created = services.catalog.ensure_indexes()
    k = max(1, len(rates) // 10)
    uri = settings.resolved_catalog_uri
    disk = sum(f.stat().st_size for f in Path(uri).rglob("*") if f.is_file()) if "://" not in uri else None
    return {
        "products": services.catalog.count(),
        "dataset_gb": None if disk is None else round(disk / (1 << 30), 2),
        "write_s": round(write_s, 1),
        "indexes_s": round(time.perf_counter() - t, 1),
        "indexes": ",".join(created),
        "commit_rate_first_tenth": round(float(np.mean(rates[:k]))),
        "commit_rate_last_tenth": round(float(np.mean(rates[-k:]))),
    }


def synthetic_events(n_products: int, n_events: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of ``n_events`` events (see the module docstring), ending an hour before now."""
    from bench.query import catalog_columns

    rng = np.random.default_rng(seed)
    types = catalog_columns(n_products, seed=5)["types"] if n_products else np.zeros(0, np.int64)
    n_users = max(100, n_events // 50)
    # Activity skew: events per user, log-normal, scaled to the total.
    activity = rng.lognormal(0.0, 1.0, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_events)).astype(np.int64)
    user = np.repeat(np.arange(n_users), per_user)[:n_events]
    n_events = len(user)
    # Tastes: one to three favourite product types per user; 80% of events follow them.
    favourites = rng.integers(0, PRODUCT_TYPES, (n_users, 3))
    n_fav = rng.integers(1, 4, n_users)
    pick = (rng.random(n_events) * n_fav[user]).astype(np.int64)
    etype_of = favourites[user, pick]
    wander = rng.random(n_events) < 0.2
    etype_of[wander] = rng.integers(0, PRODUCT_TYPES, int(wander.sum()))
    # Popularity skew: Zipf(1.1) over each type's products, in a random order.
    item = np.empty(n_events, dtype=np.int64)
    by_type = [np.flatnonzero(types == k) for k in range(PRODUCT_TYPES)]
    for k in range(PRODUCT_TYPES):
        where = np.flatnonzero(etype_of == k)
        members = by_type[k] if len(by_type[k]) else np.arange(n_products)
        weights = 1.0 / np.arange(1, len(members) + 1) ** 1.1
        cdf = np.cumsum(rng.permutation(weights))
        item[where] = members[np.minimum(np.searchsorted(cdf, rng.random(len(where)) * cdf[-1]), len(members) - 1)]
    # Time: products are released over the year before the window and through it; a product's
    # events fall between its release and the end.
    end = time.time() - 3600
    start = end - SPAN_DAYS * DAY
    release = start + rng.uniform(-365, SPAN_DAYS - 7, n_products) * DAY
    lo = np.maximum(start, release[item])
    ts = lo + rng.random(n_events) * (end - lo)
    kind = rng.choice(4, n_events, p=[0.7, 0.1, 0.1, 0.1])  # view, add_to_cart, purchase, rating
    stars = rng.choice([1, 2, 3, 4, 5], n_events, p=[0.05, 0.1, 0.2, 0.35, 0.3]).astype(np.float64)
    return {"user": user, "item": item, "ts": ts, "kind": kind, "stars": stars}


def stage_events(settings: Settings, n_products: int, n_events: int) -> dict[str, Any]:
    from core.events import Event, EventLog

    log = EventLog.open(settings)
    cols = synthetic_events(n_products, n_events)
    kinds = ("view", "add_to_cart", "purchase", "rating")
    t = time.perf_counter()
    n = len(cols["user"])
    for s in range(0, n, EVENT_BATCH):
        e = min(n, s + EVENT_BATCH)
        batch = [
            Event(
                f"u{u}",
                f"B{i:07d}",
                kinds[k],  # type: ignore[arg-type]
                datetime.fromtimestamp(ts, UTC),
                st if k == 3 else None,
                f"e{j}",
            )
            for j, u, i, k, ts, st in zip(
                range(s, e),
                cols["user"][s:e].tolist(),
                cols["item"][s:e].tolist(),
                cols["kind"][s:e].tolist(),
                cols["ts"][s:e].tolist(),
                cols["stars"][s:e].tolist(),
                strict=True,
            )
        ]
        log.append(batch)
    return {
        "events": log.count(),
        "users": len(np.unique(cols["user"])),
        "append_s": round(time.perf_counter() - t, 1),
    }


def stage_train(settings: Settings) -> dict[str, Any]:
    from functions.jobs import train_recommender

    t = time.perf_counter()
    rep = train_recommender(settings)
    assert rep is not None
    info = rep.model.info
    return {
        "train_s": round(rep.seconds, 1),
        "startup_file_s": round(time.perf_counter() - t - rep.seconds, 1),
        "startup_file": rep.startup_file,
        "params": rep.model.params.describe(),
        "model_items": len(rep.model.items),
        "events_used": rep.events,
        "tune_s": round(info.get("tune_seconds", 0.0), 1),
        "tune_factor_s": round(info.get("tune_factor_seconds", 0.0), 1),
        "factor_s": round(info.get("factor_seconds", 0.0), 1),
        "fit_s": round(info.get("train_seconds", 0.0) - info.get("tune_seconds", 0.0), 1),
        "summary": rep.summary(),
    }


def stage_startup(settings: Settings) -> dict[str, Any]:
    from functions.jobs import write_startup_file

    t = time.perf_counter()
    written = write_startup_file(settings.model_copy(update={"startup_file_min_products": 0}))
    return {"startup_file": written, "write_s": round(time.perf_counter() - t, 1)}


def stage_query(settings: Settings, queries: int) -> dict[str, Any]:
    from bench.query import mixture
    from core.search import hot_ranked
    from core.types import Weights

    t = time.perf_counter()
    services = _services(settings)
    hot = services.hot
    assert hot is not None
    startup_file = services.load_startup_file()
    hot.refresh()
    hot_s = time.perf_counter() - t
    rec = services.recommender
    rec.refresh()
    ready_s = time.perf_counter() - t
    rss_ready = psutil.Process().memory_info().rss / MB
    peak_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the recall check's reads
    _, users = rec.state.users(100_000)
    ids = [u for u, _n, _t in users]
    rng = random.Random(0)
    rec_ms = []
    for _ in range(queries):
        u = rng.choice(ids)
        q = time.perf_counter()
        out = rec.recommend(u, 10)
        rec_ms.append((time.perf_counter() - q) * 1000)
        assert out.strategy == "personalized" and out.items, out.strategy
    snap = hot.snapshot
    assert snap is not None
    types = np.random.default_rng(7).integers(0, PRODUCT_TYPES, queries)
    q_txt = mixture(queries, 384, 99, types // 2)
    search_ms = []
    w = Weights(0.0, 1.0)  # a text query: its text vector against both modalities' fused score
    for k in range(queries):
        q = time.perf_counter()
        hits = hot_ranked(hot, snap, None, q_txt[k], w, 10)
        search_ms.append((time.perf_counter() - q) * 1000)
        assert hits
    # Recall@10 of the served search (ANN over the hot copy, float16 above ANN_MIN_ROWS) against
    # an exact float32 scan of the stored text vectors (after the memory reading above).
    _, stored = services.catalog.scan(["product_id", "text_vector"])
    ids = np.asarray(stored.column("product_id").to_pylist(), dtype=object)
    exact = stored.column("text_vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
    hits = 0
    checked = min(queries, 50)
    for k in range(checked):
        want = set(ids[np.argpartition(-(exact @ q_txt[k]), 10)[:10]])
        got = {h.product.product_id for h in hot_ranked(hot, snap, None, q_txt[k], w, 10)}
        hits += len(got & want)
    recs = percentiles(rec_ms)
    found = percentiles(search_ms)
    return {
        "startup_file": startup_file,
        "hot_catalog_s": round(hot_s, 1),
        "recommender_s": round(ready_s - hot_s, 1),
        "ready_s": round(ready_s, 1),
        "rss_ready_mb": round(rss_ready),
        "peak_ready_mb": round(peak_ready),
        "events_held": len(rec.state),
        "event_state_mb": round(rec.state.nbytes() / MB),
        "bytes_per_event": round(rec.state.nbytes() / max(len(rec.state), 1), 1),
        "model": rec.model_key,
        "recs_p50_ms": recs["p50_ms"],
        "recs_p95_ms": recs["p95_ms"],
        "search_p50_ms": found["p50_ms"],
        "search_p95_ms": found["p95_ms"],
        "search_recall@10": round(hits / (10 * checked), 3),
    }


def stage_import(settings: Settings, n: int) -> dict[str, Any]:
    from core.embedding import load_embedder
    from functions.services import Services
    from local.sample import generate

    settings = settings.model_copy(update={"clip_model": "ViT-B-32", "clip_pretrained": "none"})
    services = Services.from_settings(settings, embedder=load_embedder(settings))
    per_file = 10_000
    products = generate(n, text_only_every=1)
    for f in range(0, n, per_file):
        body = "".join(
            json.dumps({**p.record, "product_id": f"T{f + j:07d}"}) + "\n"
            for j, p in enumerate(products[f : f + per_file])
        )
        services.store.put_bytes(f"uploads/part-{f // per_file:03d}.jsonl", body.encode())
    # Time per commit group and, inside, the embedding: the rest is reading, hashing and committing.
    indexer = services.indexer
    groups: list[tuple[int, float]] = []
    embed_s = [0.0]
    text = services.embedder.text
    plain_embed = text.embed_texts

    def timed_embed(texts: list[str]) -> Any:
        q = time.perf_counter()
        out = plain_embed(texts)
        embed_s[0] += time.perf_counter() - q
        return out

    text.embed_texts = timed_embed  # type: ignore[method-assign,assignment]
    plain_group = indexer._index_group

    def timed_group(group: Any, *args: Any) -> None:
        q = time.perf_counter()
        plain_group(group, *args)
        groups.append((len(group), time.perf_counter() - q))

    indexer._index_group = timed_group  # type: ignore[method-assign,assignment]
    t = time.perf_counter()
    for f in range(0, n, per_file):
        rec = services.uploads.process(f"uploads/part-{f // per_file:03d}.jsonl")
        assert rec is not None and rec.status == "indexed", rec
    total_s = time.perf_counter() - t
    k = max(1, len(groups) // 10)
    first = sum(c for c, _ in groups[:k]) / sum(s for _, s in groups[:k])
    last = sum(c for c, _ in groups[-k:]) / sum(s for _, s in groups[-k:])
    return {
        "products": services.catalog.count(),
        "import_s": round(total_s, 1),
        "products_per_s": round(n / total_s, 1),
        "rate_first_tenth": round(first, 1),
        "rate_last_tenth": round(last, 1),
        "last_vs_first": round(last / first, 3),
        "embedding_share": round(embed_s[0] / total_s, 3),
        "catalog_versions": services.catalog.version,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--storage", choices=("s3", "file"), default="s3")
    ap.add_argument("--import-products", type=int, default=0, help="also import this many via uploads/")
    ap.add_argument(
        "--retention-hours",
        type=float,
        default=0.02,
        help="VERSION_RETENTION_HOURS: a bulk load's compactions leave superseded files until then",
    )
    ap.add_argument("--keep", type=Path, help="keep the dataset and model in this folder (--storage file)")
    ap.add_argument("--reuse", type=Path, help="only the query stage, on a folder left by --keep")
    ap.add_argument(
        "--cold", action="store_true", help="with --reuse: start the query process without the start-up file"
    )
    ap.add_argument(
        "--write-startup-file", action="store_true", help="with --reuse: write a start-up file from scratch first"
    )
    args = ap.parse_args()
    if args.reuse:
        args.storage, saved = "file", json.loads((args.reuse / "run.json").read_text())
        args.products, args.events = saved["products"], saved["events"]
    if args.keep and args.storage != "file":
        ap.error("--keep needs --storage file")
    settings, server = s3_settings(own_process=True, version_retention_hours=args.retention_hours)
    tmp = tempfile.TemporaryDirectory(prefix="scale-")
    folder = args.reuse or args.keep or Path(tmp.name)
    if args.storage == "file":
        settings = settings.model_copy(update={"catalog_uri": str(folder / "catalog")})
    store = ObjectStore(settings)
    rows = []
    try:
        if args.reuse:
            kept = [*(args.reuse / "models").rglob("*"), *(args.reuse / STARTUP_PREFIX).rglob("*")]
            for f in sorted(kept):
                if f.is_file() and not (args.cold and f.is_relative_to(args.reuse / STARTUP_PREFIX)):
                    store.put_bytes(f.relative_to(args.reuse).as_posix(), f.read_bytes())
            if args.write_startup_file:
                for o in list(store.list(STARTUP_PREFIX)):
                    store.delete(o.key)
                rows.append(run_stage("startup", stage_startup, settings))
            rows.append(run_stage("query", stage_query, settings, args.queries))
        elif args.products:
            rows.append(run_stage("catalog", stage_catalog, settings, args.products))
            if args.events:
                rows.append(run_stage("events", stage_events, settings, args.products, args.events))
                rows.append(run_stage("train", stage_train, settings))
                if args.keep:
                    for key in (o.key for prefix in ("models/", STARTUP_PREFIX) for o in store.list(prefix)):
                        (args.keep / key).parent.mkdir(parents=True, exist_ok=True)
                        (args.keep / key).write_bytes(store.get_bytes(key))
                    run = {"products": args.products, "events": args.events}
                    (args.keep / "run.json").write_text(json.dumps(run))
                rows.append(run_stage("query", stage_query, settings, args.queries))
        if args.import_products:
            fresh, server2 = s3_settings(own_process=True)
            try:
                rows.append(run_stage("import", stage_import, fresh, args.import_products))
            finally:
                server2.stop()
    finally:
        server.stop()
        tmp.cleanup()
    for r in rows:
        r.pop("summary", None)
    report(
        "scale",
        rows,
        {
            "products": args.products,
            "events": args.events,
            "storage": args.storage,
            "retention_hours": args.retention_hours,
            "cpus": psutil.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
