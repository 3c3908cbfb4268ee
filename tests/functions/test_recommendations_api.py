"""POST /events and the recommendation endpoints through the app (catalog and events on the S3
server, fake embedder): bad events, cold start, personalization, reasons, filters, live retrain."""

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.embedding import Embedder
from core.events import EventLog, parse_events
from core.ingest import PendingProduct
from core.settings import Settings
from core.types import ProductInput
from functions.app import create_app
from functions.jobs import train_recommender
from functions.services import Services
from tests.conftest import make_settings, new_bucket

pytestmark = pytest.mark.integration

CATEGORIES = {"Shoes": (40, 120), "Bags": (20, 90), "Books": (5, 30), "Toys": (8, 60)}


@dataclass
class Env:
    client: TestClient
    services: Services
    settings: Settings
    titles: dict[str, str]


def _catalog() -> list[dict[str, object]]:
    rng = np.random.default_rng(3)
    out = []
    for cat, (lo, hi) in CATEGORIES.items():
        for i in range(12):
            pid = f"{cat[:2].upper()}{i:02d}"
            out.append(
                {
                    "product_id": pid,
                    "title": f"{cat[:-1]} model {i}",
                    "category": cat,
                    "price": float(rng.integers(lo, hi)),
                    "description": f"a {cat.lower()} item number {i}",
                }
            )
    return out


def _history() -> list[dict[str, object]]:
    """Shoe people buy shoes (and sometimes bags); book people buy books and toys."""
    rng = np.random.default_rng(5)
    events: list[dict[str, object]] = []
    t = 1_700_000_000
    for u in range(30):
        pool = [f"SH{i:02d}" for i in range(12)] if u < 15 else [f"BO{i:02d}" for i in range(12)]
        extra = [f"BA{i:02d}" for i in range(12)] if u < 15 else [f"TO{i:02d}" for i in range(12)]
        for pid in list(rng.choice(pool, 5, replace=False)) + list(rng.choice(extra, 2, replace=False)):
            t += 30
            etype = str(rng.choice(["view", "click", "add_to_cart", "purchase"]))
            events.append({"user_id": f"u{u}", "product_id": str(pid), "event_type": etype, "timestamp": t})
    return events


@pytest.fixture(scope="module")
def env(s3_endpoint: str, fake: Embedder) -> Iterator[Env]:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs"), recs_refresh_seconds=0.2)
    services = Services.from_settings(settings, embedder=fake)
    products = _catalog()
    report = services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    assert report.indexed == len(products)
    client = TestClient(create_app(services))
    yield Env(client, services, settings, {str(p["product_id"]): str(p["title"]) for p in products})


def test_products_this_process_indexes_are_recommendable_at_once(s3_endpoint: str, fake: Embedder) -> None:
    """Read-your-writes without the background refresh: however soon after indexing the request
    comes (here the refresh interval is an hour), this process's new products are served."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs-ryw"), recs_refresh_seconds=3600)
    services = Services.from_settings(settings, embedder=fake)
    client = TestClient(create_app(services))
    assert client.get("/recommendations/nobody").json()["strategy"] == "empty"
    products = _catalog()[:6]
    services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    body = client.get("/recommendations/nobody", params={"top_k": 10}).json()
    assert body["strategy"] == "newest"
    assert {r["product_id"] for r in body["recommendations"]} == {p["product_id"] for p in products}


def test_an_event_window_leaves_old_events_out_of_histories(s3_endpoint: str, fake: Embedder) -> None:
    """RECS_EVENT_WINDOW_DAYS: a query process holds only the events of the window, whichever
    way they arrive (read from the table, posted to it later)."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs-win"), recs_event_window_days=30)
    services = Services.from_settings(settings, embedder=fake)
    products = _catalog()[:4]
    services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    now = time.time()
    ids = [str(p["product_id"]) for p in products]
    raw = [
        {"user_id": "u", "product_id": ids[0], "event_type": "purchase", "timestamp": now - 60 * 86400},
        {"user_id": "u", "product_id": ids[1], "event_type": "view", "timestamp": now - 86400},
    ]
    good, bad = parse_events(raw)
    assert not bad
    services.events.append(good)
    client = TestClient(create_app(services))
    with client:  # the lifespan's first refresh reads the table
        assert [e["product_id"] for e in client.get("/users/u/history").json()["events"]] == [ids[1]]
        body = [
            {"user_id": "u", "product_id": ids[3], "event_type": "view", "timestamp": now - 3600},
            {"user_id": "u", "product_id": ids[2], "event_type": "view", "timestamp": now - 90 * 86400},
        ]
        assert client.post("/events", json=body).status_code == 202  # both stored; the old one is not held
        assert [e["product_id"] for e in client.get("/users/u/history").json()["events"]] == [ids[3], ids[1]]


