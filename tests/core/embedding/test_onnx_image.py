"""CLIP's image tower on ONNX Runtime (int8 and fp32): vectors checked against PyTorch, exported and
quantised once, safe fallback. Runs on the tiny open_clip test architecture (random-init)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from core.embedding import load_embedder, onnx_image
from core.embedding.clip import OpenClipEncoder
from core.errors import ModelLoadError
from core.settings import Settings

pytestmark = pytest.mark.slow

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 10_000_000}


def shared_cache() -> Path:
    return Path(os.environ["MODEL_CACHE_DIR"])


def photos(n: int = 10) -> list[bytes]:
    """Product-photo-like JPEGs of several sizes, not the probe images the load check uses."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        h, w = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        arr = np.full((h, w, 3), 235, np.float32)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(0, 256, 3)
        arr += rng.normal(0, 10, arr.shape)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def reference() -> OpenClipEncoder:
    return OpenClipEncoder("tiny-clip-test", "none", device="cpu")


def test_int8_image_tower_agrees_with_pytorch_and_is_made_once(
    tmp_path: Path, reference: OpenClipEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="core.embedding"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="int8", onnx_cache_dir=tmp_path)
    assert enc.image_runtime == "int8" and reference.image_runtime == "torch"
    assert "exporting the clip-image model" in caplog.text and "quantising" in caplog.text
    fp32 = [p for p in tmp_path.glob("clip-image-*.onnx") if "-int8q" not in p.name]
    int8 = list(tmp_path.glob("clip-image-*-int8q*.onnx"))
    assert len(int8) == 1 and len(fp32) == 1
    assert not list(tmp_path.glob(".quant-*")) and not list(tmp_path.glob("*.tmp"))

    jpegs = photos()
    want = reference.embed_image_bytes(jpegs, **LIMITS).vectors
    got = enc.embed_image_bytes([*jpegs[:3], b"not an image", *jpegs[3:]], **LIMITS)
    assert got.ok == [0, 1, 2, *range(4, 11)] and set(got.errors) == {3}  # a bad image does not block the rest
    cos = (got.vectors * want).sum(axis=1)
    assert cos.min() >= 0.99, cos
    # ... yet int8 is not fp32: the vectors moved (the check below is what guards them).
    assert cos.min() < 0.99999
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, rtol=1e-5)
    one = enc.embed_images([Image.open(io.BytesIO(jpegs[0]))])
    # Alone (and decoded in full) vs in a batch of 10 (reduced-scale decode; dynamic int8 scales
    # activations per batch): the same vector to a few 1e-4 (0.99990 on AVX-512 VNNI, more on AVX2).
    assert one.shape == (1, enc.dim) and float(one[0] @ got.vectors[0]) > 0.9995
    # Different images stay apart more than int8 moves one image.
    off = (want @ want.T)[~np.eye(len(want), dtype=bool)]
    assert np.median(off) < cos.min()

    caplog.clear()
    stamp = int8[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="core.embedding"):
        again = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="auto", onnx_cache_dir=tmp_path)
    assert again.image_runtime == "int8"
    assert "exporting" not in caplog.text and "quantising" not in caplog.text
    assert int8[0].stat().st_mtime_ns == stamp


def test_fp32_graph_matches_pytorch(reference: OpenClipEncoder) -> None:
    enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="onnx", onnx_cache_dir=shared_cache())
    assert enc.image_runtime == "onnx"
    jpegs = photos(6)
    cos = (enc.embed_image_bytes(jpegs, **LIMITS).vectors * reference.embed_image_bytes(jpegs, **LIMITS).vectors).sum(1)
    assert cos.min() > 0.9999


