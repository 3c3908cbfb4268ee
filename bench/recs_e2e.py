"""Recommendation quality through the public path, the way an outside checker measures it.

    python -m bench.recs_e2e --seed 7

1. Start the dev runner (`python -m local serve`, embedded S3, its own data dir) as a subprocess.
2. Generate MovieLens-like data (`local.synth_ratings`, a seed we never tuned on) and split it with
   code independent of ours: by default at one time cutoff T (the 80% quantile of rating times;
   ratings before T train; each user with ratings before T is judged on the products rated >= 4
   after T), or per user (`--split user`: each user's last 20% held out).
3. Import the products with `PUT /products` and the training ratings with `POST /events`.
4. Run `python -m local train` as its own process (it returns once the server serves the new model;
   the first request after it records whether that held).
5. `GET /recommendations/{user}?top_k=10` for every judged user, as of T (`as_of`; with `--split
   user`, now); NDCG@10 / recall@10, plus request latency. The numbers land in bench/results/.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.common import percentiles, report
from local.synth_ratings import SynthConfig, generate


def global_split(events: list[dict], test_fraction: float = 0.2) -> tuple[list[dict], dict[str, set[str]], float]:
    """One cutoff T for everyone: the rating time at the (1 - test_fraction) quantile (the lower
    one); ratings before T train, each user's ratings >= 4 from T on of products they had not
    rated before T are what they should get."""
    times = sorted(e["timestamp"] for e in events)
    cutoff = times[int((1.0 - test_fraction) * (len(times) - 1))]
    train = [e for e in events if e["timestamp"] < cutoff]
    had: dict[str, set[str]] = defaultdict(set)
    for e in train:
        had[e["user_id"]].add(e["product_id"])
    positives: dict[str, set[str]] = defaultdict(set)
    for e in events:
        user = e["user_id"]
        if e["timestamp"] >= cutoff and e["value"] >= 4 and user in had and e["product_id"] not in had[user]:
            positives[user].add(e["product_id"])
    return train, dict(positives), float(cutoff)


def split(events: list[dict], test_fraction: float = 0.2) -> tuple[list[dict], dict[str, set[str]]]:
    """Per user, sorted by timestamp (stable): first 80% train, the rest held out."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    train: list[dict] = []
    positives: dict[str, set[str]] = {}
    for user, rows in by_user.items():
        rows.sort(key=lambda e: e["timestamp"])
        n_test = max(1, round(len(rows) * test_fraction)) if len(rows) >= 2 else 0
        train += rows[: len(rows) - n_test]
        pos = {e["product_id"] for e in rows[len(rows) - n_test :] if e["value"] >= 4}
        if pos:
            positives[user] = pos
    return train, positives


def ndcg_recall(recommended: list[str], relevant: set[str], k: int = 10) -> tuple[float, float, float]:
    hits = [1.0 if p in relevant else 0.0 for p in recommended[:k]]
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / idcg, sum(hits) / len(relevant), sum(hits) / min(len(relevant), k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000, help="events per POST /events")
    ap.add_argument("--split", choices=["global", "user"], default="global")
    args = ap.parse_args()

    products, events = generate(SynthConfig(n_users=args.users, n_items=args.items, seed=args.seed))
    as_of: float | None = None
    if args.split == "global":
        train, positives, as_of = global_split(events)
    else:
        train, positives = split(events)
    query = {"top_k": 10, **({"as_of": as_of} if as_of is not None else {})}
    data_dir = Path(tempfile.mkdtemp(prefix="recs-e2e-"))
    port = free_port()
    env = {**os.environ, "CLIP_PRETRAINED": "none", "RECS_TRAIN_MINUTES": "0"}
    cmd = [sys.executable, "-m", "local", "--data-dir", str(data_dir), "serve", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    timings: dict[str, float] = {}
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            deadline = time.time() + 300
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("dev server did not start")
                time.sleep(1)
            t0 = time.perf_counter()
            for p in products:
                body = {k: v for k, v in p.items() if k != "product_id"}
                r = http.put(f"/products/{p['product_id']}", json=body)
                r.raise_for_status()
            timings["put_products_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            for i in range(0, len(train), args.batch):
                r = http.post("/events", json=train[i : i + args.batch])
                r.raise_for_status()
                assert r.json()["rejected"] == 0, r.json()
            timings["post_events_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "local", "--data-dir", str(data_dir), "train"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            timings["train_process_s"] = round(time.perf_counter() - t0, 1)
            print(out.stdout.strip())
            # `local train` returns once this server serves the new model (it announces itself in
            # the data dir): a client that queries right after the command gets the trained model.
            timings["served_when_train_returned"] = http.get("/recommendations/x").json().get("model") is not None
            t0 = time.perf_counter()
            while http.get("/recommendations/x").json().get("model") is None:
                if time.perf_counter() - t0 > 60:
                    raise SystemExit("model never picked up")
                time.sleep(0.2)
            timings["model_pickup_s"] = round(time.perf_counter() - t0, 1)
            scores, latencies, strategies = [], [], defaultdict(int)
            for user, relevant in positives.items():
                t = time.perf_counter()
                r = http.get(f"/recommendations/{user}", params=query)
                latencies.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                strategies[body["strategy"]] += 1
                scores.append(ndcg_recall([x["product_id"] for x in body["recommendations"]], relevant))
    finally:
        server.terminate()
        server.wait(timeout=60)
    n = len(scores)
    row = {
        "users": n,
        "ndcg@10": round(sum(s[0] for s in scores) / n, 4),
        "recall@10": round(sum(s[1] for s in scores) / n, 4),
        "recall@10_capped": round(sum(s[2] for s in scores) / n, 4),
        **{f"get_{k}": v for k, v in percentiles(latencies).items() if k != "n"},
        **timings,
        "strategies": dict(strategies),
    }
    report(
        "recs_e2e",
        [row],
        {
            "seed": args.seed,
            "split": args.split,
            "as_of": as_of,
            "products": len(products),
            "train_events": len(train),
            "held_out_users": n,
        },
    )


if __name__ == "__main__":
    main()
