"""Importers (Fashion-MNIST from Debian's package, Kaggle layout) and the sample generator."""

from pathlib import Path

import numpy as np
import pytest

from core.search import similar
from functions.services import Services
from local.importers import FASHION_MNIST_DIR, fashion_mnist, kaggle_fashion
from local.sample import generate
from tests.helpers import jpeg

pytestmark = pytest.mark.integration


def test_sample_generator_is_deterministic_and_rich() -> None:
    a, b = generate(30, seed=7), generate(30, seed=7)
    assert [p.record for p in a] == [p.record for p in b] and a[0].image == b[0].image
    assert len({p.record["category"] for p in a}) == 6
    for p in a:
        r = p.record
        assert str(r["color"]) in str(r["title"]) and str(r["material"]) in str(r["title"])
        assert float(r["price"]) > 0  # type: ignore[arg-type]
    assert generate(30, seed=8)[5].record != a[5].record


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs Debian package dataset-fashion-mnist")
def test_fashion_mnist_import_and_same_category_neighbours(services: Services) -> None:
    report = services.indexer.index(fashion_mnist(limit=300))
    assert report.indexed == 300 and not report.failed
    p = services.catalog.get("FMt10k00000")
    assert p.category == "Ankle boot" and p.image is not None
    # Similar items by image should mostly share the category (10 classes: chance is ~0.1).
    agree = []
    for i in range(0, 300, 15):
        anchor = services.catalog.get(f"FMt10k{i:05d}")
        from core.types import Weights

        hits = similar(services.catalog, anchor.product_id, 5, Weights(1.0, 0.0))
        agree.append(np.mean([h.product.category == anchor.category for h in hits]))
    assert float(np.mean(agree)) >= 0.5


def test_kaggle_layout(tmp_path: Path, services: Services) -> None:
    (tmp_path / "images").mkdir()
    for pid in ("1001", "1002"):
        (tmp_path / "images" / f"{pid}.jpg").write_bytes(jpeg())
    (tmp_path / "styles.csv").write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
        "1001,Men,Apparel,Topwear,Tshirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        "1002,Women,Footwear,Shoes,Heels,Black,Summer,2012,Casual,Catwalk Women Black Heels\n"
        "1003,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,No image here\n"
        "1004,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Name, with a comma\n"
    )
    report = services.indexer.index(kaggle_fashion(tmp_path))
    assert report.indexed == 2
    reasons = {e.product_id: e.reason for e in report.failed}
    assert "not found" in reasons["1003"] and "CSV fields" in reasons["1004"]
    p = services.catalog.get("1002")
    assert p.category == "Footwear" and p.attributes["articleType"] == "Heels"
