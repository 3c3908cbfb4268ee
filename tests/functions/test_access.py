"""Secure by default: who may call what (per endpoint and key), the production start check, the
webhook's checks before any work is queued, per-client rate limits and signed image URLs."""

import base64
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from core.errors import ConfigError
from core.settings import Settings
from functions.app import create_app
from functions.services import Services
from tests.conftest import make_settings, new_bucket
from tests.helpers import jpeg

pytestmark = pytest.mark.integration
WRITE = "write-key-0123456789abcdef"
READ = "read-key-0123456789abcdef"
TOKEN = "webhook-token-0123456789"
AS = {
    "none": {},
    "read": {"Authorization": f"Bearer {READ}"},
    "write": {"Authorization": f"Bearer {WRITE}"},
    "wrong": {"Authorization": "Bearer not-a-key"},
}


class Recorder:
    """An upload queue that records what it was given (stands in for the worker or GPU spawns)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, keys: list[str]) -> int:
        self.submitted += keys
        return len(keys)

    def start(self) -> "Recorder":
        return self

    def stop(self, timeout: float = 0.0) -> None:
        pass

    @property
    def queued(self) -> int:
        return 0


def app(s3_endpoint: str, fake: Embedder, worker: Recorder | None = None, **overrides: Any) -> TestClient:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "acc"), **overrides)
    return TestClient(create_app(Services.from_settings(settings, embedder=fake), worker))


@pytest.fixture(scope="module")
def locked(s3_endpoint: str, fake: Embedder) -> TestClient:
    """All three secrets set; one product with an image."""
    c = app(s3_endpoint, fake, api_key=WRITE, read_api_key=READ, webhook_token=TOKEN)
    body = {"title": "Red desk lamp", "image_base64": base64.b64encode(jpeg()).decode()}
    assert c.put("/products/S1", json=body, headers=AS["write"]).status_code == 200
    assert c.put("/products/W2", json={"title": "to delete"}, headers=AS["write"]).status_code == 200
    return c


READS = [
    ("post", "/search", {"query": "lamp"}),
    ("get", "/similar/S1", None),
    ("get", "/recommendations/u1", None),
    ("post", "/recommendations", {"positive": ["S1"]}),
    ("get", "/products/S1", None),
    ("get", "/products/S1/image", None),
    ("get", "/products/S1/bought-together", None),
    ("get", "/suggest?q=la", None),
]
WRITES = [
    ("put", "/products/W1", {"title": "t"}),
    ("delete", "/products/W2", None),
    ("post", "/events", {"user_id": "u1", "product_id": "S1", "event_type": "view"}),
    ("post", "/admin/rollback", {"version": 10_000}),  # 404 once through: the version does not exist
    ("put", "/rules", {"rules": []}),
]
PRIVATE = [
    ("get", "/users/u1/history", None),
    ("get", "/stats", None),
    ("get", "/uploads", None),
    ("get", "/admin/versions", None),
    ("get", "/rules", None),
]
PUBLIC = [("get", "/health", None), ("get", "/metrics", None), ("get", "/ui/", None)]


def call(c: TestClient, method: str, path: str, body: object, who: str) -> Any:
    kw = {"json": body} if body is not None else {}
    return c.request(method, path, headers=AS[who], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "path", "body"), READS)
def test_reads_need_either_key_when_a_read_key_is_set(locked: TestClient, method: str, path: str, body: object) -> None:
    assert call(locked, method, path, body, "none").status_code == 401
    assert call(locked, method, path, body, "wrong").status_code == 403
    for who in ("read", "write"):
        r = call(locked, method, path, body, who)
        assert r.status_code == 200, (who, r.status_code, r.text)


@pytest.mark.parametrize(("method", "path", "body"), WRITES + PRIVATE)
def test_writes_and_shopper_data_need_the_write_key(locked: TestClient, method: str, path: str, body: object) -> None:
    none = call(locked, method, path, body, "none")
    assert none.status_code == 401 and "API_KEY" in none.json()["detail"]
    read = call(locked, method, path, body, "read")
    assert read.status_code == 403 and "read-only" in read.json()["detail"]
    assert call(locked, method, path, body, "wrong").status_code == 403
    ok = call(locked, method, path, body, "write")
    assert ok.status_code in (200, 202, 404), (ok.status_code, ok.text)
    assert ok.status_code != 404 or path == "/admin/rollback"


@pytest.mark.parametrize(("method", "path", "body"), PUBLIC)
def test_health_metrics_and_dashboard_stay_open(locked: TestClient, method: str, path: str, body: object) -> None:
    assert call(locked, method, path, body, "none").status_code == 200


def test_webhook_takes_only_its_token(locked: TestClient) -> None:
    payload = {"Records": []}
    for who, code in (("none", 401), ("read", 403), ("write", 403)):
        assert locked.post("/triggers/s3", json=payload, headers=AS[who]).status_code == code
    assert locked.post("/triggers/s3", json=payload, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202


def test_without_a_read_key_reads_are_open_and_shopper_data_is_not(s3_endpoint: str, fake: Embedder) -> None:
    c = app(s3_endpoint, fake, api_key=WRITE)
    assert c.post("/search", json={"query": "x"}).status_code == 200
    assert c.get("/recommendations/u1").status_code == 200
    for method, path, body in PRIVATE:
        assert call(c, method, path, body, "none").status_code == 401, path


def test_signed_image_urls_work_without_a_key_until_they_expire(locked: TestClient) -> None:
    url = locked.get("/products/S1", headers=AS["read"]).json()["image_url"]
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert set(q) == {"exp", "sig"} and int(q["exp"]) > time.time()
    assert locked.get(f"{parts.path}?{parts.query}").content == jpeg()  # an <img> tag sends no header
    forged = f"{parts.path}?exp={q['exp']}&sig={'0' * 32}"
    assert locked.get(forged).status_code == 401
    longer = f"{parts.path}?exp={int(q['exp']) + 3600}&sig={q['sig']}"
    assert locked.get(longer).status_code == 401
    other = f"/products/S2/image?{parts.query}"  # a signature is for one product only
    assert locked.get(other).status_code == 401


def test_production_refuses_to_start_without_its_secrets(s3_endpoint: str, fake: Embedder) -> None:
    bucket = new_bucket(s3_endpoint, "prod")
    with pytest.raises(ConfigError) as err:
        create_app(Services.from_settings(make_settings(s3_endpoint, bucket, deployment="production"), embedder=fake))
    assert "API_KEY and WEBHOOK_TOKEN" in str(err.value) and "ALLOW_ANONYMOUS_WRITES" in str(err.value)
    with pytest.raises(ConfigError, match="needs WEBHOOK_TOKEN"):
        settings = make_settings(s3_endpoint, bucket, deployment="production", api_key=WRITE)
        create_app(Services.from_settings(settings, embedder=fake))
    settings = make_settings(s3_endpoint, bucket, deployment="production", api_key=WRITE, webhook_token=TOKEN)
    assert TestClient(create_app(Services.from_settings(settings, embedder=fake))).get("/health").status_code == 200


def test_anonymous_writes_in_production_are_an_explicit_logged_choice(
    s3_endpoint: str, fake: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    c = app(s3_endpoint, fake, deployment="production", allow_anonymous_writes=True)
    assert c.put("/products/A1", json={"title": "open"}).status_code == 200
    assert any("ALLOW_ANONYMOUS_WRITES" in r.getMessage() for r in caplog.records)


def test_deployed_defaults_are_the_safe_ones() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.deployment == "production" and not s.allow_anonymous_writes
    assert s.write_rate_limit > 0 and s.image_search_rate_limit > 0 and s.webhook_keys_per_minute > 0


def notification(*keys: str, bucket: str) -> dict[str, Any]:
    return {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": k}}} for k in keys
        ]
    }


def test_webhook_checks_each_key_before_anything_is_queued(s3_endpoint: str, fake: Embedder) -> None:
    worker = Recorder()
    c = app(s3_endpoint, fake, worker, max_upload_bytes=1000)
    services: Services = c.app.state.services  # type: ignore[attr-defined]
    bucket = services.store.bucket
    services.store.put_bytes("uploads/ok.jsonl", b'{"product_id": "U1", "title": "mug"}\n')
    services.store.put_bytes("uploads/big.jsonl", b" " * 1001)
    body = c.post(
        "/triggers/s3",
        json=notification("uploads/missing.jsonl", "uploads/big.jsonl", "uploads/ok.jsonl", bucket=bucket),
    ).json()
    assert worker.submitted == ["uploads/ok.jsonl"] and body["accepted"] == 1
    reasons = {i["key"]: i["reason"] for i in body["ignored"]}
    assert "no such object" in reasons["uploads/missing.jsonl"]
    assert "MAX_UPLOAD_BYTES" in reasons["uploads/big.jsonl"]
    again = c.post("/triggers/s3", json=notification("uploads/ok.jsonl", bucket=bucket)).json()
    assert again["accepted"] == 0 and "ETag" in again["ignored"][0]["reason"]
    services.store.put_bytes("uploads/ok.jsonl", b'{"product_id": "U1", "title": "blue mug"}\n')  # new ETag
    assert c.post("/triggers/s3", json=notification("uploads/ok.jsonl", bucket=bucket)).json()["accepted"] == 1
    assert worker.submitted == ["uploads/ok.jsonl", "uploads/ok.jsonl"]
    metrics = c.get("/metrics").text
    for reason, n in (("missing", 1), ("too_large", 1), ("duplicate", 1)):
        assert f'webhook_keys_refused_total{{reason="{reason}"}} {n}.0' in metrics, reason


def test_webhook_caps_keys_per_minute_and_leaves_the_rest_to_the_sweeper(s3_endpoint: str, fake: Embedder) -> None:
    worker = Recorder()
    c = app(s3_endpoint, fake, worker, webhook_keys_per_minute=60)  # a burst of 10 s worth: 10 keys
    services: Services = c.app.state.services  # type: ignore[attr-defined]
    keys = [f"uploads/f{i:02d}.json" for i in range(14)]
    for k in keys:
        services.store.put_bytes(k, b'{"product_id": "x", "title": "y"}')
    body = c.post("/triggers/s3", json=notification(*keys, bucket=services.store.bucket)).json()
    assert body["accepted"] == 10 and worker.submitted == keys[:10]
    assert [i["key"] for i in body["ignored"]] == keys[10:]
    assert all("sweeper" in i["reason"] for i in body["ignored"])


def test_writes_over_the_rate_get_429_with_retry_after(s3_endpoint: str, fake: Embedder) -> None:
    c = app(s3_endpoint, fake, write_rate_limit=6)  # one write per 10 s, a burst of one
    event = {"user_id": "u", "product_id": "p", "event_type": "view"}
    assert c.post("/events", json=event).status_code == 202
    r = c.post("/events", json=event)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 10
    assert "too many writes" in r.json()["detail"]
    assert c.post("/search", json={"query": "reads are not limited"}).status_code == 200


def test_the_api_key_holder_is_not_rate_limited(s3_endpoint: str, fake: Embedder) -> None:
    c = app(s3_endpoint, fake, write_rate_limit=6, api_key=WRITE, events_public=True)
    event = {"user_id": "u", "product_id": "p", "event_type": "view"}
    assert all(c.post("/events", json=event, headers=AS["write"]).status_code == 202 for _ in range(5))
    assert c.post("/events", json=event).status_code == 202  # a public client's own bucket
    assert c.post("/events", json=event).status_code == 429


def test_searches_by_photo_over_the_rate_get_429(s3_endpoint: str, fake: Embedder) -> None:
    c = app(s3_endpoint, fake, image_search_rate_limit=6)
    photo = {"image_base64": base64.b64encode(jpeg()).decode()}
    assert c.post("/search", json=photo).status_code == 200
    r = c.post("/search", json=photo)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.post("/search", json={"query": "text search is not limited"}).status_code == 200


def test_every_endpoint_has_its_place_in_the_tables_above(locked: TestClient) -> None:
    """A new endpoint fails here until it is listed (and so checked) with the keys it needs."""
    listed = [*READS, *WRITES, *PRIVATE, *PUBLIC, ("post", "/triggers/s3", None)]
    paths = locked.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert len(paths) > 15
    for path, methods in paths.items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method in methods:
            found = any(m == method and pattern.match(p.split("?")[0]) for m, p, _ in listed)
            assert found, f"{method.upper()} {path} is in no access table"
