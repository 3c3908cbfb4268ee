import io
import math

import pytest
from PIL import Image

from core.errors import InvalidImage, InvalidInput, PayloadTooLarge
from core.images import decode_image
from core.settings import Settings
from core.types import Filters, Product, ProductInput, Weights
from tests.helpers import jpeg


def test_product_input_keeps_extra_fields_as_attributes() -> None:
    p = ProductInput.from_mapping(
        {"product_id": 17, "title": " Red shoe ", "price": "12.5", "color": "red", "attributes": {"size": 42}}
    )
    assert p.product_id == "17"
    assert p.title == "Red shoe"
    assert p.price == 12.5
    assert p.attributes == {"color": "red", "size": 42}
    assert "color: red" in p.embedding_text()
    tagged = ProductInput.from_mapping(
        {"product_id": "m1", "title": "Casablanca (1942)", "genres": ["Drama", "Romance", "War"], "cast": {"x": 1}}
    )
    assert tagged.embedding_text() == "Casablanca (1942). genres: Drama, Romance, War"  # lists count, objects not


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"title": "x"}, "product_id is required"),
        ({"product_id": "a"}, "title is required"),
        ({"product_id": "a", "title": "x", "price": -1}, "non-negative"),
        ({"product_id": "a", "title": "x", "price": math.nan}, "finite"),
        ({"product_id": "a", "title": "x", "price": "cheap"}, "must be a number"),
        ({"product_id": "a/b", "title": "x"}, "slashes"),
        ({"product_id": "a", "title": "x", "category": 5}, "category must be a string"),
        ([1, 2], "JSON object"),
    ],
)
def test_product_input_rejects_bad_records(raw: object, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        ProductInput.from_mapping(raw)


def test_filters_and_weights_validate() -> None:
    with pytest.raises(InvalidInput):
        Filters(min_price=10, max_price=5)
    with pytest.raises(InvalidInput):
        Weights(0, 0)


def test_filters_match_one_product_as_the_masks_do() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    p = Product("P1", "t", "", "Bags", 20.0, None, {"color": ["red", "blue"], "size": 42}, now, now, in_stock=False)
    assert not Filters().matches(p)  # out of stock
    assert Filters(include_out_of_stock=True).matches(p)
    ok = Filters(
        categories=("Bags",), min_price=20, attributes=(("color", "blue"), ("size", "42")), include_out_of_stock=True
    )
    assert ok.matches(p)
    assert not Filters(categories=("Shoes",), include_out_of_stock=True).matches(p)
    assert not Filters(max_price=19.99, include_out_of_stock=True).matches(p)
    assert not Filters(attributes=(("color", "green"),), include_out_of_stock=True).matches(p)
    assert not Filters(exclude_ids=frozenset({"P1"}), include_out_of_stock=True).matches(p)


def test_decode_image_limits() -> None:
    img = decode_image(jpeg(size=(30, 20)), max_bytes=10_000, max_pixels=10_000)
    assert img.size == (30, 20) and img.mode == "RGB"
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(jpeg(), max_bytes=10, max_pixels=10_000)
    with pytest.raises(InvalidImage):
        decode_image(b"this is not an image", max_bytes=10_000, max_pixels=10_000)
    with pytest.raises(InvalidImage):
        decode_image(jpeg()[:100], max_bytes=10_000, max_pixels=10_000)  # truncated


def test_large_jpegs_decode_at_a_reduced_scale_that_keeps_min_side() -> None:
    photo = jpeg(size=(1000, 700))
    assert decode_image(photo, max_bytes=10**6, max_pixels=10**6).size == (1000, 700)
    # 700 // 224 = 3 -> the decoder's largest power-of-two scale that keeps both sides >= 224 is 1/2.
    assert decode_image(photo, max_bytes=10**6, max_pixels=10**6, min_side=224).size == (500, 350)
    assert decode_image(photo, max_bytes=10**6, max_pixels=10**6, min_side=100).size == (250, 175)
    assert decode_image(photo, max_bytes=10**6, max_pixels=10**6, min_side=600).size == (1000, 700)
    small = decode_image(jpeg(size=(300, 200)), max_bytes=10**6, max_pixels=10**6, min_side=224)
    assert small.size == (300, 200) and small.mode == "RGB"
    buf = io.BytesIO()
    Image.new("RGB", (1000, 700), (10, 200, 30)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), max_bytes=10**6, max_pixels=10**6, min_side=224).size == (1000, 700)
    with pytest.raises(PayloadTooLarge, match="pixels"):  # the limits apply to the stored size
        decode_image(photo, max_bytes=10**6, max_pixels=500_000, min_side=224)


def test_decompression_bomb_rejected_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, "PNG")  # 36 Mpx in a few KB
    data = buf.getvalue()
    assert len(data) < 100_000
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(data, max_bytes=1_000_000, max_pixels=1_000_000)


def test_settings_defaults_and_storage_options() -> None:
    s = Settings(
        _env_file=None,
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_bucket="b",  # type: ignore[call-arg]
        aws_access_key_id="k",
        aws_secret_access_key="s3cr3t-value",
    )
    assert s.resolved_catalog_uri == "s3://b/catalog"
    opts = s.storage_options()
    assert opts["endpoint"] == "http://127.0.0.1:9000" and opts["allow_http"] == "true"
    assert (s.image_weight, s.text_weight) == (0.7, 0.3)
    assert opts["aws_secret_access_key"] == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s)  # secrets never printed
    with pytest.raises(ValueError):
        Settings(_env_file=None, image_weight=0, text_weight=0)  # type: ignore[call-arg]