def test_the_refresh_thread_serves_this_processs_new_products_without_waiting_for_its_tick(
    s3_endpoint: str, fake: Embedder
) -> None:
    """Read-your-writes with the background refresh running (the server's normal mode) and its
    interval an hour: commits wake the thread (it takes them up once they pause), so new products
    are served, and events on them personalize, within seconds."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs-wake"), recs_refresh_seconds=3600)
    services = Services.from_settings(settings, embedder=fake)
    rec = services.recommender
    rec.start()
    client = TestClient(create_app(services))

    def served_within(seconds: float, user: str, ok: object) -> dict[str, object]:
        deadline = time.monotonic() + seconds
        while True:
            body: dict[str, object] = client.get(f"/recommendations/{user}", params={"top_k": 50}).json()
            if ok(body):  # type: ignore[operator]
                return body
            assert time.monotonic() < deadline, f"not served after {seconds} s: {body}"
            time.sleep(0.05)

    try:
        assert rec.in_memory and client.get("/recommendations/nobody").json()["strategy"] == "empty"
        first, second = _catalog()[:6], _catalog()[12:18]
        for batch in (first, second):  # two commits in a row
            services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in batch])
        ids = {str(p["product_id"]) for p in first + second}
        served_within(10, "nobody", lambda b: {r["product_id"] for r in b["recommendations"]} == ids)
        r = client.post("/events", json={"user_id": "fan", "product_id": "BA00", "event_type": "purchase"})
        assert r.json()["accepted"] == 1
        body = served_within(10, "fan", lambda b: b["strategy"] == "content")  # no model trained yet
        recs = body["recommendations"]
        assert recs and "BA00" not in {r["product_id"] for r in recs}  # seen, excluded
        assert all(r["reason"] == "Similar to Bag model 0, which you bought" for r in recs)
    finally:
        rec.stop()


def test_continuous_writes_do_not_starve_the_timed_refresh(s3_endpoint: str, fake: Embedder) -> None:
    """Commits that keep coming (a bulk import) are left to the timed refresh: no extra catalog
    reads while they last, and events from other writers and new models still arrive every
    RECS_REFRESH_SECONDS. Once the commits pause, the wake-up takes them up."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs-starve"), recs_refresh_seconds=0.5)
    services = Services.from_settings(settings, embedder=fake)
    rec = services.recommender
    calls = {"full": 0, "catalog": 0}
    full, catalog_only = rec.refresh, rec.refresh_catalog

    def counted_full() -> None:
        calls["full"] += 1
        full()

    def counted_catalog() -> None:
        calls["catalog"] += 1
        catalog_only()

    rec.refresh, rec.refresh_catalog = counted_full, counted_catalog  # type: ignore[method-assign]
    rec.start()
    try:
        calls.update(full=0, catalog=0)
        until = time.monotonic() + 3.0
        while time.monotonic() < until:  # a commit every 20 ms, as in a bulk import
            rec._wake.set()
            time.sleep(0.02)
        assert calls["full"] >= 3, calls  # ~6 ticks in 3 s; without the due check in the loop: 0
        assert calls["catalog"] == 0, calls  # never a pause of WAKE_SETTLE_SECONDS
        ticks, deadline = calls["full"], time.monotonic() + 2
        while calls["full"] == ticks:  # right after a tick, so the next one is 0.5 s away
            assert time.monotonic() < deadline, calls
            time.sleep(0.005)
        rec._wake.set()  # one more commit, then quiet: taken up after the 0.2 s pause
        deadline = time.monotonic() + 0.4
        while calls["catalog"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls["catalog"] == 1, calls
    finally:
        rec.stop()


def test_no_events_means_newest_products(env: Env) -> None:
    body = env.client.get("/recommendations/nobody", params={"top_k": 4, "category": "Books"}).json()
    assert body["strategy"] == "newest" and len(body["recommendations"]) == 4
    assert all(r["category"] == "Books" and r["reason"] == "New in Books" for r in body["recommendations"])


def test_post_events_accepts_good_items_and_reports_bad_ones(env: Env) -> None:
    r = env.client.post("/events", json={"user_id": "solo", "product_id": "SH00", "event_type": "view"})
    assert r.status_code == 202 and r.json() == {"accepted": 1, "rejected": 0, "errors": []}
    batch = [
        {"user_id": "solo", "product_id": "SH01", "event_type": "purchase", "timestamp": "2025-01-01T00:00:00Z"},
        {"user_id": "solo", "product_id": "SH02", "event_type": "rating", "value": 11},
        {"user_id": "solo", "event_type": "view"},
        {"user_id": "solo", "product_id": "SH03", "event_type": "dance"},
        {"user_id": "solo", "product_id": "SH04", "event_type": "view", "timestamp": "not a time"},
        {"user_id": "solo", "product_id": "NOT-YET-INDEXED", "event_type": "view"},
    ]
    r = env.client.post("/events", json=batch)
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 4
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 4]
    assert "1 to 5" in body["errors"][0]["detail"] and "product_id" in body["errors"][1]["detail"]
    assert "event_type" in body["errors"][2]["detail"] and "timestamp" in body["errors"][3]["detail"]
    r = env.client.post("/events", json=[{"user_id": "solo", "event_type": "nope"}])
    assert r.status_code == 422 and r.json()["accepted"] == 0 and r.json()["errors"][0]["index"] == 0
    assert env.client.post("/events", json=[]).status_code == 422
    assert env.client.post("/events", content=b"{oops", headers={"content-type": "application/json"}).status_code == 422
    history = env.client.get("/users/solo/history").json()["events"]
    assert [h["product_id"] for h in history] == ["NOT-YET-INDEXED", "SH00", "SH01"]  # newest first, by timestamp
    assert history[0]["title"] is None and history[1]["title"] == env.titles["SH00"]


