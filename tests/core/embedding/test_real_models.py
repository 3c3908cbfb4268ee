"""Real open_clip and sentence-transformers code (offline: random-init CLIP, bundled MiniLM)."""

import os
from pathlib import Path

import numpy as np
import pytest

from core.embedding import Embedder, embed_image_bytes, load_embedder
from core.embedding.clip import OpenClipEncoder
from core.embedding.sbert import SentenceEncoder
from core.errors import ConfigError, ModelLoadError
from core.images import decode_image
from core.search import SearchQuery, search
from core.settings import Settings
from functions.services import Services
from local.sample import generate
from tests.helpers import pending

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder("all-MiniLM-L6-v2", device="cpu")


@pytest.fixture(scope="module")
def vit_b32() -> OpenClipEncoder:
    """The full-size ViT-B-32 (random init, PyTorch) on CPU, loaded once for this module."""
    return OpenClipEncoder("ViT-B-32", "none", device="cpu")


def test_tiny_clip_is_deterministic_and_normalised() -> None:
    a = OpenClipEncoder("tiny-clip-test", "none", device="cpu")
    b = OpenClipEncoder("tiny-clip-test", "none", device="cpu")
    assert a.dim == 64 and a.random_init and a.name == "open_clip:tiny-clip-test:none"
    imgs = [decode_image(p.image, max_bytes=10**7, max_pixels=10**7) for p in generate(3, image_size=64)]
    va, vb = a.embed_images(imgs), b.embed_images(imgs)
    assert va.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-6)  # every process agrees on vectors
    t = a.embed_texts(["red shoe", "blue bag"] * 20)  # more than one batch
    assert t.shape == (40, 64)


def test_missing_weights_fail_loudly_naming_offline_mode(tmp_path: object) -> None:
    with pytest.raises(ModelLoadError, match="CLIP_PRETRAINED=none"):
        OpenClipEncoder("tiny-clip-test", f"{tmp_path}/missing-checkpoint.pt", device="cpu")
    with pytest.raises(ConfigError, match="unknown CLIP_MODEL"):
        OpenClipEncoder("no-such-model", "none", device="cpu")


