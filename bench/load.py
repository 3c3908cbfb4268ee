"""Loopback load and soak: the rate of mixed traffic one query process sustains, then a soak at a
multiple of that rate (open-loop arrivals, so overload shows up as shed load, not as a slower
client).

    python -m bench.load                        # starts a dev runner (sample 200, ViT-B-32 random-init)
    python -m bench.load --url http://127.0.0.1:8000 --pid 1234

Mix: text search 40 %, similar 20 %, recommendations 30 %, event batches (5 events) 10 %.
Phase 1: ``--clients`` closed-loop clients for ``--capacity-seconds`` -> sustained 2xx/s.
Phase 2: arrivals at ``--factor`` x that rate for ``--seconds`` (60): answers by status class,
latency percentiles, and the server's RSS at start and end (from /proc, when its pid is known).
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
            r = await client.post("/search", json={"query": rng.choice(QUERIES), "top_k": 10})
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


def start_dev_runner(sample: int, clip_model: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CATALOG_", "CLIP_"))}
    env.update(CLIP_MODEL=clip_model, CLIP_PRETRAINED="none")
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
    args = ap.parse_args()
    proc = None
    if args.url:
        base, pid = args.url.rstrip("/"), args.pid
    else:
        proc, base, _ = start_dev_runner(args.sample, args.clip_model)
        pid = proc.pid
    try:
        target = Target(base, product_ids(base), pid)
        result = run(target, args.capacity_seconds, args.clients, args.factor, args.seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    rows = [{k: v for k, v in result.items() if k != "status"} | {"status": str(result["status"])}]
    report("load", rows, {"sample": args.sample, "clip_model": args.clip_model, "clients": args.clients})


if __name__ == "__main__":
    main()
