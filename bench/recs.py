"""Recommendation serving and training at scale: 10k products, 100k events, catalog on S3.

    python -m bench.recs --products 10000 --events 100000

Products carry synthetic vectors of the real dimensions (512 CLIP, 384 MiniLM) on the embedded S3
server; events are MovieLens-like ratings over those products (`local.synth_ratings`), sent with
`POST /events` in batches of 5,000 through a live uvicorn server. Then: training time
(`functions.jobs.train_recommender`, the body of `python -m local train`), model pickup, and
single-client latency of `GET /recommendations` (known users, filtered, cold start) and
`POST /recommendations` (more like these), plus the query process's peak RSS.
"""

from __future__ import annotations

import argparse
import random
import resource
import socket
import threading
import time

import httpx
import uvicorn

from bench.common import percentiles, report, s3_settings, timed
from bench.search import synthetic_catalog
from core.embedding.fake import fake_embedder
from functions.app import create_app
from functions.jobs import train_recommender
from functions.services import Services
from local.synth_ratings import SynthConfig, generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    settings, server = s3_settings(recs_refresh_seconds=1.0)
    # Query-side latency does not embed anything; the fake embedder has the real dimensions.
    services = Services.from_settings(settings, embedder=fake_embedder(clip_dim=512, text_dim=384))
    build_s = synthetic_catalog(services, args.products)
    users = max(100, args.events // 100)
    _, events = generate(SynthConfig(n_users=users, n_items=args.products, seed=11, mean_ratings_per_user=100.0))
    for e in events:  # map the generator's item ids onto the benchmark catalog's
        e["product_id"] = f"B{int(e['product_id'][1:]) % args.products:07d}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(services)
    userver = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=userver.run, daemon=True).start()
    while not userver.started:
        time.sleep(0.05)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    t = time.perf_counter()
    for i in range(0, len(events), 5000):
        r = client.post("/events", json=events[i : i + 5000])
        assert r.status_code == 202 and r.json()["rejected"] == 0, r.text
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = train_recommender(settings)
    train_s = time.perf_counter() - t
    assert rep is not None
    t = time.perf_counter()
    while client.get("/recommendations/x").json()["model"] != rep.key:
        time.sleep(0.1)
    pickup_s = time.perf_counter() - t
    user_ids = sorted({e["user_id"] for e in events})
    rng = random.Random(0)

    def known() -> None:
        r = client.get(f"/recommendations/{rng.choice(user_ids)}", params={"top_k": 10})
        assert r.status_code == 200 and r.json()["strategy"] == "personalized", r.text

    def filtered() -> None:
        r = client.get(
            f"/recommendations/{rng.choice(user_ids)}", params={"top_k": 10, "category": "Footwear", "max_price": 100}
        )
        assert r.status_code == 200, r.text

    def cold() -> None:
        r = client.get(f"/recommendations/new-{rng.random()}", params={"top_k": 10})
        assert r.status_code == 200 and r.json()["strategy"] == "popular", r.text

    def more_like() -> None:
        ids = [f"B{rng.randrange(args.products):07d}" for _ in range(3)]
        r = client.post("/recommendations", json={"positive": ids[:2], "negative": ids[2:], "top_k": 10})
        assert r.status_code == 200, r.text

    def event() -> None:
        r = client.post(
            "/events",
            json={
                "user_id": rng.choice(user_ids),
                "product_id": f"B{rng.randrange(args.products):07d}",
                "event_type": "click",
            },
        )
        assert r.status_code == 202, r.text

    rows = [
        {"operation": name, **percentiles(timed(fn, args.queries))}
        for name, fn in [
            ("GET /recommendations (known user)", known),
            ("GET /recommendations + filters", filtered),
            ("GET /recommendations (cold start)", cold),
            ("POST /recommendations (more like these)", more_like),
            ("POST /events (1 event)", event),
        ]
    ]
    userver.should_exit = True
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
            "model_pickup_s": round(pickup_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
    )
    print(
        f"catalog build {build_s:.1f} s; POST /events {len(events)} in {ingest_s:.1f} s; train {train_s:.1f} s; "
        f"model pickup {pickup_s:.1f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )


if __name__ == "__main__":
    main()
