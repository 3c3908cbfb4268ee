"""Data safety: catalog versions are listable, any stored one can be restored (admin endpoint
behind the API key, and `python -m local rollback`), and compaction/cleanup never deletes a
version younger than VERSION_RETENTION_HOURS, the one a query process may still be serving."""

import os
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import pytest
from fastapi.testclient import TestClient

from core.catalog import TABLE, compact_dataset
from core.embedding import Embedder
from core.errors import NotFound
from functions.app import create_app
from functions.services import Services
from tests.conftest import ACCESS, SECRET, make_settings, new_bucket

pytestmark = pytest.mark.integration
KEY = "admin-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parents[2]


def test_versions_listed_and_rollback_restores_a_deleted_product(s3_endpoint: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "ver"), api_key=KEY)
    client = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    for i in range(3):
        assert client.put(f"/products/V{i}", json={"title": f"lamp {i}"}, headers=AUTH).status_code == 200
    good = client.get("/admin/versions", headers=AUTH).json()["current"]
    assert client.delete("/products/V1", headers=AUTH).status_code == 200
    assert client.put("/products/V0", json={"title": "broken title"}, headers=AUTH).status_code == 200
    assert client.get("/products/V1").status_code == 404

    assert client.get("/admin/versions").status_code == 401
    assert client.get("/admin/versions", headers={"Authorization": "Bearer nope"}).status_code == 403
    listed = client.get("/admin/versions", headers=AUTH).json()
    versions = [v["version"] for v in listed["versions"]]
    assert versions == sorted(versions, reverse=True) and listed["current"] == versions[0] > good
    counts = {v["version"]: v["products"] for v in listed["versions"]}
    assert counts[good] == 3 and counts[listed["current"]] == 2
    assert listed["retention_hours"] == settings.version_retention_hours

    assert client.post("/admin/rollback", json={"version": good}).status_code == 401
    r = client.post("/admin/rollback", json={"version": good}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["restored"] == good and body["previous"] == listed["current"] and body["products"] == 3
    assert body["version"] > listed["current"]  # a new version: the rollback itself can be undone
    assert client.get("/products/V1").json()["title"] == "lamp 1"
    assert client.get("/products/V0").json()["title"] == "lamp 0"
    assert client.post("/search", json={"query": "lamp 1"}).json()["results"]

    undo = client.post("/admin/rollback", json={"version": body["previous"]}, headers=AUTH).json()
    assert undo["products"] == 2 and client.get("/products/V1").status_code == 404

    missing = client.post("/admin/rollback", json={"version": 99_999}, headers=AUTH)
    assert missing.status_code == 404 and "does not exist or was cleaned up" in missing.json()["detail"]
    assert client.post("/admin/rollback", json={"version": 0}, headers=AUTH).status_code == 422
    assert client.post("/admin/rollback", json={"version": "x"}, headers=AUTH).status_code == 422


def test_cleanup_keeps_versions_within_retention_and_only_those(s3_endpoint: str, fake: Embedder) -> None:
    # The shortest retention the settings allow with 1 s refreshes: ten refresh intervals.
    settings = make_settings(
        s3_endpoint, new_bucket(s3_endpoint, "ret"), version_retention_hours=10 / 3600, recs_refresh_seconds=1
    )
    services = Services.from_settings(settings, embedder=fake)
    client = TestClient(create_app(services))
    for i in range(4):
        client.put(f"/products/R{i}", json={"title": f"chair {i}"})
    served = services.catalog.version
    # A query process serving `served`: a reader pinned to that version.
    reader = lancedb.connect(settings.resolved_catalog_uri, storage_options=settings.storage_options()).open_table(
        TABLE
    )
    reader.checkout(served)
    for i in range(4, 12):
        client.put(f"/products/R{i}", json={"title": f"chair {i}"})
    client.delete("/products/R0")

    first = {c.table: c for c in compact_dataset(settings)}  # everything is younger than 10 s
    assert first[TABLE].versions_after >= first[TABLE].versions_before  # nothing removed (compaction adds one)
    assert reader.count_rows() == 4 and len(reader.search().limit(None).to_arrow()) == 4

    time.sleep(11)
    client.put("/products/R99", json={"title": "stool"})  # the current version is fresh again
    second = {c.table: c for c in compact_dataset(settings)}
    assert second[TABLE].versions_after < second[TABLE].versions_before
    assert services.catalog.count() == 12  # current data untouched
    with pytest.raises(NotFound, match="cleaned up"):
        services.catalog.restore(served)


def test_rollback_cli(s3_endpoint: str, fake: Embedder, tmp_path: Path) -> None:
    bucket = new_bucket(s3_endpoint, "cli")
    services = Services.from_settings(make_settings(s3_endpoint, bucket), embedder=fake)
    client = TestClient(create_app(services))
    client.put("/products/C1", json={"title": "mug"})
    client.put("/products/C2", json={"title": "bowl"})
    target = services.catalog.version
    client.delete("/products/C2")
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": bucket,
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "local", "--data-dir", str(tmp_path), *args]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)

    listed = cli("versions")
    assert listed.returncode == 0, listed.stderr
    assert f"{target:>8}" in listed.stdout and "<- current" in listed.stdout
    done = cli("rollback", "--version", str(target))
    assert done.returncode == 0, done.stderr
    assert f"restored to version {target}" in done.stdout and "with 2 products" in done.stdout
    services.catalog._table.checkout_latest()
    assert services.catalog.count() == 2 and services.catalog.get("C2").title == "bowl"
    bad = cli("rollback", "--version", "424242")
    assert bad.returncode != 0 and "does not exist or was cleaned up" in bad.stderr
    compacted = cli("compact")
    assert compacted.returncode == 0 and "products:" in compacted.stdout, compacted.stderr
