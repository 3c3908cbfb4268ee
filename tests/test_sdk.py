"""The SDK against a live server (uvicorn on loopback, fake embedder, catalog on the S3 server)."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from functions.app import create_app
from functions.services import Services
from sdk import AuthError, NotFoundError, RecommendationClient, ValidationError
from tests.conftest import make_settings
from tests.helpers import jpeg

pytestmark = pytest.mark.integration


@pytest.fixture
def live_url(s3_endpoint: str, bucket: str, fake: object) -> Iterator[str]:
    settings = make_settings(s3_endpoint, bucket, api_key="sdk-key")
    app = create_app(Services.from_settings(settings, embedder=fake))  # type: ignore[arg-type]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


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
        assert client.search_image(red, top_k=1)[0].product_id == "R1"
        similar = client.find_similar("R1", top_k=5)
        assert {s.product_id for s in similar} == {"B1", "T1"}
        # New products reach the recommender's in-memory snapshot within RECS_REFRESH_SECONDS.
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
    with RecommendationClient(live_url) as anonymous, pytest.raises(AuthError) as auth:
        anonymous.put_product("X", "no key")
    assert auth.value.status == 401
