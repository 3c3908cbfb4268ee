"""Test data helpers."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from PIL import Image

from core.catalog import ProductRecord
from core.embedding import l2_normalize
from core.ingest import PendingProduct
from core.types import Product, ProductInput


def jpeg(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def pending(
    pid: str,
    title: str,
    *,
    category: str | None = None,
    price: float | None = None,
    image: bytes | None = None,
    **attrs: object,
) -> PendingProduct:
    return PendingProduct(
        ProductInput(product_id=pid, title=title, category=category, price=price, attributes=dict(attrs)),
        image_bytes=image,
    )


def record(
    pid: str,
    clip_dim: int,
    text_dim: int,
    rng: np.random.Generator,
    *,
    category: str | None = None,
    price: float | None = None,
    with_image: bool = True,
    title: str | None = None,
) -> ProductRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    img = l2_normalize(rng.standard_normal((1, clip_dim)).astype(np.float32))[0] if with_image else None
    txt = l2_normalize(rng.standard_normal((1, text_dim)).astype(np.float32))[0]
    return ProductRecord(
        Product(
            pid,
            title or f"product {pid}",
            "",
            category,
            price,
            "img/x.jpg" if with_image else None,
            {},
            now,
            now,
        ),
        img,
        txt,
        content_hash=pid,
    )


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Run ``app`` with uvicorn (lifespan included) on a free loopback port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
