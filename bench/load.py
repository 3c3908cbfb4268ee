"""Loopback load and soak: the rate of mixed traffic one query process sustains, then a soak at a
multiple of that rate (open-loop arrivals, so overload shows up as shed load, not as a slower
client).

    python -m bench.load                        # starts a dev runner (sample 200, ViT-B-32 random-init)
    python -m bench.load --url http://127.0.0.1:8000 --pid 1234
    python -m bench.load --sweep                # throughput per client count, core-ms per route
    python -m bench.load --sustained 8          # mixed traffic, 8 windows of 30 s on one server

Mix: text search 40 % (every query text new: uncached), similar 20 %, recommendations 30 %,
event batches (5 events) 10 %.
Phase 1: ``--clients`` closed-loop clients for ``--capacity-seconds`` -> sustained 2xx/s.
Phase 2: arrivals at ``--factor`` x that rate for ``--seconds`` (60): answers by status class,
latency percentiles, and the server's RSS at start and end (from /proc, when its pid is known).

``--sustained N`` runs N consecutive windows of mixed traffic (``--clients`` closed-loop clients,
``--window-seconds`` each) on one server: whether its rate holds while events keep being written
(each event batch is a commit, so the dataset's versions and files keep growing).

``--sweep`` instead measures, closed loop for ``--sweep-seconds`` each, 1/4/8/16/32 clients of:
uncached text search, the mix, and search by photo (requests/s, p50/p95/p99, errors, and the
query-encode batch sizes the server ran, from ``/metrics``); then the server's CPU time per
request (core-ms, from /proc) for cached search, similar, recommendations, event batches and
uncached search. ``--workloads mixed`` runs only the mix (and the CPU rows). Every row also gives
the load generator's own CPU per request: it runs on the same cores as the server.
The benchmark's clients share one address: start servers with the per-client rate limits off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

QUERIES = [
    "blue running shoes",
    "leather backpack",
    "ceramic coffee mug",
    "wireless headphones",
    "striped cotton t-shirt",
    "wool beanie",
    "red handbag",
    "teapot",
]
MIX = (("search", 0.4), ("similar", 0.2), ("recommendations", 0.3), ("events", 0.1))
WORDS = [
    "blue",
    "red",
    "green",
    "black",
    "white",
    "leather",
    "wool",
    "cotton",
    "running",
    "hiking",
    "summer",
    "winter",
    "vintage",
    "classic",
    "slim",
    "large",
    "small",
    "waterproof",
    "shoes",
    "boots",
    "jacket",
    "shirt",
    "mug",
    "lamp",
    "chair",
    "bag",
    "backpack",
    "scarf",
    "watch",
    "kettle",
]


# Search requests name the default fusion of a deployment with trained CLIP weights (under the
# random-init CLIP of this machine the default is text only, and CLIP's text tower would not run).
WEIGHTS = {"image": 0.7, "text": 0.3}


def new_query(rng: random.Random) -> str:
    """A query text never sent before (the query-vector cache cannot answer it)."""
    global _QUERIES_SENT
    _QUERIES_SENT += 1
    return f"{' '.join(rng.sample(WORDS, 3))} {_QUERIES_SENT}"


_QUERIES_SENT = 0


@dataclass
class Target:
    base: str
    product_ids: list[str]
    pid: int | None = None


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)  # 2xx only
    all_ms: list[float] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)

    def add(self, code: str, ms: float) -> None:
        self.status[code] = self.status.get(code, 0) + 1
        self.all_ms.append(ms)
        if code == "2xx":
            self.latencies_ms.append(ms)


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def pct(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return round(values[0], 1) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


async def request(client: httpx.AsyncClient, target: Target, rng: random.Random) -> tuple[str, float]:
    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
    pid = rng.choice(target.product_ids)
    user = f"load-user-{rng.randrange(200)}"
    t = time.perf_counter()
    try:
        if kind == "search":
            r = await client.post("/search", json={"query": new_query(rng), "top_k": 10, "weights": WEIGHTS})
        elif kind == "similar":
            r = await client.get(f"/similar/{pid}", params={"top_k": 10})
        elif kind == "recommendations":
            r = await client.get(f"/recommendations/{user}", params={"top_k": 10})
        else:
            batch = [
                {"user_id": user, "product_id": rng.choice(target.product_ids), "event_type": "view"} for _ in range(5)
            ]
            r = await client.post("/events", json=batch)
        code = f"{r.status_code // 100}xx" if r.status_code != 429 else "429"
    except httpx.HTTPError as exc:
        code = f"error:{type(exc).__name__}:{kind}"
    return code, (time.perf_counter() - t) * 1000


def client_for(target: Target) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=target.base,
        timeout=30.0,
        # Idle connections are dropped before the server's 5 s keep-alive timeout closes them, so a
        # request is never sent on a connection the server is closing at that moment.
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=2.0),
    )


async def capacity(target: Target, seconds: float, clients: int, seed: int = 0) -> tuple[float, Tally]:
    """Closed loop: ``clients`` workers back to back; returns 2xx answers per second."""
    tally = Tally()
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.perf_counter() < stop:
            tally.add(*await request(client, target, rng))

    async with client_for(target) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return tally.status.get("2xx", 0) / elapsed, tally


# One asyncio httpx client process generates at most about this many requests/s on 2 cores (its
# connection pool costs grow with the backlog); past it the client, not the server, is measured.
MAX_OFFERED_RPS = 150.0
MAX_OUTSTANDING = 400


async def soak(target: Target, rate: float, seconds: float, seed: int = 1) -> dict[str, Any]:
    """Open loop: a request every 1/rate s for ``seconds``, whatever the answers' speed. The rate
    is capped at ``MAX_OFFERED_RPS``; while ``MAX_OUTSTANDING`` requests are unanswered, due
    requests are counted as ``client_skipped`` instead of sent (the client would be the bottleneck)."""
    rate = min(rate, MAX_OFFERED_RPS)
    skipped = 0
    tally = Tally()
    rng = random.Random(seed)
    rss = [rss_mb(target.pid)]
    pending: set[asyncio.Task[None]] = set()
    peak_outstanding = 0

    async def one() -> None:
        tally.add(*await request(client, target, rng))

    async with client_for(target) as client:
        started = time.perf_counter()
        n = 0
        next_rss = started + 5
        while (now := time.perf_counter()) < started + seconds:
            due = int((now - started) * rate) + 1
            while n < due:
                n += 1
                if len(pending) >= MAX_OUTSTANDING:
                    skipped += 1
                    continue
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            peak_outstanding = max(peak_outstanding, len(pending))
            if now >= next_rss:
                rss.append(rss_mb(target.pid))
                next_rss += 5
            await asyncio.sleep(max(0.0, (n / rate) - (time.perf_counter() - started)))
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
    rss.append(rss_mb(target.pid))
    known = [r for r in rss if r is not None]
    return {
        "offered_rps": round(rate, 1),
        "seconds": round(elapsed, 1),
        "sent": n - skipped,
        "client_skipped": skipped,
        "answered_2xx_per_s": round(tally.status.get("2xx", 0) / elapsed, 1),
        "status": dict(sorted(tally.status.items())),
        "5xx": tally.status.get("5xx", 0),
        "errors": sum(v for k, v in tally.status.items() if k.startswith("error")),
        "p50_ms_2xx": pct(tally.latencies_ms, 50),
        "p95_ms_2xx": pct(tally.latencies_ms, 95),
        "p99_ms_2xx": pct(tally.latencies_ms, 99),
        "p99_ms_all": pct(tally.all_ms, 99),
        "peak_outstanding": peak_outstanding,
        "rss_start_mb": known[0] if known else None,
        "rss_end_mb": known[-1] if known else None,
        "rss_max_mb": max(known) if known else None,
    }


def product_ids(base: str, n: int = 50) -> list[str]:
    import json

    req = urllib.request.Request(
        f"{base}/search",
        data=json.dumps({"query": "product", "top_k": min(n, 100)}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return [r["product_id"] for r in json.loads(resp.read())["results"]]


def run(target: Target, capacity_s: float, clients: int, factor: float, seconds: float) -> dict[str, Any]:
    rate, cap = asyncio.run(capacity(target, capacity_s, clients))
    print(f"capacity: {rate:.1f} 2xx/s with {clients} closed-loop clients over {capacity_s:g}s {cap.status}")
    result = asyncio.run(soak(target, factor * rate, seconds))
    result["capacity_rps"] = round(rate, 1)
    result["capacity_p50_ms"] = pct(cap.latencies_ms, 50)
    result["factor"] = factor
    return result


SWEEP_CLIENTS = (1, 4, 8, 16, 32)


def photos(n: int = 8) -> list[str]:
    """Small JPEG photos as base64 (different pixels each)."""
    import base64
    import io

    from PIL import Image

    rng = random.Random(3)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3))).save(buf, "JPEG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


async def one_of(
    kind: str, client: httpx.AsyncClient, target: Target, rng: random.Random, shots: list[str]
) -> tuple[str, float]:
    """One request of a sweep workload: ``text`` (uncached), ``image``, ``mixed`` (:data:`MIX`),
    or a single route for the CPU-cost runs (``cached``, ``similar``, ``recommendations``,
    ``events``: a batch of 5)."""
    if kind == "mixed":
        return await request(client, target, rng)
    t = time.perf_counter()
    try:
        if kind == "text":
            r = await client.post("/search", json={"query": new_query(rng), "top_k": 10, "weights": WEIGHTS})
        elif kind == "image":
            r = await client.post("/search", json={"image_base64": rng.choice(shots), "top_k": 10})
        elif kind == "cached":
            r = await client.post("/search", json={"query": rng.choice(QUERIES), "top_k": 10, "weights": WEIGHTS})
        elif kind == "similar":
            r = await client.get(f"/similar/{rng.choice(target.product_ids)}", params={"top_k": 10})
        elif kind == "events":
            user = f"load-user-{rng.randrange(200)}"
            batch = [
                {"user_id": user, "product_id": rng.choice(target.product_ids), "event_type": "view"} for _ in range(5)
            ]
            r = await client.post("/events", json=batch)
        else:
            r = await client.get(f"/recommendations/load-user-{rng.randrange(200)}", params={"top_k": 10})
        code = f"{r.status_code // 100}xx" if r.status_code != 429 else "429"
    except httpx.HTTPError as exc:
        code = f"error:{type(exc).__name__}:{kind}"
    return code, (time.perf_counter() - t) * 1000


async def closed_loop(target: Target, kind: str, clients: int, seconds: float, shots: list[str]) -> dict[str, Any]:
    tally = Tally()
    stop = time.perf_counter() + seconds
    cpu0 = cpu_seconds(target.pid)

    async def worker(i: int) -> None:
        rng = random.Random(clients * 1000 + i)
        while time.perf_counter() < stop:
            tally.add(*await one_of(kind, client, target, rng, shots))

    own0 = sum(os.times()[:2])
    async with client_for(target) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    cpu1 = cpu_seconds(target.pid)
    own = sum(os.times()[:2]) - own0
    ok = tally.status.get("2xx", 0)
    return {
        "workload": kind,
        "clients": clients,
        "req_per_s": round(ok / elapsed, 1),
        "p50_ms": pct(tally.latencies_ms, 50),
        "p95_ms": pct(tally.latencies_ms, 95),
        "p99_ms": pct(tally.latencies_ms, 99),
        "non_2xx": sum(n for c, n in tally.status.items() if c != "2xx"),
        "core_ms_per_request": None if cpu0 is None or cpu1 is None or not ok else round((cpu1 - cpu0) * 1000 / ok, 2),
        # The load generator shares the machine: what it takes is not the server's.
        "client_core_ms_per_request": round(own * 1000 / ok, 2) if ok else None,
    }


def cpu_seconds(pid: int | None) -> float | None:
    """The process's user + system CPU time, from /proc (all its threads)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode_batches(base: str) -> dict[str, dict[int, float]]:
    """``query_encode_batches_total`` from the server's /metrics: encoder -> size -> batches."""
    import re

    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    out: dict[str, dict[int, float]] = {}
    for enc, size, n in re.findall(r'query_encode_batches_total\{encoder="(\w+)",size="(\d+)"\} ([0-9.e+]+)', text):
        out.setdefault(enc, {})[int(size)] = float(n)
    return out


