"""The deterministic fake embedder that the API and contract tests use."""

from core.embedding import Embedder
from tests.helpers import pending


def test_fake_embedder_is_deterministic(fake: Embedder) -> None:
    a = fake.text.embed_texts(["red shoe"])
    b = fake.text.embed_texts(["red shoe"])
    assert (a == b).all()
    assert pending("x", "y").product.product_id == "x"
