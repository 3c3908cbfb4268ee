"""Deterministic fake encoders for fast tests: no model, no torch.

Texts become feature-hashed bags of words (texts sharing words are close); images become a fixed
random projection of their 8x8 thumbnail (similar pictures are close). Both are unit vectors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from core.embedding import Embedder, Matrix, l2_normalize

_WORD = re.compile(r"\w+")


def _text_vector(text: str, dim: int, salt: str) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    words = _WORD.findall(text.lower()) or [text]
    for w in words:
        h = hashlib.blake2b(f"{salt}:{w}".encode(), digest_size=8).digest()
        idx = int.from_bytes(h[:4], "little") % dim
        v[idx] += 1.0 if h[4] & 1 else -1.0
    if not v.any():
        v[0] = 1.0
    return v


class FakeClip:
    """Stand-in for CLIP with the same interface."""

    random_init = False
    text_runtime = "fake"
    image_runtime = "fake"

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.name = f"fake-clip:{dim}"
        self._proj = np.random.default_rng(0).standard_normal((8 * 8 * 3, dim)).astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> Matrix:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        thumbs = np.stack([np.asarray(im.convert("RGB").resize((8, 8)), np.float32).ravel() / 255.0 for im in images])
        return l2_normalize((thumbs - 0.5) @ self._proj)

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack([_text_vector(t, self.dim, "clip") for t in texts]))


class FakeText:
    """Stand-in for the sentence encoder."""

    text_runtime = "fake"

    def __init__(self, dim: int = 24) -> None:
        self.dim = dim
        self.name = f"fake-text:{dim}"

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack([_text_vector(t, self.dim, "text") for t in texts]))


def fake_embedder(clip_dim: int = 32, text_dim: int = 24) -> Embedder:
    """A deterministic embedder for tests."""
    return Embedder(clip=FakeClip(clip_dim), text=FakeText(text_dim))