def _delta(after: dict[str, dict[int, float]], before: dict[str, dict[int, float]]) -> dict[str, dict[int, int]]:
    out = {}
    for enc, sizes in after.items():
        d = {k: int(v - before.get(enc, {}).get(k, 0)) for k, v in sizes.items()}
        if any(d.values()):
            out[enc] = {k: v for k, v in sorted(d.items()) if v}
    return out


SWEEP_WORKLOADS = ("text", "mixed", "image")
CPU_ROUTES = ("cached", "similar", "recommendations", "events", "text")


def sweep(target: Target, seconds: float, workloads: tuple[str, ...] = SWEEP_WORKLOADS) -> list[dict[str, Any]]:
    shots = photos()
    rows = []
    for kind in workloads:
        for clients in SWEEP_CLIENTS:
            before = encode_batches(target.base)
            row = asyncio.run(closed_loop(target, kind, clients, seconds, shots))
            row["encode_batches"] = _delta(encode_batches(target.base), before)
            print(row, flush=True)
            rows.append(row)
    for kind in CPU_ROUTES:
        row = asyncio.run(closed_loop(target, kind, 8, seconds, shots))
        row["workload"] = f"cpu: {kind}"
        print(row, flush=True)
        rows.append(row)
    return rows


def sustained(target: Target, windows: int, seconds: float, clients: int) -> list[dict[str, Any]]:
    """Mixed traffic for ``windows`` windows back to back on one server, a row each."""
    shots = photos()
    rows = []
    started = time.perf_counter()
    for w in range(1, windows + 1):
        row = asyncio.run(closed_loop(target, "mixed", clients, seconds, shots))
        row = {"window": w, "minutes": round((time.perf_counter() - started) / 60, 1)} | row
        print(row, flush=True)
        rows.append(row)
    return rows


