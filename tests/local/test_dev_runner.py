"""`python -m local serve` as a user runs it: embedded S3, sample data, Ctrl-C, restart."""

import json
import time
from pathlib import Path

import pytest

from tests.devserver import call, free_port, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_serve_sample_ctrl_c_and_restart_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port, "--sample", "12")
    base = f"http://127.0.0.1:{port}"
    try:
        health = call(f"{base}/health")
        assert health["product_count"] == 12 and health["status"] == "degraded"
        assert str(health["clip_mode"]).startswith("random-init")
        assert health["recommendation_model"] is None  # nothing trained yet
        # Where other local commands find this server (`local train` waits for it to serve its model).
        announced = json.loads((tmp_path / "api-server.json").read_text())
        assert announced["url"] == base and announced["pid"] == proc.pid
        hits = call(f"{base}/search", {"query": "ceramic coffee mug", "top_k": 3})["results"]
        assert len(hits) == 3  # type: ignore[arg-type]
        call(f"{base}/products/EXTRA1", {"title": "Hand-made oak chopping board", "price": 30}, "PUT")
    except BaseException:
        proc.kill()
        raise
    out = stop(proc)
    assert f"API            {base}" in out and "stopped; local data saved." in out
    assert "no API_KEY: writes are open (development" in out  # the dev runner says so, and runs
    assert (tmp_path / "s3" / "objects" / "products").is_dir()
    assert not (tmp_path / "api-server.json").exists()  # gone with the server

    proc = start(tmp_path, port, "--sample", "12")  # same sample again: nothing re-embedded
    try:
        assert call(f"{base}/health")["product_count"] == 13
        assert call(f"{base}/products/EXTRA1")["title"] == "Hand-made oak chopping board"
        hits = call(f"{base}/search", {"query": "oak chopping board", "top_k": 1})["results"]
        assert hits[0]["product_id"] == "EXTRA1"  # type: ignore[index]
    finally:
        out = stop(proc)
    assert "indexed 0, unchanged 12, failed 0" in out


def test_uploads_index_themselves_and_survive_a_kill_mid_ingest(tmp_path: Path) -> None:
    import boto3

    from local.sample import generate

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # 1. Files land in the bucket while nothing sweeps (notifications only); clean stop persists them.
    # Each run's output goes to a file: polled for minutes, its access log would fill a pipe that
    # nobody reads, and the server would stall writing to it.
    proc = start(tmp_path, port, "--sweep-seconds", "0", log=tmp_path / "serve-1.log")
    try:
        state = json.loads((tmp_path / "s3-endpoint.json").read_text())
        s3 = boto3.client(
            "s3",
            endpoint_url=state["url"],
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local-secret",
        )
        products = generate(300, image_size=64)
        for p in products:
            s3.put_object(Bucket="products", Key="uploads/" + p.image_name, Body=p.image)
            p.record["image"] = "uploads/" + p.image_name
        body = "".join(json.dumps(p.record) + "\n" for p in products)
        s3.put_object(Bucket="products", Key="uploads/catalog.jsonl", Body=body.encode())
        assert call(f"{base}/health")["product_count"] == 0
    finally:
        stop(proc)

    # 2. The sweeper picks the upload up by itself; the process is SIGKILLed mid-ingest (between
    # two of its commits: small groups here).
    proc = start(
        tmp_path, port, "--sweep-seconds", "0.5", log=tmp_path / "serve-2.log", env_extra={"INGEST_COMMIT_ROWS": "32"}
    )
    try:
        deadline = time.time() + 120
        count_at_kill = 0
        while count_at_kill == 0 and time.time() < deadline:
            count_at_kill = int(call(f"{base}/health")["product_count"])  # type: ignore[call-overload]
            time.sleep(0.02)
    finally:
        proc.kill()  # no clean shutdown, no final mirror
        proc.wait(30)
    assert 0 < count_at_kill < 300, f"kill did not land mid-ingest ({count_at_kill} indexed)"

    # 3. After a restart every product is indexed, once, and the ingest record says so.
    proc = start(tmp_path, port, "--sweep-seconds", "0.5", log=tmp_path / "serve-3.log")
    try:
        deadline = time.time() + 180
        recs: list[dict[str, object]] = []
        while time.time() < deadline:
            recs = call(f"{base}/uploads?status=indexed")["uploads"]  # type: ignore[assignment]
            if recs:
                break
            time.sleep(0.5)
        assert recs and recs[0]["key"] == "uploads/catalog.jsonl"
        assert recs[0]["records_indexed"] == 300
        assert call(f"{base}/health")["product_count"] == 300
        assert call(f"{base}/products/S00300")["image"] == "uploads/images/S00300.jpg"
    finally:
        stop(proc)
