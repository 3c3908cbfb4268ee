"""Embedders: CLIP (image + cross-modal text) and a sentence encoder, behind one small interface.

Heavy imports (torch, open_clip, sentence-transformers) happen inside the loaders, and
:func:`load_embedder` caches its result, so each process loads the models once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from core.errors import InvalidInput
from core.images import decode_image
from core.settings import Settings

Matrix = NDArray[np.float32]
TextRuntime = Literal["auto", "int8", "onnx", "torch"]
ImageRuntime = Literal["auto", "int8", "onnx", "torch"]


class ImageTextEncoder(Protocol):
    """A CLIP-like model: images and texts in one space. Outputs are L2-normalised rows."""

    name: str
    dim: int
    random_init: bool

    def embed_images(self, images: Sequence[Image.Image]) -> Matrix: ...

    def embed_texts(self, texts: Sequence[str]) -> Matrix: ...


class TextEncoder(Protocol):
    """A sentence encoder. Outputs are L2-normalised rows."""

    name: str
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> Matrix: ...


@dataclass(frozen=True)
class ImageBatch:
    """Vectors for the inputs that decoded (``ok`` gives their positions) and why the rest did not."""

    vectors: Matrix
    ok: list[int]
    errors: dict[int, InvalidInput]


def decode_all(
    datas: Sequence[bytes], *, max_bytes: int, max_pixels: int, workers: int = 4, min_side: int | None = None
) -> tuple[list[int], list[Image.Image], dict[int, InvalidInput]]:
    """Decode image bytes in a thread pool (PIL releases the GIL while decoding); ``min_side``
    as in :func:`core.images.decode_image`."""

    def one(data: bytes) -> Image.Image | InvalidInput:
        try:
            return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
        except InvalidInput as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, datas))
    ok = [i for i, r in enumerate(results) if isinstance(r, Image.Image)]
    images = [r for r in results if isinstance(r, Image.Image)]
    errors = {i: r for i, r in enumerate(results) if isinstance(r, InvalidInput)}
    return ok, images, errors


def embed_image_bytes(
    encoder: ImageTextEncoder, datas: Sequence[bytes], *, max_bytes: int, max_pixels: int
) -> ImageBatch:
    """Image bytes to vectors, using the encoder's own fast path when it has one."""
    fast = getattr(encoder, "embed_image_bytes", None)
    if fast is not None:
        result: ImageBatch = fast(datas, max_bytes=max_bytes, max_pixels=max_pixels)
        return result
    ok, images, errors = decode_all(datas, max_bytes=max_bytes, max_pixels=max_pixels)
    vectors = encoder.embed_images(images) if images else np.zeros((0, encoder.dim), np.float32)
    return ImageBatch(vectors, ok, errors)


@dataclass(frozen=True)
class Embedder:
    """The pair of encoders the service uses."""

    clip: ImageTextEncoder
    text: TextEncoder

    @property
    def text_runtimes(self) -> dict[str, str]:
        """What runs each text tower (``onnx``, ``torch``, or ``fake`` in tests), for /health."""
        return {
            "clip": str(getattr(self.clip, "text_runtime", "torch")),
            "text": str(getattr(self.text, "text_runtime", "torch")),
        }

    @property
    def image_runtime(self) -> str:
        """What runs the CLIP image tower on this process's CPU path (``int8``, ``onnx``,
        ``torch``; ``fake`` in tests), for /health."""
        return str(getattr(self.clip, "image_runtime", "torch"))

    @property
    def space(self) -> dict[str, str]:
        """Identity of the vector spaces (stored with the catalog to catch model mix-ups)."""
        return {"clip": self.clip.name, "text": self.text.name}


def l2_normalize(x: NDArray[np.floating[Any]]) -> Matrix:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Matrix = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


@lru_cache(maxsize=4)
def _load(
    clip_model: str,
    clip_pretrained: str,
    text_model: str,
    device: str,
    batch_size: int,
    processes: int = 0,
    text_runtime: TextRuntime = "torch",
    cache_dir: str = "",
    image_runtime: ImageRuntime = "torch",
) -> Embedder:
    from core.embedding.clip import OpenClipEncoder
    from core.embedding.sbert import SentenceEncoder

    onnx_dir = Path(cache_dir) if cache_dir else None
    local = OpenClipEncoder(
        clip_model,
        clip_pretrained,
        device=device,
        batch_size=batch_size,
        text_runtime=text_runtime,
        image_runtime=image_runtime,
        onnx_cache_dir=onnx_dir,
    )
    clip: ImageTextEncoder = local
    if processes > 0:
        from core.embedding.pool import EmbedPool, PooledImageEncoder, start_mps

        if local.device == "cuda":
            start_mps()
        pool = EmbedPool(
            clip_model,
            clip_pretrained,
            device=local.device,
            workers=processes,
            batch_size=batch_size,
            image_runtime=image_runtime,  # CPU workers run what the serving process runs (GPUs: fp16)
            onnx_cache_dir=cache_dir,  # exported and checked by `local` already: the workers reuse it
        )
        clip = PooledImageEncoder(local, pool)
    text = SentenceEncoder(
        text_model, device=device, batch_size=batch_size, text_runtime=text_runtime, onnx_cache_dir=onnx_dir
    )
    return Embedder(clip=clip, text=text)


def load_embedder(settings: Settings, *, clip_pretrained: str | None = None) -> Embedder:
    """The real encoders for ``settings``, loaded once per process and argument set.

    ``clip_pretrained`` overrides the setting (the dev runner's offline fallback uses it).
    Raises :class:`core.errors.ModelLoadError` when configured weights cannot be loaded.
    """
    return _load(
        settings.clip_model,
        settings.clip_pretrained if clip_pretrained is None else clip_pretrained,
        settings.text_model,
        settings.device,
        settings.embed_batch_size,
        settings.embed_processes,
        settings.text_runtime,
        settings.model_cache_dir,
        settings.image_runtime,
    )
