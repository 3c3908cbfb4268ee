"""Embedders: CLIP (image + cross-modal text) and a sentence encoder, behind one small interface.

Heavy imports (torch, open_clip, sentence-transformers) happen inside the loaders, and
:func:`load_embedder` caches its result, so each process loads the models once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from core.settings import Settings

log = logging.getLogger(__name__)

Matrix = NDArray[np.float32]


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
class Embedder:
    """The pair of encoders the service uses."""

    clip: ImageTextEncoder
    text: TextEncoder

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
def _load(clip_model: str, clip_pretrained: str, text_model: str, device: str, batch_size: int) -> Embedder:
    from core.embedding.clip import OpenClipEncoder
    from core.embedding.sbert import SentenceEncoder

    clip = OpenClipEncoder(clip_model, clip_pretrained, device=device, batch_size=batch_size)
    text = SentenceEncoder(text_model, device=device, batch_size=batch_size)
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
    )
