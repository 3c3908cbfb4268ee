"""CLIP image and cross-modal text encoder on open_clip."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

from core.embedding import Matrix
from core.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when a GPU is visible."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE=cuda but no CUDA device is available")
    return device


class OpenClipEncoder:
    """An open_clip model. ``pretrained`` is a tag, a local checkpoint path, or ``none``.

    ``none`` is the explicit offline/demo mode: random-init weights whose image vectors carry no
    semantics. It is reported by :attr:`random_init` and logged as a warning.
    """

    def __init__(self, model: str, pretrained: str, *, device: str = "auto", batch_size: int = 32) -> None:
        import open_clip
        import torch

        open_clip.add_model_config(_CONFIG_DIR)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.random_init = pretrained.strip().lower() in {"", "none"}
        if model not in open_clip.list_models():
            raise ConfigError(f"unknown CLIP_MODEL {model!r}; see open_clip.list_models()")
        weights = None if self.random_init else pretrained
        try:
            if self.random_init:
                # Deterministic random init, so every process of a deployment agrees on vectors.
                torch.manual_seed(0)
            clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=weights, device=self.device)
        except Exception as exc:  # open_clip raises bare RuntimeError/OSError/HF errors
            where = "local checkpoint" if weights and os.path.exists(weights) else "pretrained tag"
            raise ModelLoadError(
                f"cannot load CLIP weights {model}/{pretrained} ({where}): {exc}. "
                "Provide the weights (HF cache or a local checkpoint path in CLIP_PRETRAINED), or set "
                "CLIP_PRETRAINED=none for the explicit offline mode (random-init CLIP: image vectors "
                "are NOT semantically meaningful)."
            ) from exc
        clip.eval()
        self._model = clip
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(model)
        self.dim = int(clip.visual.output_dim)
        self.name = f"open_clip:{model}:{'none' if self.random_init else pretrained}"
        if self.random_init:
            log.warning(
                "CLIP_PRETRAINED=none: %s runs with RANDOM weights; image similarity and "
                "text-to-image scores are not meaningful (offline/demo mode).",
                model,
            )
        else:
            log.info("loaded CLIP %s/%s on %s", model, pretrained, self.device)

    def _run(self, batch: torch.Tensor, image: bool) -> Matrix:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device == "cuda"),
        ):
            feats = self._model.encode_image(batch) if image else self._model.encode_text(batch)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> Matrix:
        import torch

        out: list[Matrix] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self._preprocess(im.convert("RGB")) for im in chunk]).to(self.device)
            out.append(self._run(batch, image=True))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        out: list[Matrix] = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            out.append(self._run(tokens, image=False))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