def test_too_many_events_in_one_request(s3_endpoint: str, fake: Embedder) -> None:
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "lim"), max_events_per_request=3)
    client = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    items = [{"user_id": "u", "product_id": "p", "event_type": "view"}] * 4
    r = client.post("/events", json=items)
    assert r.status_code == 413 and "limit is 3" in r.json()["detail"]


def _reason_items(reason: str, titles: dict[str, str]) -> set[str]:
    return {pid for pid, title in titles.items() if re.search(rf"\b{re.escape(title)}\b", reason)}


def test_personalized_after_training_with_true_reasons_filters_and_exclusion(env: Env) -> None:
    assert env.client.post("/events", json=_history()).json()["accepted"] == 30 * 7
    report = train_recommender(env.settings)
    assert report is not None and report.events >= 30 * 7
    env.services.recommender.refresh()
    r = env.client.get("/recommendations/u1", params={"top_k": 6})
    body = r.json()
    assert body["strategy"] == "personalized" and body["model"] == report.key
    recs = body["recommendations"]
    seen = {h["product_id"] for h in env.client.get("/users/u1/history").json()["events"]}
    assert len(recs) == 6 and not seen & {x["product_id"] for x in recs}
    # A shoe person gets shoes and bags, not books or toys.
    assert all(x["category"] in ("Shoes", "Bags") for x in recs), recs
    for x in recs:
        assert x["reason"], x
        if not x["reason"].startswith("Popular"):
            referenced = _reason_items(x["reason"], env.titles)
            assert referenced and referenced <= seen, x  # the reason names something the user really did
    filtered = env.client.get("/recommendations/u1", params={"top_k": 20, "category": "Bags", "max_price": 60})
    assert filtered.status_code == 200 and filtered.json()["recommendations"]
    assert all(x["category"] == "Bags" and x["price"] <= 60 for x in filtered.json()["recommendations"])
    again = env.client.get("/recommendations/u1", params={"top_k": 48, "exclude_seen": "false"}).json()
    assert seen & {x["product_id"] for x in again["recommendations"]}


def test_cold_start_user_gets_popular_items_with_reasons(env: Env) -> None:
    body = env.client.get("/recommendations/brand-new-user", params={"top_k": 5}).json()
    assert body["strategy"] == "popular" and len(body["recommendations"]) == 5
    assert all(re.match(r"Popular in (Shoes|Bags|Books|Toys)", x["reason"]) for x in body["recommendations"])


def test_a_new_event_changes_recommendations_before_any_retraining(env: Env) -> None:
    user = "fresh-book-reader"
    assert env.client.get(f"/recommendations/{user}").json()["strategy"] == "popular"
    env.client.post("/events", json=[{"user_id": user, "product_id": "BO03", "event_type": "purchase"}])
    body = env.client.get(f"/recommendations/{user}", params={"top_k": 5}).json()
    assert body["strategy"] == "personalized"
    assert "BO03" not in {x["product_id"] for x in body["recommendations"]}
    assert sum(x["category"] in ("Books", "Toys") for x in body["recommendations"]) >= 4, body


def test_events_from_another_process_and_a_retrained_model_are_picked_up_live(env: Env) -> None:
    rec = env.services.recommender
    rec.start()
    try:
        other = EventLog.open(env.settings)  # another process writing straight to the dataset
        good, _ = parse_events([{"user_id": "elsewhere", "product_id": "TO05", "event_type": "purchase"}])
        other.append(good)
        deadline = time.time() + 15
        while not rec.state.history("elsewhere") and time.time() < deadline:
            time.sleep(0.1)
        assert [h.product_id for h in rec.state.history("elsewhere")] == ["TO05"]
        before = rec.model_key
        report = train_recommender(env.settings)
        assert report is not None and report.key != before
        while rec.model_key != report.key and time.time() < deadline:
            time.sleep(0.1)
        assert rec.model_key == report.key
        assert env.client.get("/recommendations/u3").json()["model"] == report.key
    finally:
        rec.stop()