def test_minilm_from_bundled_package_is_semantic(minilm: SentenceEncoder) -> None:
    assert minilm.dim == 384
    v = minilm.embed_texts(["red running shoes", "crimson sneakers for jogging", "stainless steel teapot"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_load_embedder_caches_per_process() -> None:
    s = Settings(_env_file=None, clip_model="tiny-clip-test", clip_pretrained="none")  # type: ignore[call-arg]
    assert load_embedder(s) is load_embedder(s)


@pytest.mark.integration
def test_full_vit_b32_image_search_finds_own_image(
    s3_settings: Settings, minilm: SentenceEncoder, vit_b32: OpenClipEncoder
) -> None:
    """The full-size ViT-B-32 architecture (random init) on a catalog stored on the S3 server."""
    clip = vit_b32
    assert clip.dim == 512
    services = Services.from_settings(s3_settings, embedder=Embedder(clip=clip, text=minilm))
    products = generate(16, image_size=224)
    items = [
        pending(
            str(p.record["product_id"]),
            str(p.record["title"]),
            category=str(p.record["category"]),
            image=p.image,
        )
        for p in products
    ]
    assert services.indexer.index(items).indexed == 16
    for p in products[:5]:
        img = decode_image(p.image, max_bytes=10**7, max_pixels=10**7)
        hits = search(
            services.catalog, services.embedder, SearchQuery(image=img, top_k=3), services.default_weights
        ).hits
        assert hits[0].product.product_id == p.record["product_id"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    # Text search on the real sentence model still ranks the matching title first.
    target = products[7].record
    hits = search(
        services.catalog,
        services.embedder,
        SearchQuery(text=str(target["title"]), top_k=3),
        services.default_weights,
    ).hits
    assert hits[0].product.product_id == target["product_id"]


def _photo_jpegs(n: int, size: int = 600) -> list[bytes]:
    import io

    from local.sample import render

    out = []
    for i, p in enumerate(generate(n, image_size=size)):
        img = render(str(p.record["category"]), str(p.record["color"]), str(p.record["pattern"]), size, seed=i)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_image_bytes_path_matches_pil_path_and_reports_bad_items() -> None:
    clip = OpenClipEncoder("tiny-clip-test", "none", device="cpu", decode_workers=2)
    jpegs = _photo_jpegs(5, 200)
    datas = [jpegs[0], b"not an image", jpegs[1], jpegs[2][:80], *jpegs[3:]]
    result = clip.embed_image_bytes(datas, max_bytes=10**7, max_pixels=10**7)
    assert result.ok == [0, 2, 4, 5] and set(result.errors) == {1, 3}
    limits = {"max_bytes": 10**7, "max_pixels": 10**7, "min_side": clip.image_size}
    ref = clip.embed_images([decode_image(d, **limits) for d in jpegs[:2] + jpegs[3:]])  # type: ignore[arg-type]
    np.testing.assert_allclose(result.vectors, ref, rtol=1e-4, atol=1e-5)


def test_reduced_scale_jpeg_decoding_keeps_the_vectors(vit_b32: OpenClipEncoder) -> None:
    """The bytes path decodes large JPEGs at 1/2-1/8 scale; the vectors stay those of a full decode."""
    clip = vit_b32
    jpegs = _photo_jpegs(4, 1000)
    full = clip.embed_images([decode_image(d, max_bytes=10**7, max_pixels=10**7) for d in jpegs])
    got = clip.embed_image_bytes(jpegs, max_bytes=10**7, max_pixels=10**7).vectors
    cos = (full * got).sum(axis=1)
    assert cos.min() > 0.999, cos
    small = decode_image(jpegs[0], max_bytes=10**7, max_pixels=10**7, min_side=clip.image_size)
    assert small.size == (250, 250)  # 1000 // 224 = 4: decoded at 1/4 scale


@pytest.mark.gpu
def test_cuda_jpeg_pipeline_matches_cpu_reference() -> None:
    """nvjpeg decode + GPU resize + fp16 vs PIL preprocessing + fp32 on CPU: cosine >= 0.99 per image."""
    jpegs = _photo_jpegs(16)
    gpu = OpenClipEncoder("ViT-B-32", "none", device="cuda")
    cpu = OpenClipEncoder("ViT-B-32", "none", device="cpu")
    got = gpu.embed_image_bytes(jpegs, max_bytes=10**7, max_pixels=10**8)
    assert got.ok == list(range(16))
    ref = cpu.embed_images([decode_image(d, max_bytes=10**7, max_pixels=10**8) for d in jpegs])
    cos = (got.vectors * ref).sum(axis=1)
    assert cos.min() >= 0.99, cos


def test_embed_pool_matches_in_process_and_indexes_through_s3(s3_settings: Settings, minilm: SentenceEncoder) -> None:
    """EmbedPool (2 worker processes, shared-memory transport): same vectors, same per-image
    errors, input order kept across slices; and the indexer uses it through the settings."""
    from core.embedding.pool import EmbedPool, PooledImageEncoder

    clip = OpenClipEncoder("tiny-clip-test", "none", device="cpu")
    jpegs = _photo_jpegs(7, 200)
    datas = [jpegs[0], b"not an image", *jpegs[1:4], jpegs[4][:80], *jpegs[5:]]
    want = clip.embed_image_bytes(datas, max_bytes=10**7, max_pixels=10**7)
    with EmbedPool("tiny-clip-test", "none", device="cpu", workers=2, slice_size=3) as pool:
        got = pool.embed_image_bytes(datas, max_bytes=10**7, max_pixels=10**7)
        assert got.ok == want.ok == [0, 2, 3, 4, 6, 7]
        assert {i: str(e) for i, e in got.errors.items()} == {i: str(e) for i, e in want.errors.items()}
        np.testing.assert_allclose(got.vectors, want.vectors, rtol=1e-5, atol=1e-6)
        too_big = pool.embed_image_bytes(jpegs[:2], max_bytes=100, max_pixels=10**7)
        assert too_big.ok == [] and set(too_big.errors) == {0, 1}

        pooled = PooledImageEncoder(clip, pool)
        services = Services.from_settings(s3_settings, embedder=Embedder(clip=pooled, text=minilm))
        items = [pending(f"p{i}", f"product {i}", image=d) for i, d in enumerate(datas)]
        report = services.indexer.index(items)
        assert report.indexed == 6 and sorted(f.product_id for f in report.failed) == ["p1", "p5"]
        stored = services.catalog.get_candidate("p3")
        assert stored.image_vector is not None
        np.testing.assert_allclose(stored.image_vector, want.vectors[2], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_embed_pool_matches_cpu_reference() -> None:
    from core.embedding.pool import EmbedPool

    jpegs = _photo_jpegs(16)
    cpu = OpenClipEncoder("ViT-B-32", "none", device="cpu")
    ref = cpu.embed_images([decode_image(d, max_bytes=10**7, max_pixels=10**8) for d in jpegs])
    with EmbedPool("ViT-B-32", "none", device="cuda", workers=2, slice_size=4) as pool:
        got = pool.embed_image_bytes(jpegs, max_bytes=10**7, max_pixels=10**8)
    assert got.ok == list(range(16))
    assert (got.vectors * ref).sum(axis=1).min() >= 0.99


def test_pool_workers_run_the_configured_image_runtime() -> None:
    """EMBED_PROCESSES on CPU: the workers run what the serving process runs (int8 here)."""
    from core.embedding import _load
    from core.embedding.pool import PooledImageEncoder

    cache = os.environ["MODEL_CACHE_DIR"]
    # load_embedder's body without its per-process cache, so the pool can be closed afterwards.
    embedder = _load.__wrapped__(  # type: ignore[attr-defined]
        "tiny-clip-test", "none", "all-MiniLM-L6-v2", "cpu", 32, 1, "auto", cache, "auto"
    )
    assert isinstance(embedder.clip, PooledImageEncoder)
    try:
        assert embedder.image_runtime == "int8"
        jpegs = _photo_jpegs(4, 200)
        got = embed_image_bytes(embedder.clip, jpegs, max_bytes=10**7, max_pixels=10**7).vectors
    finally:
        embedder.clip.pool.close()
    local = OpenClipEncoder("tiny-clip-test", "none", device="cpu", image_runtime="int8", onnx_cache_dir=Path(cache))
    fp32 = OpenClipEncoder("tiny-clip-test", "none", device="cpu")
    limits = {"max_bytes": 10**7, "max_pixels": 10**7}
    np.testing.assert_allclose(got, local.embed_image_bytes(jpegs, **limits).vectors, atol=1e-5)  # same batches
    assert np.abs(got - fp32.embed_image_bytes(jpegs, **limits).vectors).max() > 1e-4  # ... and not fp32