def test_quantised_nodes_leave_attention_projections_and_scores_in_fp32() -> None:
    enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="int8", onnx_cache_dir=shared_cache())
    assert enc._onnx_image is not None
    int8_path = enc._onnx_image.path
    fp32_path = int8_path.with_name(int8_path.name.split("-int8q")[0] + ".onnx")
    graph = onnx.load(str(fp32_path)).graph
    picked = set(onnx_image.quantized_nodes(fp32_path))
    inits = {i.name for i in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    in_proj, other_weights, scores, gemm = set(), set(), set(), set()
    for node in graph.node:
        if node.op_type == "Gemm":
            gemm.add(node.name)
        if node.op_type != "MatMul":
            continue
        srcs = [made_by[i].input[0] if i in made_by and made_by[i].op_type == "Transpose" else i for i in node.input]
        weights = [s for s in srcs if s in inits]
        if any("in_proj" in w for w in weights):
            in_proj.add(node.name)
        elif weights:
            other_weights.add(node.name)
        else:
            scores.add(node.name)
    assert in_proj and other_weights and scores and gemm  # the tiny ViT has all four kinds
    assert picked == other_weights and not picked & gemm
    quantised = [
        n for n in onnx.load(str(int8_path)).graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
    ]
    assert len(quantised) == len(picked)


def test_a_runtime_that_disagrees_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = shared_cache()
    monkeypatch.setitem(onnx_image.MIN_COSINE, "int8", 0.9999999)  # int8 cannot be this close
    with caplog.at_level(logging.WARNING, logger="core.embedding.onnx_image"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="auto", onnx_cache_dir=cache)
    assert enc.image_runtime == "onnx" and "not int8 (int8: disagrees with PyTorch" in caplog.text
    caplog.clear()
    with pytest.raises(ModelLoadError, match=r"IMAGE_RUNTIME=int8: .*disagrees with PyTorch"):
        OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="int8", onnx_cache_dir=cache)

    real_run = onnx_image.OnnxImage.run

    def skewed(self: onnx_image.OnnxImage, pixels: np.ndarray) -> np.ndarray:
        out = real_run(self, pixels)
        out[:, 0] += 0.05  # a small systematic error in the fp32 graph too
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    monkeypatch.setattr(onnx_image.OnnxImage, "run", skewed)
    with caplog.at_level(logging.WARNING, logger="core.embedding.onnx_image"):
        fallback = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="auto", onnx_cache_dir=cache)
    assert fallback.image_runtime == "torch" and "stays on PyTorch" in caplog.text
    assert fallback.embed_image_bytes(photos(2), **LIMITS).vectors.shape == (2, fallback.dim)


def test_a_broken_cache_file_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="int8", onnx_cache_dir=shared_cache())
    assert good._onnx_image is not None
    fp32_name = good._onnx_image.path.name.split("-int8q")[0] + ".onnx"
    (tmp_path / fp32_name).write_bytes(b"\x08\x01" * 100)  # truncated junk, as a full disk would leave it
    with caplog.at_level(logging.WARNING, logger="core.embedding.onnx_image"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="auto", onnx_cache_dir=tmp_path)
    assert enc.image_runtime == "torch" and "stays on PyTorch" in caplog.text
    with pytest.raises(ModelLoadError, match="IMAGE_RUNTIME=onnx"):
        OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="onnx", onnx_cache_dir=tmp_path)


def test_settings_choose_the_image_runtime() -> None:
    base = {"clip_model": "tiny-clip-test", "clip_pretrained": "none", "model_cache_dir": str(shared_cache())}
    auto = load_embedder(Settings(_env_file=None, device="cpu", **base))  # type: ignore[call-arg]  # default auto
    torch_only = load_embedder(Settings(_env_file=None, image_runtime="torch", **base))  # type: ignore[call-arg]
    assert auto.image_runtime == "int8" and torch_only.image_runtime == "torch"
    a = auto.clip.embed_images([Image.open(io.BytesIO(photos(1)[0]))])
    b = torch_only.clip.embed_images([Image.open(io.BytesIO(photos(1)[0]))])
    assert float(a[0] @ b[0]) >= 0.99
