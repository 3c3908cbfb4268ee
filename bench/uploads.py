"""Upload triggers: upload-to-searchable latency and JSONL ingest throughput.

    python -m bench.uploads --uploads 20 --jsonl 1000

Latency: PUT an image + product JSON under uploads/, then poll POST /search (the title as query)
until the product is in the top 5. Measured for the push path (a notification is POSTed right
after the PUT, as MinIO/EventBridge would) and for the sweeper-only path (1 s sweep interval).
Throughput: one JSONL of N products (with images) through the trigger, and the same data through
the batch indexer (bucket prefix), each into a fresh catalog. Models: ViT-B-32 (random init; same
compute as real weights) + MiniLM.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

import httpx
import uvicorn

from bench.common import percentiles, report, s3_settings
from core.embedding import load_embedder
from core.ingest import iter_bucket_prefix
from functions.app import create_app
from functions.services import Services
from functions.upload_worker import UploadWorker
from local.sample import generate


def serve(services: Services, worker: UploadWorker) -> tuple[httpx.Client, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(services, worker), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60), server


def latency(mode: str, n: int) -> list[float]:
    settings, s3 = s3_settings(clip_model="ViT-B-32", clip_pretrained="none", catalog_refresh_seconds=0)
    services = Services.from_settings(settings, embedder=load_embedder(settings))
    worker = UploadWorker(services.uploads, sweep_seconds=1.0 if mode == "sweeper" else 0.0)
    client, server = serve(services, worker)
    products = generate(n + 1, seed=7)
    out: list[float] = []
    for p in products[1:]:
        pid = str(p.record["product_id"])
        rec = dict(p.record, image=f"uploads/images/{pid}.jpg")
        key = f"uploads/{pid}.json"
        t0 = time.perf_counter()
        services.store.put_bytes(rec["image"], p.image, "image/jpeg")
        services.store.put_bytes(key, json.dumps(rec).encode(), "application/json")
        if mode == "webhook":
            ev = {
                "Records": [
                    {
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": settings.s3_bucket}, "object": {"key": key}},
                    }
                ]
            }
            assert client.post("/triggers/s3", json=ev).status_code == 202
        while True:
            hits = client.post("/search", json={"query": rec["title"], "top_k": 5}).json()["results"]
            if any(h["product_id"] == pid for h in hits):
                break
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"{pid} not searchable after 60 s")
            time.sleep(0.05)
        out.append((time.perf_counter() - t0) * 1000)
    server.should_exit = True
    worker.stop()
    s3.stop()
    return out


def throughput(n: int) -> tuple[float, float]:
    products = generate(n, seed=11)
    rates = []
    for path in ("trigger", "batch"):
        settings, s3 = s3_settings(clip_model="ViT-B-32", clip_pretrained="none")
        services = Services.from_settings(settings, embedder=load_embedder(settings))
        for p in products:
            services.store.put_bytes("uploads/" + p.image_name, p.image, "image/jpeg")
        body = "".join(json.dumps(dict(p.record, image="uploads/" + p.image_name)) + "\n" for p in products)
        services.store.put_bytes("uploads/catalog.jsonl", body.encode())
        t0 = time.perf_counter()
        if path == "trigger":
            rec = services.uploads.process("uploads/catalog.jsonl")
            assert rec is not None and rec.records_indexed == n, rec
        else:
            rep = services.indexer.index(iter_bucket_prefix(services.store, "uploads/catalog.jsonl", settings))
            assert rep.indexed == n
        rates.append(n / (time.perf_counter() - t0))
        s3.stop()
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--jsonl", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    for mode in ("webhook", "sweeper"):
        rows.append({"measure": f"upload-to-searchable, {mode} path", **percentiles(latency(mode, args.uploads))})
    if args.jsonl:
        trig, batch = throughput(args.jsonl)
        rows.append({"measure": f"{args.jsonl}-line JSONL via trigger", "products_per_s": round(trig, 1)})
        rows.append({"measure": "same data via batch indexer", "products_per_s": round(batch, 1)})
    report("uploads", rows, {"uploads": args.uploads, "jsonl": args.jsonl})


if __name__ == "__main__":
    main()
