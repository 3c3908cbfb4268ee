"""Shared benchmark helpers: an S3 server on loopback, timing, the result table."""

from __future__ import annotations

import json
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from core.settings import Settings

RESULTS = Path(__file__).parent / "results"


def s3_settings(**overrides: Any) -> tuple[Settings, ThreadedMotoServer]:
    """A fresh bucket on an embedded S3 server (moto, over HTTP on loopback)."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="b", aws_secret_access_key="b"
    ).create_bucket(Bucket=bucket)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint_url=url,
        s3_bucket=bucket,
        aws_access_key_id=SecretStr("b"),
        aws_secret_access_key=SecretStr("b"),
        **overrides,
    )
    return settings, server


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "n": len(samples_ms),
        "p50_ms": round(qs[49], 2),
        "p95_ms": round(qs[94], 2),
        "p99_ms": round(qs[98], 2),
        "mean_ms": round(statistics.fmean(samples_ms), 2),
    }


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def report(name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Print a table and write JSON under bench/results/."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print()
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    meta = {**meta, "machine": platform.platform(), "python": platform.python_version(), "date": stamp}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return path
