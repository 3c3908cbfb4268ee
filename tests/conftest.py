"""Shared fixtures: a real S3 protocol server (moto in server mode, over HTTP) and settings."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from core.embedding import Embedder
from core.embedding.fake import fake_embedder
from core.settings import Settings
from functions.services import Services
from local.s3server import start_moto

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's access log

# Text models exported to ONNX Runtime are cached in the repo's pytest cache, not the user's home;
# the dev-runner subprocesses the tests start inherit it, so each model is exported once per run.
os.environ.setdefault("MODEL_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "onnx"))

ACCESS = "test-access-key"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA: skipped, and named as such in the report, without it."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SECRET = "test-secret-key"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 server on loopback for the whole session."""
    server = start_moto()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh bucket per test."""
    return new_bucket(s3_endpoint)


def new_bucket(s3_endpoint: str, prefix: str = "t") -> str:
    """Create a uniquely named bucket on the S3 server."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
    ).create_bucket(Bucket=name)
    return name


def make_settings(endpoint: str, bucket: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "s3_endpoint_url": endpoint,
        "s3_bucket": bucket,
        "aws_access_key_id": ACCESS,
        "aws_secret_access_key": SECRET,
        "catalog_refresh_seconds": 0,
        "deployment": "development",  # tests build apps without keys; tests/functions/test_access.py covers production
        "_env_file": None,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def s3_settings(s3_endpoint: str, bucket: str) -> Settings:
    """Settings pointing at a fresh bucket on the S3 server."""
    return make_settings(s3_endpoint, bucket)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Settings with the catalog in a temp dir (the bucket is still needed for images)."""
    return Settings(
        catalog_uri=str(tmp_path / "catalog"), catalog_refresh_seconds=0, deployment="development", _env_file=None
    )  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def fake() -> Embedder:
    return fake_embedder()


@pytest.fixture
def services(s3_settings: Settings, fake: Embedder) -> Services:
    """Services on the S3 server with the deterministic fake embedder."""
    return Services.from_settings(s3_settings, embedder=fake)
