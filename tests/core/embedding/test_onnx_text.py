"""The text towers on ONNX Runtime: same vectors as PyTorch, exported once, checked, safe fallback."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from core import embedding
from core.embedding import load_embedder, onnx_text
from core.embedding.clip import OpenClipEncoder
from core.embedding.sbert import SentenceEncoder
from core.errors import ModelLoadError
from core.settings import Settings

pytestmark = pytest.mark.slow

TEXTS = [
    "blue running shoes",
    "KS-48213",
    "a",
    "stainless steel teapot with a bamboo handle, 1.2 litres, dishwasher safe",
    "crimson sneakers for jogging",
    "x " * 300,  # longer than MiniLM's 256-token window: truncated the same way on both paths
]


NO_INT8 = 1.01  # a cosine bar no int8 copy meets


def shared_cache() -> Path:
    """The suite's export cache (set in conftest): exports are keyed by the weights, so tests that do
    not check the export itself reuse what another test or a dev-runner subprocess exported."""
    return Path(os.environ["MODEL_CACHE_DIR"])


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def test_clip_text_on_onnx_matches_pytorch_and_reuses_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch_enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu")
    with caplog.at_level(logging.INFO, logger="core.embedding.onnx_text"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=tmp_path)
    assert enc.text_runtime == "onnx" and torch_enc.text_runtime == "torch"
    assert "exporting the clip text model" in caplog.text
    files = list(tmp_path.glob("clip-*.onnx"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    ref = torch_enc.embed_texts(TEXTS)
    for texts in ([TEXTS[0]], TEXTS[:4], TEXTS):  # one query, a small batch (ONNX), a big one (PyTorch)
        got = enc.embed_texts(texts)
        assert got.shape == (len(texts), enc.dim)
        assert cos_min(got, ref[: len(texts)]) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(enc.embed_texts(TEXTS[:3]), axis=1), 1.0, rtol=1e-5)
    assert enc.embed_texts([]).shape == (0, enc.dim)

    caplog.clear()
    mtime = files[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="core.embedding.onnx_text"):
        again = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=tmp_path)
    assert again.text_runtime == "onnx" and "exporting" not in caplog.text
    assert files[0].stat().st_mtime_ns == mtime and len(list(tmp_path.glob("*.onnx"))) == 1


def test_clip_text_int8_copy_is_checked_against_pytorch_cached_and_used_when_it_agrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bar the int8 copy does not meet: it is refused, fp32 stays in use (auto) or the load fails
    # (int8). (How well the tiny random test model quantises depends on the CPU's int8 kernels:
    # min probe cosine 0.988 on AVX2, 0.9997 with AVX-512 VNNI; so the bar is set, not assumed.)
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", NO_INT8)
    with caplog.at_level(logging.INFO, logger="core.embedding"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="auto", onnx_cache_dir=tmp_path)
    assert enc.text_runtime == "onnx" and "int8 copy not used" in caplog.text and "quantising" in caplog.text
    with pytest.raises(ModelLoadError, match=r"TEXT_RUNTIME=int8.*disagrees"):
        OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="int8", onnx_cache_dir=tmp_path)
    # With a bar it meets, the cached int8 copy is used (not quantised again).
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", 0.98)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core.embedding"):
        small = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="auto", onnx_cache_dir=tmp_path)
    assert small.text_runtime == "int8" and "quantising" not in caplog.text and "exporting" not in caplog.text
    # fp32 and the two int8 copies (the refused run tried both recipes)
    assert small._onnx is not None and "int8" in small._onnx.path.name and len(list(tmp_path.glob("*.onnx"))) == 3
    ref = OpenClipEncoder("tiny-clip-test", "none", device="cpu").embed_texts(TEXTS)
    for i in range(len(TEXTS)):  # each query alone, as search runs it
        assert cos_min(small.embed_texts([TEXTS[i]]), ref[i : i + 1]) >= 0.98
    np.testing.assert_allclose(np.linalg.norm(small.embed_texts(TEXTS[:3]), axis=1), 1.0, rtol=1e-5)
    # The sentence encoder has no int8 path: under TEXT_RUNTIME=int8 it runs its fp32 graph.
    sent = SentenceEncoder("all-MiniLM-L6-v2", device="cpu", text_runtime="int8", onnx_cache_dir=shared_cache())
    assert sent.text_runtime == "onnx"


def test_sentence_encoder_on_onnx_matches_pytorch(tmp_path: Path) -> None:
    torch_enc = SentenceEncoder("all-MiniLM-L6-v2", device="cpu")
    enc = SentenceEncoder("all-MiniLM-L6-v2", device="cpu", text_runtime="onnx", onnx_cache_dir=shared_cache())
    assert enc.text_runtime == "onnx"
    ref = torch_enc.embed_texts(TEXTS)
    for i in range(len(TEXTS)):
        assert cos_min(enc.embed_texts([TEXTS[i]]), ref[i : i + 1]) > 0.9999
    assert cos_min(enc.embed_texts(TEXTS), ref) > 0.9999  # padded batch
    v = enc.embed_texts(["red running shoes", "crimson sneakers for jogging", "stainless steel teapot"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # still the real model


def test_a_broken_cache_file_falls_back_under_auto_and_fails_under_onnx(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=shared_cache())
    assert good._onnx is not None
    cached = tmp_path / good._onnx.path.name
    shutil.copy(good._onnx.path, cached)
    cached.write_bytes(cached.read_bytes()[:1000])  # a truncated file, as a full disk would leave it
    with caplog.at_level(logging.WARNING, logger="core.embedding.onnx_text"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="auto", onnx_cache_dir=tmp_path)
    assert enc.text_runtime == "torch" and "stays on PyTorch" in caplog.text
    assert enc.embed_texts(["blue running shoes"]).shape == (1, enc.dim)
    with pytest.raises(ModelLoadError, match="TEXT_RUNTIME=onnx"):
        OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=tmp_path)


def test_a_graph_that_disagrees_with_pytorch_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = onnx_text.OnnxText.run

    def skewed(self: onnx_text.OnnxText, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = real_run(self, feeds)
        out[:, 0] += 0.05  # a small, systematic error: the probe check must catch it
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    monkeypatch.setattr(onnx_text.OnnxText, "run", skewed)
    # The skew (cosine ~0.999) passes the int8 bar (0.99), so hold int8 out: this is about the
    # fp32 graph's check.
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", NO_INT8)
    cache = shared_cache()
    enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="auto", onnx_cache_dir=cache)
    assert enc.text_runtime == "torch"
    with pytest.raises(ModelLoadError, match="disagrees with PyTorch"):
        OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=cache)


def test_settings_choose_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", NO_INT8)  # int8 refused (see above)
    # load_embedder keeps one embedder per argument set per process; this test needs them loaded
    # under the bar set above, not one an earlier test loaded with int8: bypass that cache.
    monkeypatch.setattr(embedding, "_load", embedding._load.__wrapped__)
    cache = shared_cache()
    base = {"clip_model": "tiny-clip-test", "clip_pretrained": "none", "model_cache_dir": str(cache)}
    on_torch = load_embedder(Settings(_env_file=None, text_runtime="torch", **base))  # type: ignore[call-arg]
    on_onnx = load_embedder(Settings(_env_file=None, device="cpu", **base))  # type: ignore[call-arg]  # default auto
    assert on_torch.clip.text_runtime == "torch" and on_torch.text.text_runtime == "torch"
    assert on_onnx.clip.text_runtime == "onnx" and on_onnx.text.text_runtime == "onnx"  # int8 refused
    assert on_onnx.clip is not on_torch.clip
    assert on_onnx.text_runtimes == {"clip": "onnx", "text": "onnx"}
    assert on_torch.text_runtimes == {"clip": "torch", "text": "torch"}
    assert {p.name for p in cache.glob("*.onnx")} >= {
        on_onnx.clip._onnx.path.name,
        on_onnx.text._onnx.path.name,
    }


def test_the_two_query_towers_split_the_cores_between_their_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # A query batch runs both towers at once (QueryEncoder): together they take the cores, no more
    # (one thread each at least).
    for cores, split in ((1, (1, 1)), (2, (1, 1)), (3, (1, 2)), (16, (8, 8))):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=cores: n)
        assert (onnx_text.query_threads("clip"), onnx_text.query_threads("sentence")) == split
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    clip = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="onnx", onnx_cache_dir=shared_cache())
    sent = SentenceEncoder("all-MiniLM-L6-v2", device="cpu", text_runtime="onnx", onnx_cache_dir=shared_cache())
    assert clip._onnx is not None and sent._onnx is not None
    threads = [enc._onnx._session.get_session_options().intra_op_num_threads for enc in (clip, sent)]
    assert threads == [2, 2]


def test_clip_text_int8_copy_quantises_the_attention_input_projections_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.embedding import onnx_image

    # A bar either recipe meets on any CPU: this checks which weights are quantised, not how well.
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", 0.9)
    enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="int8", onnx_cache_dir=shared_cache())
    assert enc._onnx is not None and enc.text_runtime == "int8"
    int8_path = enc._onnx.path
    fp32_path = int8_path.with_name(int8_path.name.split("-int8q")[0] + ".onnx")
    # The image tower's recipe keeps the attention input projections fp32; the text tower's does not.
    image_recipe = set(onnx_image.quantized_nodes(fp32_path))
    text_recipe = set(onnx_image.quantized_nodes(fp32_path, onnx_text.TEXT_KEEP_FP32))
    graph = onnx.load(str(fp32_path)).graph
    inits = {i.name for i in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}

    def weights(node: onnx.NodeProto) -> list[str]:  # initialisers, seen through a Transpose
        srcs = [made_by[i].input[0] if i in made_by and made_by[i].op_type == "Transpose" else i for i in node.input]
        return [w for w in srcs if w in inits]

    in_proj = {n.name for n in graph.node if n.op_type == "MatMul" and any("in_proj" in w for w in weights(n))}
    assert in_proj and image_recipe and text_recipe == image_recipe | in_proj and not image_recipe & in_proj
    int8_nodes = onnx.load(str(int8_path)).graph.node
    quantised = [n for n in int8_nodes if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantised) == len(text_recipe)
    # Its own cache file: the image recipe's copy of the same graph is a different file.
    assert onnx_image.quantized(fp32_path, onnx_text.TEXT_KEEP_FP32) == int8_path
    assert onnx_image.quantized(fp32_path).name != int8_path.name


def test_clip_text_int8_falls_back_to_the_image_towers_recipe_when_the_faster_copy_disagrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.embedding import onnx_image

    real_verify = onnx_text.verify
    refused: list[Path] = []

    def verify(runner: onnx_text.OnnxText, feeds: Any, reference: Any) -> float:
        if runner.precision == "int8" and not refused:  # the first int8 copy tried: the text recipe's
            refused.append(runner.path)
            return 0.5
        return real_verify(runner, feeds, reference)

    monkeypatch.setattr(onnx_text, "verify", verify)
    monkeypatch.setattr(onnx_text, "MIN_COSINE_INT8", 0.9)
    with caplog.at_level(logging.INFO, logger="core.embedding"):
        enc = OpenClipEncoder("tiny-clip-test", "none", device="cpu", text_runtime="int8", onnx_cache_dir=tmp_path)
    assert enc._onnx is not None and enc.text_runtime == "int8"
    fp32_path = enc._onnx.path.with_name(enc._onnx.path.name.split("-int8q")[0] + ".onnx")
    assert refused == [onnx_image.quantized(fp32_path, onnx_text.TEXT_KEEP_FP32)]
    assert enc._onnx.path == onnx_image.quantized(fp32_path)  # then the image tower's recipe
    assert "runs on ONNX Runtime, int8 (attention input projections fp32" in caplog.text
    assert "int8 copy not used" not in caplog.text
