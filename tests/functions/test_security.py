"""Auth, CORS, input limits and secrets through the app (catalog on the S3 server)."""

import logging

import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from functions.app import create_app
from functions.services import Services
from tests.conftest import SECRET, make_settings, new_bucket

pytestmark = pytest.mark.integration
KEY = "k3y-that-must-never-leak-0123456789"
TOKEN = "w3bhook-token-that-must-never-leak"


@pytest.fixture(scope="module")
def client(s3_endpoint: str, fake: Embedder) -> TestClient:
    settings = make_settings(
        s3_endpoint, new_bucket(s3_endpoint, "sec"), api_key=KEY, webhook_token=TOKEN, max_request_bytes=64 * 1024
    )
    c = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    assert c.put("/products/S1", json={"title": "desk"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    return c


WRITES = [
    ("put", "/products/X1", {"title": "t"}),
    ("delete", "/products/S1", None),
    ("post", "/events", {"user_id": "u", "product_id": "S1", "event_type": "view"}),
    ("get", "/admin/versions", None),
    ("post", "/admin/rollback", {"version": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_writes_need_the_api_key_401_then_403(client: TestClient, method: str, path: str, body: object) -> None:
    kw = {"json": body} if body is not None else {}
    none = client.request(method, path, **kw)  # type: ignore[arg-type]
    assert none.status_code == 401 and "Bearer" in none.json()["detail"]
    for bad in (f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Basic {KEY}", KEY):
        r = client.request(method, path, headers={"Authorization": bad}, **kw)  # type: ignore[arg-type]
        assert r.status_code == 403, (bad, r.status_code)
        assert KEY not in r.text


def test_webhook_token(client: TestClient) -> None:
    payload = {"Records": []}
    assert client.post("/triggers/s3", json=payload).status_code == 401
    assert client.post("/triggers/s3", json=payload, headers={"Authorization": f"Bearer {KEY}"}).status_code == 403
    ok = client.post("/triggers/s3", json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 202


def test_secrets_are_never_echoed_or_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts = []
    for path in ("/health", "/stats", "/openapi.json", "/metrics", "/uploads", "/products/S1"):
        texts.append(client.get(path).text)
    texts.append(client.get("/admin/versions", headers={"Authorization": f"Bearer {KEY}"}).text)
    texts.append(client.put("/products/S2", json={"title": "x"}, headers={"Authorization": f"Bearer {KEY}0"}).text)
    texts.append(client.post("/triggers/s3", json={}, headers={"Authorization": f"Bearer {TOKEN}0"}).text)
    texts.append(client.put("/products/S3", json={"title": ""}, headers={"Authorization": f"Bearer {KEY}"}).text)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY, TOKEN, SECRET):
        assert all(secret not in t for t in texts), secret
        assert secret not in logged, secret
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    assert KEY not in repr(settings) and TOKEN not in str(settings)


def test_cors_is_closed_by_default(client: TestClient) -> None:
    pre = client.options(
        "/search",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(s3_endpoint: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "cors"), cors_origins="https://shop.example")
    c = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    ok = c.options("/search", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
    other = c.options("/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    got = c.get("/health", headers={"Origin": "https://shop.example"})
    assert got.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize("path", ["/search", "/events", "/products/BIG"])
def test_body_limit_with_and_without_content_length(client: TestClient, path: str) -> None:
    big = b'{"query": "' + b"a" * (70 * 1024) + b'"}'
    method = "PUT" if path.startswith("/products") else "POST"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    sized = client.request(method, path, content=big, headers=auth)
    assert sized.status_code == 413 and "MAX_REQUEST_BYTES" in sized.json()["detail"]

    def chunks():  # no Content-Length: chunked transfer
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    chunked = client.request(method, path, content=chunks(), headers=auth)
    assert chunked.status_code == 413, chunked.text
    assert client.get("/health").status_code == 200  # the server is fine afterwards
    small = client.post("/search", json={"query": "desk"})
    assert small.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"),
    [
        ("post", "/search", {"query": "x" * 1001}, "1000"),
        ("post", "/search", {"query": "desk", "top_k": 101}, "100"),
        ("get", "/similar/S1?top_k=0", None, "1"),
        ("get", "/recommendations/u?top_k=1000", None, "100"),
        ("get", "/products/" + "p" * 300, None, "256"),
        ("post", "/search", {"image_base64": "not base64!!"}, "base64"),
    ],
)
def test_limits_are_clear_4xx(client: TestClient, method: str, path: str, body: object, detail: str) -> None:
    kw = {"json": body} if body is not None else {}
    r = client.request(method, path, **kw)  # type: ignore[arg-type]
    assert 400 <= r.status_code < 500, r.status_code
    assert detail in r.text
