"""CLIP image and cross-modal text encoder on open_clip."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

from core.embedding import ImageBatch, ImageRuntime, Matrix, TextRuntime, decode_all, onnx_image
from core.embedding.onnx_text import MAX_BATCH, OnnxText, load_checked, query_threads, wanted
from core.errors import ConfigError, InvalidImage, InvalidInput, ModelLoadError
from core.images import check_image_header

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

    def __init__(
        self,
        model: str,
        pretrained: str,
        *,
        device: str = "auto",
        batch_size: int = 32,
        decode_workers: int = 0,
        text_runtime: TextRuntime = "torch",
        image_runtime: ImageRuntime = "torch",
        onnx_cache_dir: Path | None = None,
    ) -> None:
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
        if self.device == "cuda":
            clip.half()
        self._model = clip
        cfg = clip.visual.preprocess_cfg
        self.image_size = int(cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0])
        self.mean = tuple(float(m) for m in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        self.decode_workers = decode_workers or max(2, os.cpu_count() or 2)
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
        self._onnx: OnnxText | None = None
        if wanted(text_runtime, self.device) and self._short_text_path():
            self._onnx = load_checked(
                runtime=text_runtime,
                kind="clip",
                name=self.name,
                build=self._text_export,
                feeds=self._text_feeds,
                reference=lambda texts: self._run(self._tokenizer(list(texts)), image=False),
                cache_dir=onnx_cache_dir,
                threads=query_threads("clip"),
                int8=True,
            )
        elif text_runtime in ("onnx", "int8"):
            raise ConfigError(f"TEXT_RUNTIME={text_runtime}: {model} has no standard causal CLIP text tower to export")
        self._onnx_image: onnx_image.OnnxImage | None = None
        if image_runtime in ("int8", "onnx") and self.device != "cpu":
            log.info("IMAGE_RUNTIME=%s applies on CPU; on %s the image tower runs fp16", image_runtime, self.device)
        if onnx_image.wanted(image_runtime, self.device):
            self._onnx_image = onnx_image.load_checked(
                runtime=image_runtime,
                name=self.name,
                build=self._image_export,
                probes=lambda: np.stack([self._preprocess(im).numpy() for im in onnx_image.probe_images()]),
                reference=lambda pixels: self._run(torch.from_numpy(pixels), image=True),
                cache_dir=onnx_cache_dir,
                threads=torch.get_num_threads(),
            )

    @property
    def text_runtime(self) -> str:
        """What runs :meth:`embed_texts` for queries: ``int8`` / ``onnx`` (ONNX Runtime) or ``torch``."""
        return self._onnx.precision if self._onnx is not None else "torch"

    @property
    def image_runtime(self) -> str:
        """What runs the image tower on the CPU path: ``int8`` / ``onnx`` (ONNX Runtime) or ``torch``."""
        return self._onnx_image.precision if self._onnx_image is not None else "torch"

    def _image_export(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """The image tower as a module of preprocessed pixels to normalised vectors, for the export."""
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self, visual: torch.nn.Module) -> None:
                super().__init__()
                self.visual = visual

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.normalize(self.visual(pixels), dim=-1)

        module = ImageTower(self._model.visual).eval().requires_grad_(False)
        # Two images: torch.export would fix a batch dimension of size 1.
        return module, torch.zeros(2, 3, self.image_size, self.image_size)

    def _image_vectors(self, batch: torch.Tensor) -> Matrix:
        """Preprocessed pixels to vectors: ONNX Runtime when it was loaded and checked, else PyTorch."""
        if self._onnx_image is not None:
            return self._onnx_image.run(batch.numpy())
        return self._run(batch, image=True)

    def _run(self, batch: torch.Tensor, image: bool) -> Matrix:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device == "cuda"),
        ):
            feats = self._model.encode_image(batch) if image else self._encode_text(batch)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> Matrix:
        import torch

        out: list[Matrix] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self._preprocess(im.convert("RGB")) for im in chunk]).to(self.device)
            out.append(self._image_vectors(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_image_bytes(self, datas: Sequence[bytes], *, max_bytes: int, max_pixels: int) -> ImageBatch:
        """Image bytes to vectors. On CUDA, JPEGs are decoded on the GPU (nvjpeg, batched) and
        resized there; everything else is decoded by a pool of CPU threads."""
        jpeg_idx: list[int] = []
        if self.device == "cuda":
            jpeg_idx = [i for i, d in enumerate(datas) if d[:3] == b"\xff\xd8\xff"]
        other = [i for i in range(len(datas)) if i not in set(jpeg_idx)]
        ok: list[int] = []
        parts: list[Matrix] = []
        errors: dict[int, InvalidInput] = {}
        if other:
            good, images, errs = decode_all(
                [datas[i] for i in other],
                max_bytes=max_bytes,
                max_pixels=max_pixels,
                workers=self.decode_workers,
                min_side=self.image_size,  # JPEGs decode at a reduced scale when they are large
            )
            errors.update({other[j]: e for j, e in errs.items()})
            if images:
                ok += [other[j] for j in good]
                parts.append(self._embed_preprocessed_pil(images))
        if jpeg_idx:
            good_gpu, vecs, errs = self._embed_jpegs_cuda([datas[i] for i in jpeg_idx], max_bytes, max_pixels)
            errors.update({jpeg_idx[j]: e for j, e in errs.items()})
            ok += [jpeg_idx[j] for j in good_gpu]
            parts.append(vecs)
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        order = np.argsort(ok, kind="stable")
        return ImageBatch(vectors[order], [ok[i] for i in order], errors)

    def _embed_preprocessed_pil(self, images: Sequence[Image.Image]) -> Matrix:
        import torch

        out: list[Matrix] = []
        with ThreadPoolExecutor(max_workers=self.decode_workers) as pool:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                tensors = list(pool.map(self._preprocess, chunk))
                out.append(self._image_vectors(torch.stack(tensors).to(self.device)))
        return np.concatenate(out)

    def gpu_preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` on the GPU -> the model's normalised fp16 input: shortest side to
        the input size (bicubic, antialiased, as PIL does), centre crop, mean/std."""
        import torch
        import torch.nn.functional as F

        size = self.image_size
        h, w = int(images.shape[-2]), int(images.shape[-1])
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        top, left = (nh - size) // 2, (nw - size) // 2
        x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", antialias=True)
        x = x[..., top : top + size, left : left + size].clamp_(0, 255).div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).half()

    def _embed_jpegs_cuda(
        self, datas: Sequence[bytes], max_bytes: int, max_pixels: int
    ) -> tuple[list[int], Matrix, dict[int, InvalidInput]]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        errors: dict[int, InvalidInput] = {}
        ok: list[int] = []
        for i, d in enumerate(datas):
            try:
                check_image_header(d, max_bytes=max_bytes, max_pixels=max_pixels)
                ok.append(i)
            except InvalidInput as exc:
                errors[i] = exc
        out: list[Matrix] = []
        kept: list[int] = []
        step = max(self.batch_size, 256)
        for start in range(0, len(ok), step):
            idx = ok[start : start + step]
            raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in idx]
            decoded: list[torch.Tensor | None]
            try:
                decoded = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device="cuda"))
            except RuntimeError:
                decoded = []  # one bad JPEG fails the whole batch: decode one by one to find it
                for i, r in zip(idx, raw, strict=True):
                    try:
                        decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device="cuda"))
                    except RuntimeError as exc:
                        errors[i] = InvalidImage(f"cannot decode image: {exc}")
                        decoded.append(None)
            # Same-size images are resized together: shortest side to `size` (bicubic, antialiased,
            # like PIL), centre crop, normalise; fp16 into the model.
            groups: dict[tuple[int, int], list[int]] = {}
            for j, img in enumerate(decoded):
                if img is not None:
                    groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(j)
            for members in groups.values():
                for m0 in range(0, len(members), step):
                    part = members[m0 : m0 + step]
                    x = self.gpu_preprocess(torch.stack([decoded[j] for j in part]))  # type: ignore[misc]
                    out.append(self._run(x, image=True))
                    kept += [idx[j] for j in part]
        order = np.argsort(kept, kind="stable")
        vectors = np.concatenate(out)[order] if out else np.zeros((0, self.dim), np.float32)
        return [kept[i] for i in order], vectors, errors

    def _short_text_path(self) -> bool:
        """Whether the text tower is open_clip's standard causal one (argmax pooling), where
        running only the real tokens is exact."""
        from open_clip.model import CLIP

        m = self._model
        return isinstance(m, CLIP) and m.text_pool_type == "argmax" and m.attn_mask is not None

    def _text_feeds(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        tokens = self._tokenizer(list(texts))
        n = max(2, int((tokens != 0).sum(dim=1).max()))
        return {"tokens": tokens[:, :n].numpy()}

    def _text_export(self) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[str], int]:
        """The text tower as a module of ``tokens [batch, n]`` (the real tokens, as
        :meth:`_encode_text` cuts them) to normalised vectors, for the ONNX export."""
        import torch
        from open_clip.model import CLIP

        class TextTower(torch.nn.Module):
            """Only the text tower's parts, so the export and the cache key's weight digest
            leave the (larger) image tower out."""

            def __init__(self, clip: CLIP) -> None:
                super().__init__()
                self.token_embedding, self.transformer, self.ln_final = (
                    clip.token_embedding,
                    clip.transformer,
                    clip.ln_final,
                )
                self.positional_embedding = clip.positional_embedding
                self.projection = clip.text_projection  # a Parameter, a Linear, or None
                self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
                self.attn_mask: torch.Tensor

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                n = tokens.shape[1]
                x = self.token_embedding(tokens) + self.positional_embedding[:n]
                x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
                x = self.ln_final(x)
                x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # end-of-text has the largest id
                if isinstance(self.projection, torch.nn.Linear):
                    x = self.projection(x)
                elif self.projection is not None:
                    x = x @ self.projection
                return torch.nn.functional.normalize(x, dim=-1)

        module = TextTower(self._model).eval().requires_grad_(False)
        # Two texts of different lengths: torch.export would fix a dimension of size 1.
        example = torch.from_numpy(self._text_feeds(["blue running shoes", "red"])["tokens"])
        return module, (example,), ["tokens"], int(self._model.context_length)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` on the real tokens only. open_clip pads every text to 77 tokens; the text
        tower's causal mask means no position attends to a later one, and the pooled (argmax =
        end-of-text) position is inside the real tokens, so cutting the padding is exact and runs
        a short query several times faster. Other text towers take the full path."""
        import torch
        from open_clip.model import CLIP
        from open_clip.transformer import text_global_pool

        m = self._model
        if not (isinstance(m, CLIP) and self._short_text_path()):
            full: torch.Tensor = m.encode_text(tokens)
            return full
        n = max(1, int((tokens != 0).sum(dim=1).max()))
        tokens = tokens[:, :n]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if isinstance(m.text_projection, torch.nn.Linear):
            x = m.text_projection(x)
        elif m.text_projection is not None:
            x = x @ m.text_projection
        out: torch.Tensor = x
        return out

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        if self._onnx is not None and 0 < len(texts) <= MAX_BATCH:
            return self._onnx.run(self._text_feeds(texts))
        out: list[Matrix] = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            out.append(self._run(tokens, image=False))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
