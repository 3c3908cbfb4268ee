"""ONNX Runtime for CLIP's image tower on CPU, int8 by default.

Indexing on a CPU spends nearly all its time in the image tower's matrix products (ViT-B-32:
~4.4 GFLOP per image). ONNX Runtime runs the exported fp32 graph somewhat faster than PyTorch on
a small CPU, and with dynamically quantised weights (int8, per output channel; activations
quantised per batch at run time; attention input projections kept fp32, see :data:`KEEP_FP32`)
about 1.7-1.9x faster than PyTorch (``python -m bench.embed`` has the figures).

Quantisation moves the vectors a little, so a runtime is used only after its vectors were
compared with PyTorch fp32 on probe images (:func:`probe_images`): int8 must reach a cosine of at
least ``MIN_COSINE["int8"]`` (0.99, the bar the GPU fp16 path is held to) on every probe, the fp32
graph ``MIN_COSINE["onnx"]``. ``IMAGE_RUNTIME=auto`` tries int8, then the fp32 graph, then keeps
PyTorch; ``int8`` / ``onnx`` fail loudly instead. The fp32 export and its int8 copy are cached
next to the text towers' exports (``MODEL_CACHE_DIR``), keyed by the weights' digest and the
exporter's and runtime's versions.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.embedding import ImageRuntime, Matrix
from core.embedding.onnx_text import cpu_session, default_cache_dir, export_cached
from core.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Precision = Literal["int8", "onnx"]

QUANT_VERSION = 2
"""Bump when the quantisation recipe changes, so stale int8 files are not reused."""

MIN_COSINE: dict[Precision, float] = {"int8": 0.99, "onnx": 0.9999}
"""The lowest cosine with PyTorch fp32, on every probe image, for each runtime to be used."""

PROBES = 6


def wanted(runtime: ImageRuntime, device: str) -> bool:
    """Whether to try ONNX Runtime for images: on CPU only (GPUs run fp16 PyTorch, whatever the
    setting: one Secret configures CPU and GPU containers alike)."""
    return runtime != "torch" and device == "cpu"


def probe_images(n: int = PROBES, size: int = 320) -> list[Image.Image]:
    """Deterministic product-photo-like images: a light backdrop, a few soft-edged coloured
    shapes, fine texture and sensor-like noise (flat test patterns would hide quantisation error)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
        back = 225 + 25 * ramp * rng.uniform(-1, 1, 3).astype(np.float32)
        img = Image.fromarray(np.broadcast_to(back, (size, size, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3 + i % 3):
            x0, y0 = (int(v) for v in rng.integers(0, size * 2 // 3, 2))
            w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x0 + w, y0 + h), fill=colour)
            for y in range(y0, y0 + h, 6):  # stripes: texture the model has to resolve
                draw.line((x0, y, x0 + w, y), fill=tuple(max(0, c - 40) for c in colour), width=2)
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
        arr += rng.normal(0, 6, arr.shape).astype(np.float32)
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


class OnnxImage:
    """The image tower in an ONNX Runtime session: ``pixels [batch, 3, H, W]`` (the model's
    preprocessed input, float32) to L2-normalised rows. Thread-safe."""

    def __init__(self, path: Path, *, precision: Precision, threads: int) -> None:
        self.path = path
        self.precision: Precision = precision
        self._session = cpu_session(path, threads)
        self._input = self._session.get_inputs()[0].name

    def run(self, pixels: np.ndarray[Any, Any]) -> Matrix:
        out = self._session.run(None, {self._input: np.ascontiguousarray(pixels, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)


KEEP_FP32 = ("in_proj", "qkv")
"""Weights whose names contain one of these stay fp32: the attention input projections (q, k, v).
On ViT-B-32 they are a quarter of the matrix work but most of the quantisation error (random-init
weights, 32 product-like images: min cosine with fp32 0.987 with them quantised, 0.996 without;
~30 vs ~25 images/s)."""


def quantized_nodes(fp32: Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> list[str]:
    """Names of the MatMul nodes of the exported graph to quantise: those with a constant weight
    (an initialiser, or its transpose), except those whose weight's name contains one of
    ``keep_fp32`` (by default the attention input projections, :data:`KEEP_FP32`). Products of two
    activations (attention scores) stay fp32: per-tensor int8 of softmax outputs loses too much.
    Gemm nodes (the attention output projections, ~10% of the work) stay fp32 too: ONNX Runtime's
    dynamic quantiser has no integer Gemm, and rewritten as MatMul + Add and quantised they cost
    accuracy (min cosine 0.996 -> 0.989 on ViT-B-32) for no measurable speed."""
    import onnx

    graph = onnx.load(str(fp32)).graph
    inits = {i.name for i in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}

    def weight(name: str) -> str | None:
        if name in inits:
            return name
        node = made_by.get(name)
        if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
            return str(node.input[0])
        return None

    keep = []
    for node in graph.node:
        if node.op_type == "MatMul":
            names = [w for w in map(weight, node.input[:2]) if w is not None]
            if names and not any(k in w for w in names for k in keep_fp32):
                keep.append(str(node.name))
    return keep


def quantized(fp32: Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> Path:
    """The int8 copy of the exported fp32 graph ``fp32`` (made now when missing, next to it):
    ONNX Runtime's pre-processing (shape inference, constant folding, so the weights are
    initialisers), then dynamic quantisation of the nodes :func:`quantized_nodes` picks (weights
    named with one of ``keep_fp32`` stay fp32), int8 weights per output channel."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = "" if keep_fp32 == KEEP_FP32 else "-" + ("+".join(keep_fp32) or "all")  # the default keeps its name
    out = fp32.with_name(f"{fp32.stem}-int8q{QUANT_VERSION}{recipe}-ort{ort.__version__}.onnx")
    if out.exists():
        return out
    started = time.monotonic()
    log.warning("quantising %s to int8 (once; cached in %s)", fp32.name, fp32.parent)
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".quant-") as tmp:
        pre, done = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # keeps the node names
        quantize_dynamic(
            pre,
            done,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=quantized_nodes(fp32, keep_fp32),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        os.replace(done, out)  # atomic: concurrent quantisers each work in their own directory
    log.info("quantised %s in %.1f s (%.0f MB)", out.name, time.monotonic() - started, out.stat().st_size / 1e6)
    return out


def load_checked(
    *,
    runtime: ImageRuntime,
    name: str,
    build: Callable[[], tuple[torch.nn.Module, torch.Tensor]],
    probes: Callable[[], np.ndarray[Any, Any]],
    reference: Callable[[np.ndarray[Any, Any]], Matrix],
    cache_dir: Path | None,
    threads: int,
) -> OnnxImage | None:
    """Export (or reuse), quantise, load and check the image tower. ``None`` means: use PyTorch.
    With ``runtime`` ``int8`` or ``onnx`` a failure raises :class:`ModelLoadError` instead."""
    order: list[Precision] = ["int8", "onnx"] if runtime == "auto" else [runtime]  # type: ignore[list-item]
    failures: list[str] = []
    try:
        module, example = build()
        fp32 = export_cached(
            kind="clip-image",
            name=name,
            module=module,
            example=(example,),
            input_names=["pixels"],
            max_len=0,
            cache_dir=cache_dir or default_cache_dir(),
            dynamic_length=False,
            label="model",
        )
        pixels = probes()
        want = reference(pixels)
    except Exception as exc:  # exporter errors come in many types
        failures.append(f"export: {exc}")
    else:
        for precision in order:
            try:
                path = quantized(fp32) if precision == "int8" else fp32
                runner = OnnxImage(path, precision=precision, threads=threads)
                cosine = float((runner.run(pixels) * want).sum(axis=1).min())
            except Exception as exc:  # quantiser/runtime errors come in many types
                failures.append(f"{precision}: {exc}")
                continue
            if cosine >= MIN_COSINE[precision]:
                if failures:  # auto fell back from int8: say why, the speed-up is gone
                    log.warning("CLIP image tower %s: not int8 (%s)", name, "; ".join(failures))
                log.info("CLIP image tower %s runs on ONNX Runtime %s (min probe cosine %.5f)", name, precision, cosine)
                return runner
            failures.append(f"{precision}: disagrees with PyTorch (cosine {cosine:.5f} < {MIN_COSINE[precision]})")
    why = "; ".join(failures)
    if runtime != "auto":
        raise ModelLoadError(f"IMAGE_RUNTIME={runtime}: cannot run the CLIP image tower {name} on ONNX: {why}")
    log.warning("CLIP image tower %s stays on PyTorch: %s", name, why)
    return None
