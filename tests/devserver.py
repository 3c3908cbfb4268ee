"""Start and stop `python -m local serve` as a user runs it (tiny random-init CLIP for speed)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: dict[str, object] | None = None, method: str | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def start(
    data_dir: Path, port: int, *extra: str, log: Path | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the dev runner and wait for /health. Its output is piped (read it with `stop`), or
    written to ``log`` for long runs whose output would fill a pipe nobody reads; ``env_extra``
    adds settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CATALOG_", "CLIP_"))}
    env.update(CLIP_MODEL="tiny-clip-test", CLIP_PRETRAINED="none", **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "local", "--data-dir", str(data_dir), "serve", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE if log is None else log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else log.read_text() if log else ""
            raise AssertionError(f"dev server exited early:\n{out}")
        try:
            call(f"http://127.0.0.1:{port}/health")
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("dev server did not come up in 180 s")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out or ""
