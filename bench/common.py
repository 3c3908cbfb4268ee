"""Shared benchmark helpers: an S3 server on loopback, timing, the result table."""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from pydantic import SecretStr

from core.settings import Settings
from local.s3server import S3Server, start_moto

RESULTS = Path(__file__).parent / "results"


class MotoProcess:
    """The embedded S3 server (moto) in a process of its own: a benchmark that trains or
    generates load in this process would otherwise starve it of the GIL."""

    def __init__(self) -> None:
        self.port = free_port()
        serve = (
            "import sys, threading; from local.s3server import start_moto; "
            "start_moto(int(sys.argv[1])); threading.Event().wait()"
        )
        cmd = [sys.executable, "-c", serve, str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def get_host_and_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def s3_settings(*, own_process: bool = False, **overrides: Any) -> tuple[Settings, S3Server | MotoProcess]:
    """A fresh bucket on an embedded S3 server (moto, over HTTP on loopback), in a thread of this
    process or (``own_process``) in a process of its own."""
    server: S3Server | MotoProcess
    server = MotoProcess() if own_process else start_moto()
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
        # A benchmark's load comes from one address with no key: per-client limits would
        # measure the limiter, not the service.
        deployment="development",
        write_rate_limit=0,
        image_search_rate_limit=0,
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServeProcess:
    """``python -m bench.serve`` in its own process with ``settings`` in its environment."""

    def __init__(self, settings: Settings, *, fake_embedder: bool, timeout_s: float = 600.0) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings)}
        cmd = [sys.executable, "-m", "bench.serve", "--port", str(self.port)]
        if fake_embedder:
            cmd.append("--fake-embedder")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench.serve exited with {self.proc.returncode}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status in (200, 503):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise
                time.sleep(0.2)
            finally:
                conn.close()

    def stop(self) -> int | None:
        """Stop the server; its peak RSS in MB."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        for line in out.splitlines():
            if line.startswith("PEAK_RSS_MB "):
                return int(line.split()[1])
        return None


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in another process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return env


class LightClient:
    """A keep-alive HTTP/1.1 client on ``http.client``: far less per-request Python than httpx,
    so latency percentiles measure the server, not the client."""

    def __init__(self, base: str, timeout: float = 120.0) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json"} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the idle keep-alive connection before this request reached it.
            self.conn.close()
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
        raw = r.read()
        if raw and (r.getheader("content-type") or "").startswith("application/json"):
            return r.status, json.loads(raw)
        return r.status, raw
