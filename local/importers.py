"""Importers for real product images: Debian's Fashion-MNIST and the Kaggle "Fashion Product
Images" layout. Each yields records for :class:`core.ingest.Indexer`."""

from __future__ import annotations

import csv
import gzip
import io
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import InvalidInput
from core.ingest import Item, PendingProduct, RecordError
from core.types import ProductInput

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FM_PRICES = (15, 40, 45, 55, 120, 35, 30, 70, 60, 90)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format) as a numpy array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    _, dtype_code, ndim = data[0:2], data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX dtype {dtype_code:#x}")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(
    root: Path = FASHION_MNIST_DIR,
    *,
    limit: int | None = None,
    split: str = "t10k",
    upscale: int = 112,
    seed: int = 0,
) -> Iterator[Item]:
    """Fashion-MNIST images (real Zalando product photos, 28x28 grey) as products ``FM<split><n>``.

    Titles and categories come from the 10 class labels; prices are drawn per class, seeded.
    """
    images_path = root / f"{split}-images-idx3-ubyte.gz"
    labels_path = root / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} not found: install Debian's dataset-fashion-mnist package "
            "(apt-get install dataset-fashion-mnist)"
        )
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    rng = random.Random(seed)
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        label = FASHION_MNIST_LABELS[int(labels[i])]
        img = Image.fromarray(255 - images[i], mode="L").resize((upscale, upscale), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        price = round(_FM_PRICES[int(labels[i])] * rng.uniform(0.6, 1.6), 2)
        product = ProductInput(
            product_id=f"FM{split}{i:05d}",
            title=f"{label} #{i}",
            description=f"Fashion-MNIST {label.lower()} (Zalando article image).",
            category=label,
            price=price,
            attributes={"source": "fashion-mnist", "split": split, "index": i},
        )
        yield PendingProduct(product, source=f"fashion-mnist/{split}", line=i, image_bytes=buf.getvalue())


def kaggle_fashion(folder: Path, *, limit: int | None = None) -> Iterator[Item]:
    """The Kaggle "Fashion Product Images" layout: ``styles.csv`` + ``images/<id>.jpg``.

    Rows with the wrong number of fields (the published file has some) fail with a reason.
    """
    styles = folder / "styles.csv"
    if not styles.exists():
        raise FileNotFoundError(f"{styles} not found (expected styles.csv and images/<id>.jpg)")
    with styles.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        count = 0
        for row in reader:
            if limit is not None and count >= limit:
                return
            count += 1
            line = reader.line_num
            if len(row) != len(header):
                yield RecordError(
                    "styles.csv",
                    line,
                    row[0] if row else None,
                    f"expected {len(header)} CSV fields, got {len(row)}",
                )
                continue
            rec = dict(zip(header, row, strict=True))
            pid = rec.get("id", "")
            title = rec.get("productDisplayName", "")
            attrs = {k: v for k, v in rec.items() if k not in {"id", "productDisplayName"} and v}
            desc_bits = [rec.get(k, "") for k in ("baseColour", "articleType", "usage", "season", "gender")]
            try:
                product = ProductInput.from_mapping(
                    {
                        "product_id": pid,
                        "title": title,
                        "description": " ".join(b for b in desc_bits if b),
                        "category": rec.get("masterCategory") or None,
                        "attributes": attrs,
                    }
                )
            except InvalidInput as exc:
                yield RecordError("styles.csv", line, pid or None, str(exc))
                continue
            image_path = folder / "images" / f"{pid}.jpg"
            if not image_path.exists():
                yield RecordError("styles.csv", line, pid, f"image images/{pid}.jpg not found")
                continue
            yield PendingProduct(product, source="styles.csv", line=line, image_bytes=image_path.read_bytes())
