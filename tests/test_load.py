"""Load and soak on loopback: the dev runner (sample catalog on its embedded S3 server) takes mixed
search / similar / recommendations / event traffic at twice the rate it sustains (capped at what one
client process can send), for 40 s.
Overload is shed with 429 + Retry-After: no 5xx, no timeouts, memory stable."""

from pathlib import Path

import pytest

from bench.load import Target, product_ids, run
from tests.devserver import free_port, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_soak_at_twice_the_sustainable_rate(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path / "data", port, "--sample", "60", "--log-level", "warning", log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        result = run(Target(base, product_ids(base), proc.pid), capacity_s=8, clients=16, factor=2.0, seconds=40)
    finally:
        stop(proc)
    print("load:", result)
    assert result["capacity_rps"] > 0 and result["status"].get("2xx", 0) > 0
    assert result["5xx"] == 0, result["status"]
    assert result["errors"] == 0, result["status"]  # no timeouts, no dropped connections
    assert set(result["status"]) <= {"2xx", "429"} | {k for k in result["status"] if k.startswith("2xx")}
    assert result["p99_ms_all"] is not None and result["p99_ms_all"] < 30_000
    start_mb, end_mb = result["rss_start_mb"], result["rss_end_mb"]
    assert start_mb and end_mb and end_mb < start_mb * 1.25, (start_mb, end_mb)
