"""Recommendation serving and training at scale: 10k products, 100k events, catalog on S3.

    python -m bench.recs --products 10000 --events 100000

Products carry synthetic vectors of the real dimensions (512 CLIP, 384 MiniLM) on the embedded S3
server; events are MovieLens-like ratings over those products (`local.synth_ratings`), sent with
`POST /events` in batches of 5,000 to the query process, which runs on its own
(`python -m bench.serve`), as does the S3 server; training runs in this process. Then: training time
(`functions.jobs.train_recommender`, the body of `python -m local train`), model pickup, and
single-client latency of `GET /recommendations` (known users, filtered, cold start) and
`POST /recommendations` (more like these), plus the peak RSS of the query process and of this
one (which trains). The events are shifted in time to end an hour before the run.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections.abc import Callable
from typing import Any

from bench.common import LightClient, ServeProcess, percentiles, report, s3_settings, timed
from bench.search import synthetic_catalog
from core.embedding.fake import fake_embedder
from functions.jobs import train_recommender
from functions.services import Services
from local.synth_ratings import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--rerank",
        choices=("auto", "always", "off"),
        default="auto",
        help="RECS_RERANK for the training run (always: time the query path with the reranker)",
    )
    args = ap.parse_args()
    settings, server = s3_settings(own_process=True, recs_refresh_seconds=1.0)
    # Query-side latency does not embed anything; the fake embedder has the real dimensions.
    services = Services.from_settings(settings, embedder=fake_embedder(clip_dim=512, text_dim=384))
    build_s = synthetic_catalog(services, args.products)
    users = max(100, args.events // 100)
    _, events = generate(SynthConfig(n_users=users, n_items=args.products, seed=11, mean_ratings_per_user=100.0))
    # The data ends an hour ago, as in a live shop: requests (as of now) see its trends.
    shift = int(time.time()) - 3600 - max(int(e["timestamp"]) for e in events)
    for e in events:  # map the generator's item ids onto the benchmark catalog's
        e["product_id"] = f"B{int(e['product_id'][1:]) % args.products:07d}"
        e["timestamp"] = int(e["timestamp"]) + shift
    # The query process runs on its own, as deployed: the load generator and the embedded S3
    # server (this process) do not share its GIL.
    serve = ServeProcess(settings, fake_embedder=True)
    client = LightClient(serve.base)
    t = time.perf_counter()
    for i in range(0, len(events), 5000):
        status, body = client.request("POST", "/events", events[i : i + 5000])
        assert status == 202 and body["rejected"] == 0, body
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = train_recommender(settings.model_copy(update={"recs_rerank": args.rerank}))
    train_s = time.perf_counter() - t
    assert rep is not None
    t = time.perf_counter()
    while client.request("GET", "/recommendations/x")[1]["model"] != rep.key:
        time.sleep(0.1)
    pickup_s = time.perf_counter() - t
    user_ids = sorted({e["user_id"] for e in events})
    rng = random.Random(0)

    def known() -> None:
        status, body = client.request("GET", f"/recommendations/{rng.choice(user_ids)}?top_k=10")
        assert status == 200 and body["strategy"] == "personalized", body

    def filtered() -> None:
        user = rng.choice(user_ids)
        status, body = client.request("GET", f"/recommendations/{user}?top_k=10&category=Footwear&max_price=100")
        assert status == 200, body

    def cold() -> None:
        status, body = client.request("GET", f"/recommendations/new-{rng.random()}?top_k=10")
        assert status == 200 and body["strategy"] == "popular", body

    def more_like() -> None:
        ids = [f"B{rng.randrange(args.products):07d}" for _ in range(3)]
        body = {"positive": ids[:2], "negative": ids[2:], "top_k": 10}
        status, answer = client.request("POST", "/recommendations", body)
        assert status == 200, answer

    def event() -> None:
        product = f"B{rng.randrange(args.products):07d}"
        one = {"user_id": rng.choice(user_ids), "product_id": product, "event_type": "click"}
        status, body = client.request("POST", "/events", one)
        assert status == 202, body

    def runs(fn: Callable[[], None], n: int, rounds: int) -> dict[str, Any]:
        """``--runs`` rounds of ``n`` requests: percentiles over all, and each round's p50 (this
        shared VM's run-to-run spread is large)."""
        samples = [timed(fn, n) for _ in range(rounds)]
        merged = [x for s in samples for x in s]
        return {**percentiles(merged), "p50_per_run": [percentiles(s)["p50_ms"] for s in samples]}

    rows = [
        {"operation": name, **runs(fn, args.queries, 1 if name.startswith("POST /events") else args.runs)}
        for name, fn in [
            ("GET /recommendations (known user)", known),
            ("GET /recommendations + filters", filtered),
            ("GET /recommendations (cold start)", cold),
            ("POST /recommendations (more like these)", more_like),
            ("POST /events (1 event)", event),
        ]
    ]
    peak_rss = serve.stop()
    server.stop()
    report(
        "recs",
        rows,
        {
            "products": args.products,
            "events": len(events),
            "users": len(user_ids),
            "catalog_build_s": round(build_s, 1),
            "post_events_s": round(ingest_s, 1),
            "events_per_s": round(len(events) / ingest_s),
            "train_s": round(train_s, 1),
            "train_params": rep.model.params.describe(),
            "rerank_mode": args.rerank,
            "reranker": rep.model.reranker is not None,
            "rerank_check": rep.model.info.get("rerank_check"),
            "model_pickup_s": round(pickup_s, 1),
            "query_process_peak_rss_mb": peak_rss,
            "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
    )
    print(
        f"catalog build {build_s:.1f} s; POST /events {len(events)} in {ingest_s:.1f} s; train {train_s:.1f} s; "
        f"model pickup {pickup_s:.1f} s; query process peak RSS {peak_rss} MB"
    )
    print(rep.summary())


if __name__ == "__main__":
    main()