def test_more_like_these(env: Env) -> None:
    r = env.client.post("/recommendations", json={"positive": ["SH01", "SH02"], "negative": ["BO01"], "top_k": 5})
    assert r.status_code == 200
    recs = r.json()["recommendations"]
    assert len(recs) == 5 and not {"SH01", "SH02", "BO01"} & {x["product_id"] for x in recs}
    assert all(x["category"] in ("Shoes", "Bags") for x in recs), recs
    assert all(x["reason"] in (f"Like {env.titles['SH01']}", f"Like {env.titles['SH02']}") for x in recs)
    assert env.client.post("/recommendations", json={"positive": ["missing"]}).status_code == 404
    assert env.client.post("/recommendations", json={"positive": []}).status_code == 422


def test_events_need_the_api_key_unless_public(s3_endpoint: str, fake: Embedder) -> None:
    event = {"user_id": "u", "product_id": "p", "event_type": "view"}
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "key"), api_key="k1")
    client = TestClient(create_app(Services.from_settings(settings, embedder=fake)))
    assert client.post("/events", json=event).status_code == 401
    assert client.post("/events", json=event, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.post("/events", json=event, headers={"Authorization": "Bearer k1"}).status_code == 202
    public = make_settings(s3_endpoint, new_bucket(s3_endpoint, "pub"), api_key="k1", events_public=True)
    client = TestClient(create_app(Services.from_settings(public, embedder=fake)))
    assert client.post("/events", json=event).status_code == 202


def test_products_indexed_before_start_are_served_from_the_first_request(s3_endpoint: str, fake: Embedder) -> None:
    """The dev runner seeds its sample after building the services; the first request after the
    app starts must already see those products (regression: it answered "empty" for ~2 s)."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "start"), recs_refresh_seconds=60)
    services = Services.from_settings(settings, embedder=fake)
    items = [PendingProduct(ProductInput.from_mapping({"product_id": f"N{i}", "title": f"New {i}"})) for i in range(3)]
    assert services.indexer.index(items).indexed == 3
    with TestClient(create_app(services)) as client:  # runs the lifespan: recommender.start()
        body = client.get("/recommendations/anyone").json()
    assert body["strategy"] == "newest" and len(body["recommendations"]) == 3


def test_as_of_replays_the_past(s3_endpoint: str, fake: Embedder) -> None:
    """`as_of` computes every time signal as of that moment from the events before it: what was
    trending then leads the cold start, and a user's later events do not count yet."""
    settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "recs-as-of"), recs_refresh_seconds=0.2)
    services = Services.from_settings(settings, embedder=fake)
    products = _catalog()
    services.indexer.index([PendingProduct(ProductInput.from_mapping(p)) for p in products])
    client = TestClient(create_app(services))
    day, t0 = 86400, 1_700_000_000
    events: list[dict[str, object]] = []
    for u in range(20):  # January: shoes; a hundred days later: books
        events.append({"user_id": f"a{u}", "product_id": "SH00", "event_type": "purchase", "timestamp": t0 + u})
        events.append(
            {"user_id": f"b{u}", "product_id": "BO00", "event_type": "purchase", "timestamp": t0 + 100 * day + u}
        )
    events.append({"user_id": "late", "product_id": "TO01", "event_type": "purchase", "timestamp": t0 + 50 * day})
    assert client.post("/events", json=events).status_code == 202

    def top(user: str, at: float | str) -> dict[str, object]:
        r = client.get(f"/recommendations/{user}", params={"top_k": 3, "as_of": at})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    then = top("newbie", t0 + 2 * day)
    assert then["recommendations"][0]["product_id"] == "SH00", then  # type: ignore[index]
    assert then["recommendations"][0]["reason"] == "Popular in Shoes this week"  # type: ignore[index]
    iso = top("newbie", "2023-11-15T22:13:20+00:00")  # ISO-8601 works too: t0 + 1 day
    assert iso["recommendations"][0]["product_id"] == "SH00"  # type: ignore[index]
    now = top("newbie", t0 + 102 * day)
    assert now["recommendations"][0]["product_id"] == "BO00", now  # type: ignore[index]
    assert top("late", t0 + 20 * day)["strategy"] == "popular"  # the purchase 30 days later does not count yet
    after = top("late", t0 + 60 * day)
    assert after["strategy"] != "popular" and "TO01" not in {r["product_id"] for r in after["recommendations"]}  # type: ignore[attr-defined]
    for bad in ("yesterday", str(time.time() + 7 * day)):
        r = client.get("/recommendations/newbie", params={"as_of": bad})
        assert r.status_code in (400, 422) and "as_of" in r.json()["detail"], r.text