def start_dev_runner(sample: int, clip_model: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CATALOG_", "CLIP_"))}
    # One address sends everything: per-client rate limits would measure the limiter.
    env.update(CLIP_MODEL=clip_model, CLIP_PRETRAINED="none", WRITE_RATE_LIMIT="0", IMAGE_SEARCH_RATE_LIMIT="0")
    cmd = [sys.executable, "-m", "local", "--data-dir", str(data), "serve", "--port", str(port)]
    cmd += ["--sample", str(sample), "--log-level", "warning"]
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return proc, base, data
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"dev runner exited; see {data / 'server.log'}") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("dev runner did not come up")


def main() -> None:
    from bench.common import report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (default: start a dev runner)")
    ap.add_argument("--pid", type=int, help="the server's pid, for its RSS")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--capacity-seconds", type=float, default=20)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sweep", action="store_true", help="throughput per client count and core-ms per route")
    ap.add_argument("--sweep-seconds", type=float, default=8)
    ap.add_argument(
        "--workloads",
        default=",".join(SWEEP_WORKLOADS),
        help=f"the sweep's workloads, comma-separated (default: {','.join(SWEEP_WORKLOADS)})",
    )
    ap.add_argument("--sustained", type=int, default=0, help="windows of mixed traffic on one server")
    ap.add_argument("--window-seconds", type=float, default=30)
    ap.add_argument("--name", default="load", help="results file prefix")
    args = ap.parse_args()
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if not workloads or set(workloads) - set(SWEEP_WORKLOADS):
        ap.error(f"--workloads takes some of {', '.join(SWEEP_WORKLOADS)}")
    proc = None
    if args.url:
        base, pid = args.url.rstrip("/"), args.pid
    else:
        proc, base, _ = start_dev_runner(args.sample, args.clip_model)
        pid = proc.pid
    meta = {"sample": args.sample, "clip_model": args.clip_model, "clients": args.clients, "url": args.url}
    if args.sweep and args.sustained:
        ap.error("--sweep and --sustained are separate runs")
    if args.sweep:
        meta |= {"workloads": ",".join(workloads), "sweep_seconds": args.sweep_seconds}
    if args.sustained:
        meta |= {"windows": args.sustained, "window_seconds": args.window_seconds}
    try:
        target = Target(base, product_ids(base), pid)
        if args.sweep:
            rows = sweep(target, args.sweep_seconds, workloads)
        elif args.sustained:
            rows = sustained(target, args.sustained, args.window_seconds, args.clients)
        else:
            result = run(target, args.capacity_seconds, args.clients, args.factor, args.seconds)
            rows = [{k: v for k, v in result.items() if k != "status"} | {"status": str(result["status"])}]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    if args.sweep:
        rows = [r | {"encode_batches": str(r.get("encode_batches", ""))} for r in rows]
    report(args.name, rows, meta)


if __name__ == "__main__":
    main()
