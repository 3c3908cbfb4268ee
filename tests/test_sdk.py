"""The SDK against a live server (uvicorn on loopback, fake embedder, catalog on the S3 server)."""

import dataclasses
import threading
import time
import typing
from collections.abc import Iterator
from typing import Any

import pytest

import sdk
from functions.app import create_app
from functions.services import Services
from sdk import AuthError, NotFoundError, RecommendationClient, ServerError, ValidationError
from tests.conftest import make_settings
from tests.helpers import jpeg, serve

pytestmark = pytest.mark.integration


@pytest.fixture
def live_url(s3_endpoint: str, bucket: str, fake: object) -> Iterator[str]:
    settings = make_settings(s3_endpoint, bucket, api_key="sdk-key")
    with serve(create_app(Services.from_settings(settings, embedder=fake))) as url:  # type: ignore[arg-type]
        yield url


def test_sdk_round_trip(live_url: str) -> None:
    with RecommendationClient(live_url, api_key="sdk-key") as client:
        assert client.health()["database_connected"] is True
        red = jpeg((220, 20, 20))
        p = client.put_product("R1", "Red canvas tote bag", category="Bags", price=25.0, image=red, color="red")
        assert p.product_id == "R1" and p.attributes == {"color": "red"} and p.image_url
        client.put_product("B1", "Blue ceramic mug", category="Home", price=12.0, image=jpeg((20, 20, 220)))
        client.put_product("T1", "Plain text-only gift card", price=50.0)
        hits = client.search("red tote bag", top_k=3)
        assert hits[0].product_id == "R1" and hits[0].score > hits[-1].score
        assert [h.product_id for h in client.search("mug", category="Home")] == ["B1"]
        by_word = client.search("gift", mode="keyword")
        assert [h.product_id for h in by_word] == ["T1"] and by_word[0].keyword_score
        assert all(h.keyword_score is None for h in client.search("gift", mode="vector"))
        assert client.search_image(red, top_k=1)[0].product_id == "R1"
        page = client.search_page("bag mug", top_k=1, offset=1, sort="price_asc", facets=["category", "price"])
        assert page.total_matches == 3 and [r.product_id for r in page.results] == ["R1"]  # 12 < 25 < 50
        assert {f["value"]: f["count"] for f in page.facets["category"]} == {"Bags": 1, "Home": 1}
        assert [r.product_id for r in client.search_page("tote", attributes={"color": "red"}).results] == ["R1"]
        similar = client.find_similar("R1", top_k=5)
        assert {s.product_id for s in similar} == {"B1", "T1"}
        # New products reach the recommender's in-memory snapshot once its refresh thread, woken by the commit, ran.
        deadline = time.time() + 10
        while len(recs := client.get_recommendations("U9", top_k=2)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(recs) == 2 and all(r.reason.startswith("New in") for r in recs)
        client.track("U9", "R1", "purchase")
        with pytest.raises(ValidationError) as bad:
            client.send_events([{"user_id": "U9", "product_id": "B1", "event_type": "nope"}])
        assert bad.value.status == 422
        recs = client.get_recommendations("U9", top_k=2)
        assert "R1" not in [r.product_id for r in recs]  # what U9 bought is not recommended back
        like = client.more_like_these(["R1"], top_k=2)
        assert like and all(r.product_id != "R1" and r.reason == "Like Red canvas tote bag" for r in like)
        assert client.get_product("T1").price == 50.0
        with pytest.raises(NotFoundError):
            client.get_product("nope")
        with pytest.raises(ValidationError) as err:
            client.search("x", top_k=500)
        assert err.value.status == 422
        client.delete_product("T1")
        with pytest.raises(NotFoundError):
            client.find_similar("T1")
        green = jpeg((20, 200, 30))
        two = client.put_product("G2", "Green and red scarf", image=red, images=[green])
        assert len(two.images) == 2 == len(two.image_urls) and two.image == two.images[0]
        assert client.get_image("G2", 1) == green and client.get_image("G2") == red
        assert client.put_product("G2", "Green and red scarf", image_keys=two.images[::-1]).images == two.images[::-1]
        with pytest.raises(NotFoundError):
            client.get_image("G2", 2)
        # Merchandising: stock, pins, exclusions, boosts, saved rules, bought together.
        assert client.put_product("OUT", "Blue ceramic bowl", category="Home", in_stock=False).in_stock is False
        assert "OUT" not in [h.product_id for h in client.search("ceramic", top_k=10)]
        shown = client.search("ceramic", top_k=10, include_out_of_stock=True)
        assert "OUT" in [h.product_id for h in shown] and not next(h for h in shown if h.product_id == "OUT").in_stock
        assert [h.product_id for h in client.search("ceramic", pin=["G2"], exclude_ids=["B1"])][:1] == ["G2"]
        home = client.search(
            "scarf", boost=[{"filters": {"category": "Home"}, "factor": 100}], include_out_of_stock=True
        )
        assert home[0].category == "Home"
        assert client.find_similar("R1", top_k=2, pin=["G2"])[0].product_id == "G2"
        saved = client.put_rules([{"id": "scarves", "when": {"query": "scarf"}, "pin": ["B1"]}])
        assert client.get_rules() == saved and saved["version"] >= 1
        page = client.search_page("Scarf!")
        assert page.applied_rules == ["scarves"] and page.results[0].product_id == "B1"
        baskets = [("R1", "G2")] * 3 + [("B1",), ("B1",)]  # R1 and G2 together, B1 alone
        client.send_events(
            [
                {"user_id": f"bt{k}", "product_id": p, "event_type": "purchase"}
                for k, basket in enumerate(baskets)
                for p in basket
            ]
        )
        deadline = time.time() + 10  # G2 reaches the recommender's snapshot with its refresh
        while not (together := client.bought_together("R1")) and time.time() < deadline:
            time.sleep(0.2)
        assert together and together[0].product_id == "G2" and together[0].reason.startswith("Often bought together")
    with RecommendationClient(live_url) as anonymous, pytest.raises(AuthError) as auth:
        anonymous.put_product("X", "no key")
    assert auth.value.status == 401


@pytest.mark.slow
def test_sdk_retries_busy_answers_and_events_stay_idempotent(s3_endpoint: str, bucket: str, fake: object) -> None:
    """One request at a time, no queueing: concurrent callers get 429 + Retry-After, which the
    client retries with backoff; without retries the caller sees ServerError(429)."""
    settings = make_settings(s3_endpoint, bucket, max_concurrent_requests=1, queue_wait_seconds=0)
    services = Services.from_settings(settings, embedder=fake)  # type: ignore[arg-type]
    with serve(create_app(services)) as url:
        with RecommendationClient(url) as c:
            for i in range(4):
                c.put_product(f"L{i}", f"lamp {i}")

        sent: list[int] = []

        def hammer(retries: int, failures: list[Exception]) -> None:
            with RecommendationClient(url, retries=retries, backoff=0.05) as c:
                for _ in range(3):
                    try:
                        c.search("lamp")
                        c.send_events([{"user_id": "u", "product_id": "L1", "event_type": "view"}])
                        sent.append(1)
                    except ServerError as exc:
                        failures.append(exc)

        def run(retries: int) -> list[Exception]:
            failures: list[Exception] = []
            threads = [threading.Thread(target=hammer, args=(retries, failures)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return failures

        without = run(0)
        assert without and all(getattr(e, "status", None) == 429 for e in without)
        assert run(8) == []
        stored = services.events.read().column("event_id").to_pylist()
        assert len(stored) == len(set(stored)) == len(sent) >= 12  # each accepted event once


SDK_MODELS = {
    sdk.SearchResult: "SearchResult",
    sdk.SimilarProduct: "SimilarProduct",
    sdk.Recommendation: "Recommendation",
    sdk.Product: "ProductOut",
}
JSON_TYPES = {
    str: "string",
    float: "number",
    int: "integer",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


def json_types(hint: Any) -> set[str]:
    """The JSON types a Python annotation of the SDK allows."""
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) not in (dict, list):
        return set().union(*(json_types(a) for a in args))
    return {JSON_TYPES[typing.get_origin(hint) or hint]}


def schema_types(prop: dict[str, Any]) -> set[str]:
    if "anyOf" in prop:
        return set().union(*(schema_types(p) for p in prop["anyOf"]))
    return {prop["type"]}


@pytest.mark.parametrize("model", list(SDK_MODELS), ids=lambda m: m.__name__)
def test_sdk_models_match_the_openapi_schema(services: Services, model: type) -> None:
    """Every field of an SDK result model is in the served schema with the same JSON types, and
    every field the server always sends is one the SDK reads (a renamed or retyped field fails)."""
    schema = create_app(services).openapi()["components"]["schemas"][SDK_MODELS[model]]
    props, required = schema["properties"], set(schema.get("required", []))
    hints = typing.get_type_hints(model)
    for name, f in model.__dataclass_fields__.items():
        assert name in props, f"{model.__name__}.{name} is not in the API's {SDK_MODELS[model]}"
        assert json_types(hints[name]) == schema_types(props[name]), name
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if not has_default:
            assert name in required, f"{model.__name__}.{name} has no default but the API may leave it out"
    sdk_only_optional = {"image_similarity", "text_similarity"}  # scores the SDK does not expose
    missing = required - set(model.__dataclass_fields__) - sdk_only_optional
    assert not missing, f"the API always sends {sorted(missing)}, which the SDK's {model.__name__} drops"
