"""`python -m local import-events | train | startup-file | evaluate | synth-ratings` as real subprocesses against
the S3 server (products indexed beforehand with the fake embedder)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.embedding import Embedder
from core.ingest import PendingProduct
from core.types import ProductInput
from functions.app import create_app
from functions.services import Services
from local.runtime import API_STATE, announce_api, wait_until_served
from tests.conftest import ACCESS, SECRET, make_settings, new_bucket
from tests.helpers import serve

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local", "--data-dir", str(cwd / "data"), *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_train_evaluate(s3_endpoint: str, fake: Embedder, tmp_path: Path) -> None:
    bucket = new_bucket(s3_endpoint, "cli")
    settings = make_settings(s3_endpoint, bucket)
    services = Services.from_settings(settings, embedder=fake)
    args = ["--users", "60", "--items", "120", "--mean-ratings", "25", "--min-ratings", "10"]
    out = run(["synth-ratings", "--out", str(tmp_path / "dev"), *args], {**os.environ}, tmp_path)
    assert out.returncode == 0, out.stderr
    products = [json.loads(line) for line in (tmp_path / "dev" / "products.jsonl").read_text().splitlines()]
    assert len(products) == 120
    report = services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    assert report.indexed == 120
    events = (tmp_path / "dev" / "events.jsonl").read_text().splitlines()
    (tmp_path / "events.jsonl").write_text("\n".join([*events, '{"user_id": "x", "event_type": "view"}']) + "\n")
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": bucket,
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    out = run(["import-events", str(tmp_path / "events.jsonl")], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"imported {len(events)} events, rejected 1" in out.stdout
    assert f"line {len(events) + 1}: product_id is required" in out.stdout
    assert services.events.count() == len(events)

    out = run(["train"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"trained on {len(events)} events" in out.stdout and "models/recommender/" in out.stdout
    services.recommender.refresh()
    assert services.recommender.model is not None
    assert "start-up file" not in out.stdout  # 120 products: under STARTUP_FILE_MIN_PRODUCTS

    out = run(["startup-file"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"start-up file for query processes: startup/\S+/ \(120 products, \d+ events\)", out.stdout)
    assert services.load_startup_file()

    out = run(["evaluate", "--json", str(tmp_path / "eval.json")], env, tmp_path)
    assert out.returncode == 0, out.stderr
    table = json.loads((tmp_path / "eval.json").read_text())
    names = [r["method"] for r in table["rows"]]
    assert names == [
        "popularity",
        "recent popularity",
        "item-kNN (cosine)",
        "EASE",
        "EASE + recent pop.",
        "shelfsearch hybrid",
    ]
    assert all(0 <= r["ndcg@10"] <= 1 and 0 <= r["recall@10"] <= 1 and r["users"] > 0 for r in table["rows"])
    for name in names:
        assert name in out.stdout

    out = run(["evaluate", "--events", str(tmp_path / "events.jsonl"), "--no-content"], {**os.environ}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "shelfsearch hybrid" in out.stdout and "skipped 1 invalid events" in out.stdout


def test_train_returns_once_the_running_dev_server_serves_the_new_model(
    s3_endpoint: str, fake: Embedder, tmp_path: Path
) -> None:
    """`local train` next to a dev server on the same data dir and bucket waits until the server
    serves the new model, so requests made right after it get that model (the server loads models
    every RECS_REFRESH_SECONDS, here 5 s; without the wait it would still answer untrained)."""
    bucket = new_bucket(s3_endpoint, "cli-wait")
    settings = make_settings(s3_endpoint, bucket, recs_refresh_seconds=5)
    services = Services.from_settings(settings, embedder=fake)
    data = tmp_path / "data"
    products = [{"product_id": f"P{i:02d}", "title": f"thing {i}", "category": "C"} for i in range(30)]
    services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    rng = np.random.default_rng(0)
    events = [
        {"user_id": f"u{u}", "product_id": f"P{int(i):02d}", "event_type": "purchase", "timestamp": 1_700_000_000 + n}
        for n, (u, i) in enumerate(zip(rng.integers(0, 20, 400), rng.integers(0, 30, 400), strict=True))
    ]
    env = {**os.environ, "S3_ENDPOINT_URL": s3_endpoint, "S3_BUCKET": bucket}
    env.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    with serve(create_app(services)) as url, announce_api(data, url, settings):
        assert httpx.post(url + "/events", json=events).json()["accepted"] == len(events)
        assert httpx.get(url + "/health").json()["recommendation_model"] is None
        out = run(["train"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        key = re.search(r"-> (models/recommender/\S+)", out.stdout)
        assert key is not None, out.stdout
        assert f"served by the dev API server at {url}" in out.stdout
        assert httpx.get(url + "/health").json()["recommendation_model"] == key.group(1)
        body = httpx.get(url + "/recommendations/u1").json()
        assert body["model"] == key.group(1) and body["strategy"] == "personalized"
        # Another bucket's server, or none at all: nothing to wait for.
        other = make_settings(s3_endpoint, "some-other-bucket")
        assert wait_until_served(data, other, key.group(1), timeout=1) is None
        check = wait_until_served(data, settings, key.group(1), timeout=1)
        assert check is not None and check.served and check.url == url
    assert not (data / API_STATE).exists()
    assert wait_until_served(data, settings, key.group(1), timeout=1) is None
