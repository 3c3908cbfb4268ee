"""What the dashboard is served from: the UI files, the bundled chart library, and GET /stats
(catalog, events, ingest, traffic and top queries) through the app, data on the S3 server."""

import gzip
import importlib.resources
import json
import re
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from functions.app import create_app
from functions.services import Services
from tests.conftest import make_settings, new_bucket

pytestmark = pytest.mark.integration

PRODUCTS = [
    ("D1", "Blue running shoes", "Shoes", 59.0),
    ("D2", "Red running shoes", "Shoes", 89.0),
    ("D3", "Trail shoes", "Shoes", 129.0),
    ("D4", "Canvas tote bag", "Bags", 25.0),
    ("D5", "Leather backpack", "Bags", 149.0),
    ("D6", "Gift card", None, None),
]


@pytest.fixture(scope="module")
def env(s3_endpoint: str, fake: Embedder) -> tuple[TestClient, Services]:
    services = Services.from_settings(make_settings(s3_endpoint, new_bucket(s3_endpoint, "dash")), embedder=fake)
    client = TestClient(create_app(services))
    for pid, title, cat, price in PRODUCTS:
        body: dict[str, object] = {"title": title}
        if cat:
            body["category"] = cat
        if price is not None:
            body["price"] = price
        assert client.put(f"/products/{pid}", json=body).status_code == 200
    return client, services


def test_root_opens_the_dashboard(env: tuple[TestClient, Services]) -> None:
    client, _ = env
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="app.js"' in page.text
    for asset, kind in [("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")]:
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset


def test_dashboard_loads_nothing_from_other_hosts(env: tuple[TestClient, Services]) -> None:
    client, _ = env
    for asset in ("/ui/", "/ui/app.js", "/ui/style.css"):
        text = client.get(asset).text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), asset
        assert not re.search(r"https?://", text), asset
        assert "@import" not in text, asset


def test_chart_library_comes_from_the_plotly_wheel(env: tuple[TestClient, Services]) -> None:
    client, _ = env
    wheel = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    r = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert len(r.content) == len(wheel)  # httpx undoes the gzip: the same bytes as the wheel's
    assert int(r.headers["content-length"]) < len(wheel) / 2  # sent compressed
    raw = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and raw.content == wheel
    assert gzip.decompress(gzip.compress(wheel)) == raw.content


def test_stats_describe_catalog_events_uploads_and_traffic(env: tuple[TestClient, Services]) -> None:
    client, services = env
    for q in ["blue shoes", "Blue  Shoes", "red bag"]:
        assert client.post("/search", json={"query": q}).status_code == 200
    assert client.post("/search", json={"query": "x", "top_k": 1000}).status_code == 422
    events = [
        {"user_id": "u1", "product_id": "D1", "event_type": "view", "timestamp": 1_700_000_000},
        {"user_id": "u1", "product_id": "D1", "event_type": "purchase", "timestamp": 1_700_000_100},
        {"user_id": "u2", "product_id": "D4", "event_type": "view", "timestamp": 1_700_000_200},
    ]
    assert client.post("/events", json=events).json()["accepted"] == 3
    lines = [json.dumps({"product_id": "D7", "title": "Wool socks", "category": "Socks", "price": 9}), "{broken"]
    services.store.put_bytes("uploads/batch.jsonl", "\n".join(lines).encode())
    assert services.uploads.process("uploads/batch.jsonl") is not None
    client.get("/ui/")  # the dashboard's own requests are not traffic
    client.get("/stats")

    st = client.get("/stats").json()
    cat = st["catalog"]
    assert cat["products"] == 7 and cat["dataset_version"] == services.catalog.version
    assert [(c["category"], c["count"]) for c in cat["categories"]] == [
        ("Shoes", 3),
        ("Bags", 2),
        ("Socks", 1),
        ("(none)", 1),
    ]
    prices = cat["prices"]
    assert prices["priced"] == 6 and sum(prices["counts"]) == 6
    assert len(prices["edges"]) == len(prices["counts"]) + 1
    assert prices["min"] == 9.0 and prices["max"] == 149.0 and prices["median"] == 74.0

    ev = st["events"]
    assert ev["total"] == 3 and ev["by_type"] == {"view": 2, "purchase": 1} and ev["users"] == 2
    assert [u["user_id"] for u in ev["recent_users"]] == ["u2", "u1"]
    assert ev["recent_users"][1]["events"] == 2

    assert st["uploads"]["by_status"] == {"partial": 1}

    assert st["top_queries"][:2] == [{"query": "blue shoes", "count": 2}, {"query": "red bag", "count": 1}]
    assert st["searches"] == 3

    routes = {r["route"]: r for r in st["traffic"]["routes"]}
    assert routes["POST /search"]["requests"] == 4 and routes["POST /search"]["client_errors"] == 1
    assert routes["PUT /products/{product_id}"]["requests"] == len(PRODUCTS)
    assert not [r for r in routes if "/ui" in r or "/stats" in r or r.endswith(" /")]
    assert routes["POST /search"]["p50_ms"] > 0
    assert st["traffic"]["requests"] == sum(r["requests"] for r in st["traffic"]["routes"])
    assert sum(b["requests"] for b in st["traffic"]["timeline"]) == st["traffic"]["requests"]
    started = datetime.fromisoformat(st["started_at"])
    assert 60 <= st["traffic"]["window_s"] < 900  # a young process: the timeline starts near its start
    assert datetime.fromisoformat(st["traffic"]["timeline"][0]["start"]) >= started - timedelta(seconds=61)


def test_catalog_figures_follow_new_versions(env: tuple[TestClient, Services]) -> None:
    client, _ = env
    before = client.get("/stats").json()["catalog"]
    assert client.put("/products/D8", json={"title": "Sun hat", "category": "Hats", "price": 19}).status_code == 200
    after = client.get("/stats").json()["catalog"]
    assert after["products"] == before["products"] + 1
    assert after["dataset_version"] > before["dataset_version"]
    assert ("Hats", 1) in [(c["category"], c["count"]) for c in after["categories"]]


@pytest.mark.parametrize("query", ["window_minutes=0", "window_minutes=99999", "top=0", "top=abc"])
def test_stats_rejects_bad_parameters(env: tuple[TestClient, Services], query: str) -> None:
    client, _ = env
    r = client.get(f"/stats?{query}")
    assert r.status_code == 422 and r.json()["detail"]
