"""Merchandising through HTTP: stock, pins, exclusions and boosts on search, similar and
recommendations, and saved rules (versioned in the bucket, applied by every process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from core.ingest import PendingProduct
from core.types import Filters, ProductInput
from functions.app import create_app
from functions.services import Services
from local.sample import generate
from tests.conftest import make_settings, new_bucket

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shop(s3_endpoint: str, fake: Embedder) -> tuple[TestClient, Services, str]:
    bucket = new_bucket(s3_endpoint, "merch")
    services = Services.from_settings(make_settings(s3_endpoint, bucket), embedder=fake)
    items = []
    for p in generate(24, image_size=32):
        rec = {k: v for k, v in p.record.items() if k != "image"}
        items.append(PendingProduct(ProductInput.from_mapping(rec), image_bytes=p.image or None))
    assert services.indexer.index(items).indexed == 24
    assert services.hot is not None
    services.hot.refresh()
    return TestClient(create_app(services)), services, bucket


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["product_id"] for r in rows]


def search(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/search", json={"top_k": 24, **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_out_of_stock_products_are_hidden_unless_asked_for(shop: tuple[TestClient, Services, str]) -> None:
    c, _, _ = shop
    r = c.put("/products/OOS-1", json={"title": "Quokka plush toy", "category": "Toys", "in_stock": False})
    assert r.status_code == 200 and r.json()["in_stock"] is False
    assert c.get("/products/OOS-1").json()["in_stock"] is False  # kept in the catalog
    assert "OOS-1" not in ids(search(c, query="quokka plush toy", mode="keyword")["results"])
    found = search(c, query="quokka plush toy", mode="keyword", include_out_of_stock=True)["results"]
    assert ids(found) == ["OOS-1"] and found[0]["in_stock"] is False
    assert "OOS-1" not in ids(c.get("/similar/S00001?top_k=30").json()["similar_products"])
    assert "OOS-1" in ids(c.get("/similar/S00001?top_k=30&include_out_of_stock=true").json()["similar_products"])
    recs = c.get("/recommendations/nobody?top_k=30").json()["recommendations"]
    assert "OOS-1" not in ids(recs) and len(recs) == 24
    assert "OOS-1" in ids(c.get("/recommendations/nobody?top_k=30&include_out_of_stock=true").json()["recommendations"])
    suggested = c.get("/suggest", params={"q": "quokka pl"}).json()["suggestions"]
    assert all(s.get("product_id") != "OOS-1" for s in suggested)
    # Back in stock: served again.
    c.put("/products/OOS-1", json={"title": "Quokka plush toy", "category": "Toys"})
    assert ids(search(c, query="quokka plush toy", mode="keyword")["results"]) == ["OOS-1"]
    suggested = c.get("/suggest", params={"q": "quokka pl"}).json()["suggestions"]
    assert "OOS-1" in [s.get("product_id") for s in suggested]
    c.delete("/products/OOS-1")


def test_pins_exclusions_and_boosts_on_search(shop: tuple[TestClient, Services, str]) -> None:
    c, _, _ = shop
    plain = search(c, query="shoes")
    order = ids(plain["results"])
    pins = [order[-1], order[-3]]
    pinned = search(c, query="shoes", pin=pins)
    assert ids(pinned["results"])[:2] == pins
    assert ids(pinned["results"]) == pins + [p for p in order if p not in pins]  # not repeated below
    assert pinned["total_matches"] == plain["total_matches"]
    # Pages stay slices of the one (pinned) ranking.
    pages = [ids(search(c, query="shoes", pin=pins, top_k=5, offset=o)["results"]) for o in (0, 5, 10)]
    assert [p for page in pages for p in page] == ids(pinned["results"])[:15]
    # A pinned product the filters leave out is not placed.
    cat = plain["results"][0]["category"]
    only = search(c, query="shoes", pin=pins, filters={"category": cat})["results"]
    assert all(r["category"] == cat for r in only)
    excluded = search(c, query="shoes", exclude_ids=order[:3])
    assert (
        not set(order[:3]) & set(ids(excluded["results"])) and excluded["total_matches"] == plain["total_matches"] - 3
    )
    # A boosted category comes first: the boost multiplies (a negative score: divides) each score.
    boosted = search(c, query="shoes", boost=[{"filters": {"category": "Bags"}, "factor": 20}])["results"]
    rows = plain["results"]
    want = sorted(
        range(len(rows)),
        key=lambda i: (
            -(rows[i]["score"] * (20 if rows[i]["category"] == "Bags" else 1) ** (1 if rows[i]["score"] >= 0 else -1)),
            i,
        ),
    )
    assert ids(boosted) == [rows[i]["product_id"] for i in want]
    lifted = [r for r in rows if r["category"] == "Bags" and r["score"] > 0]
    assert len(lifted) >= 2 and [r["category"] for r in boosted[: len(lifted)]] == ["Bags"] * len(lifted)
    assert rows[0]["category"] != "Bags"


def test_pins_exclusions_and_boosts_on_similar_and_recommendations(shop: tuple[TestClient, Services, str]) -> None:
    c, _, _ = shop
    base = ids(c.get("/similar/S00002?top_k=10").json()["similar_products"])
    r = c.get("/similar/S00002", params={"top_k": 5, "pin": f"S00002,{base[-1]}", "exclude_ids": base[0]})
    got = ids(r.json()["similar_products"])
    assert got[0] == base[-1] and "S00002" not in got and base[0] not in got and len(got) == 5
    boost = json.dumps([{"filters": {"category": "Home"}, "factor": 50}])
    home = c.get("/similar/S00002", params={"top_k": 3, "boost": boost}).json()["similar_products"]
    assert [p["category"] for p in home] == ["Home"] * 3
    recs = c.get("/recommendations/u1", params={"top_k": 4, "pin": "S00007", "exclude_ids": "S00001"}).json()
    assert recs["recommendations"][0]["product_id"] == "S00007" and "S00001" not in ids(recs["recommendations"])
    more = c.post("/recommendations", json={"positive": ["S00003"], "top_k": 3, "pin": ["S00004", "S00003"]}).json()
    assert ids(more["recommendations"])[0] == "S00004" and "S00003" not in ids(more["recommendations"])
    bad = c.get("/similar/S00002", params={"boost": '[{"filters": {}, "factor": 0}]'})
    assert bad.status_code == 422 and "boost" in bad.json()["detail"]
    assert c.get("/similar/S00002", params={"boost": "not json"}).status_code == 422


def test_saved_rules_fire_for_their_query_inside_their_dates(shop: tuple[TestClient, Services, str]) -> None:
    c, services, _ = shop
    now = datetime.now(UTC)
    order = ids(search(c, query="bag")["results"])
    rules = {
        "rules": [
            {"id": "sale", "when": {"query": "Bag!"}, "pin": [order[-1]], "bury": [order[0]]},
            {
                "id": "later",
                "when": {"query": "bag"},
                "pin": [order[-2]],
                "active_from": (now + timedelta(days=1)).isoformat(),
            },
            {"id": "home", "when": {"category": "Home"}, "pin": ["S00005", "S00004"]},
        ]
    }
    r = c.put("/rules", json=rules)
    assert r.status_code == 200, r.text
    assert r.json()["version"] >= 1 and [x["id"] for x in r.json()["rules"]] == ["sale", "later", "home"]
    fired = search(c, query="  BAG ")
    assert fired["applied_rules"] == ["sale"]  # "later" is not active yet
    got = ids(fired["results"])
    assert got[0] == order[-1] and got[-1] == order[0]
    assert search(c, query="bag strap")["applied_rules"] == []
    similar = c.get("/similar/S00001", params={"category": "Home"}).json()
    assert (
        similar["applied_rules"] == ["home"] and ids(similar["similar_products"])[0] == "S00005"
    )  # S00004 is not in Home: not placed
    assert c.get("/rules").json() == r.json()
    # Another process applies the saved rules after its refresh.
    other = Services.from_settings(services.settings, embedder=services.embedder)
    assert other.rules.current().version == r.json()["version"]
    assert [x.id for x in other.rules.current().fired("bag", Filters())] == ["sale"]
    # A new save is the next version; an empty list removes every rule.
    cleared = c.put("/rules", json={"rules": []}).json()
    assert cleared["version"] == r.json()["version"] + 1 and search(c, query="bag")["applied_rules"] == []
    other.rules.refresh()
    assert other.rules.current().rules == ()


@pytest.mark.parametrize(
    "body",
    [
        {"rules": [{"id": "a", "when": {"query": "x", "category": "y"}, "pin": ["P"]}]},
        {
            "rules": [
                {"id": "a", "when": {"query": "x"}, "pin": ["P"]},
                {"id": "a", "when": {"query": "y"}, "pin": ["P"]},
            ]
        },
        {"rules": [{"id": "a", "when": {"query": "x"}}]},
        {"rules": [{"id": "a", "when": {"query": "x"}, "boost": [{"filters": {}, "factor": 0}]}]},
        {
            "rules": [
                {
                    "id": "a",
                    "when": {"query": "x"},
                    "pin": ["P"],
                    "active_from": "2030-01-02",
                    "active_until": "2030-01-01",
                }
            ]
        },
        {"rules": [{"id": "a", "when": {"query": "x"}, "pin": ["P"], "colour": "red"}]},
        {"rule": []},
    ],
)
def test_bad_rules_are_422_and_change_nothing(shop: tuple[TestClient, Services, str], body: dict[str, Any]) -> None:
    c, _, _ = shop
    before = c.get("/rules").json()
    r = c.put("/rules", json=body)
    assert r.status_code == 422, r.text
    assert c.get("/rules").json() == before


def test_rules_need_the_api_key_when_one_is_set(s3_endpoint: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "rk"), api_key="k-9")
    c = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    body = {"rules": [{"id": "a", "when": {"query": "x"}, "pin": ["P"]}]}
    assert c.put("/rules", json=body).status_code == 401
    assert c.get("/rules").status_code == 401
    ok = c.put("/rules", json=body, headers={"Authorization": "Bearer k-9"})
    assert ok.status_code == 200 and ok.json()["version"] == 1


def test_bought_together_from_baskets_without_training(shop: tuple[TestClient, Services, str]) -> None:
    c, _, _ = shop
    now = datetime.now(UTC).timestamp() - 3 * 86400
    events = []
    for k in range(12):  # S00010 and S00011 share 6 baskets; S00012 is in every one
        u, ts = f"bt{k}", now + k * 3600
        events.append({"user_id": u, "product_id": "S00012", "event_type": "purchase", "timestamp": ts})
        if k % 2 == 0:
            events.append({"user_id": u, "product_id": "S00010", "event_type": "add_to_cart", "timestamp": ts + 30})
            events.append({"user_id": u, "product_id": "S00011", "event_type": "purchase", "timestamp": ts + 90})
        else:
            events.append(
                {"user_id": u, "product_id": f"S0001{3 + k % 3}", "event_type": "purchase", "timestamp": ts + 30}
            )
    assert c.post("/events", json=events).status_code == 202
    r = c.get("/products/S00010/bought-together", params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    title = c.get("/products/S00010").json()["title"]
    assert body["product_id"] == "S00010" and body["products"][0]["product_id"] == "S00011"
    assert body["products"][0]["reason"] == f"Often bought together with {title}"
    assert "S00012" not in ids(body["products"])
    # Filters and stock apply; an unknown product is 404.
    rec = c.get("/products/S00011").json()
    c.put("/products/S00011", json={"title": rec["title"], "category": rec["category"], "in_stock": False})
    assert "S00011" not in ids(c.get("/products/S00010/bought-together").json()["products"])
    shown = c.get("/products/S00010/bought-together", params={"include_out_of_stock": "true"}).json()
    assert ids(shown["products"])[0] == "S00011" and shown["products"][0]["in_stock"] is False
    c.put("/products/S00011", json={"title": rec["title"], "category": rec["category"]})
    assert c.get("/products/NOPE/bought-together").status_code == 404
