"""CLIP image embedding throughput: JPEG bytes -> vectors, and model only. Runs on CPU or CUDA.

    python -m bench.embed --device cpu --images 256          # PyTorch fp32, ONNX fp32, ONNX int8
    python -m bench.embed --device cuda --images 16384 --batch 512

Inputs are ~600x600 product-like JPEGs (sample renders with sensor-like noise, ~q90). On CUDA it
also checks the GPU pipeline (nvjpeg decode, GPU resize, fp16) against the CPU reference
(PIL preprocessing, fp32): cosine per image, which must stay >= 0.99. On CPU it measures each
image runtime (``--runtimes``, IMAGE_RUNTIME's values) and its cosine with PyTorch fp32 on 64
images. Weights are random-init (CLIP_PRETRAINED=none): same architecture and compute as the real
ones.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np
from PIL import Image

from core.embedding import decode_all
from core.embedding.clip import OpenClipEncoder
from core.images import decode_image
from local.sample import ITEMS, render

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 50_000_000}


def make_jpegs(n: int, size: int = 600, distinct: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    cats = sorted(ITEMS)
    colours = ["red", "blue", "green", "yellow", "black", "teal", "orange", "purple"]
    pats = ["solid", "striped", "dotted", "checked"]
    base = []
    for i in range(min(n, distinct)):
        img = np.asarray(render(cats[i % 6], colours[i % 8], pats[i % 4], size, seed=i), np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        base.append(buf.getvalue())
    return [base[i % len(base)] for i in range(n)]


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=600, help="JPEG side in pixels (product photos: 600-2000)")
    ap.add_argument("--json", default="")
    ap.add_argument("--pool", default="", help="comma list of worker-process counts to measure (EmbedPool)")
    ap.add_argument("--slice", type=int, default=256, help="images per pool work item")
    ap.add_argument("--label", default="", help="appended to the pool rows (e.g. 'MPS')")
    ap.add_argument(
        "--runtimes",
        default="",
        help="image runtimes to measure, comma list of torch,onnx,int8 (default: all three on CPU, torch on CUDA)",
    )
    args = ap.parse_args()
    import torch

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] or (
        ["torch"] if args.device == "cuda" else ["torch", "onnx", "int8"]
    )
    jpegs = make_jpegs(args.images, size=args.size)
    rows: list[dict[str, object]] = []
    mean_kb = sum(map(len, jpegs)) / len(jpegs) / 1024
    imgs = [decode_image(d, **LIMITS) for d in jpegs[: args.batch]]
    check = jpegs[:64]
    reference: np.ndarray | None = None
    enc = None
    for runtime in runtimes:
        t0 = time.perf_counter()
        enc = OpenClipEncoder(args.model, "none", device=args.device, batch_size=args.batch, image_runtime=runtime)  # type: ignore[arg-type]
        assert enc.image_runtime == runtime, f"asked for {runtime}, got {enc.image_runtime}"
        load_s = time.perf_counter() - t0
        precision = (
            "fp16"
            if args.device == "cuda"
            else {"torch": "PyTorch fp32", "onnx": "ONNX fp32"}.get(runtime, "ONNX int8")
        )

        # Model only: preprocessed batches already on the device.
        batch = torch.stack([enc._preprocess(im) for im in imgs]).to(args.device)
        enc._image_vectors(batch)
        reps = max(3, (args.images // args.batch))
        sync(args.device)
        t = time.perf_counter()
        for _ in range(reps):
            enc._image_vectors(batch)
        sync(args.device)
        rows.append(
            {
                "path": f"model only ({precision}, batch {args.batch}; load {load_s:.0f} s)",
                "images_per_s": round(reps * args.batch / (time.perf_counter() - t), 1),
            }
        )

        # JPEG bytes -> vectors through the service's pipeline.
        enc.embed_image_bytes(jpegs[: args.batch], **LIMITS)
        sync(args.device)
        t = time.perf_counter()
        res = enc.embed_image_bytes(jpegs, **LIMITS)
        sync(args.device)
        assert len(res.ok) == len(jpegs) and not res.errors
        if args.device == "cuda":
            label = "nvjpeg batched decode + GPU resize (fp16)"
        else:
            label = f"PIL decode pool ({enc.decode_workers} threads), {precision}"
        rate = round(len(jpegs) / (time.perf_counter() - t), 1)
        rows.append({"path": f"JPEG bytes -> vectors: {label}", "images_per_s": rate})
        if args.device == "cpu":
            got = enc.embed_image_bytes(check, **LIMITS).vectors
            if reference is None:
                reference = (
                    got
                    if runtime == "torch"
                    else OpenClipEncoder(args.model, "none").embed_image_bytes(check, **LIMITS).vectors
                )
            if runtime != "torch":
                cos = (reference * got).sum(axis=1)
                rows.append(
                    {
                        "path": f"cosine vs PyTorch fp32, {precision} ({len(check)} images)",
                        "images_per_s": f"min {cos.min():.5f} mean {cos.mean():.5f}",
                    }
                )
    assert enc is not None

    pool_check = None
    for workers in [int(w) for w in args.pool.split(",") if w.strip()]:
        from core.embedding.pool import EmbedPool

        t0 = time.perf_counter()
        with EmbedPool(
            args.model, "none", device=args.device, workers=workers, batch_size=args.batch, slice_size=args.slice
        ) as pool:
            pool.warm_up(jpegs[0], **LIMITS)
            start_s = time.perf_counter() - t0
            t = time.perf_counter()
            res = pool.embed_image_bytes(jpegs, **LIMITS)
            rate = round(len(jpegs) / (time.perf_counter() - t), 1)
            assert len(res.ok) == len(jpegs) and not res.errors
            pool_check = pool.embed_image_bytes(jpegs[:64], **LIMITS).vectors
        what = "nvjpeg + GPU resize (fp16)" if args.device == "cuda" else "PIL decode (fp32)"
        label = f" [{args.label}]" if args.label else ""
        rows.append(
            {
                "path": f"JPEG bytes -> vectors: EmbedPool {workers} processes x {what}{label} (start {start_s:.0f} s)",
                "images_per_s": rate,
            }
        )

    if args.device == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg

        # The service's CPU path (PIL decode + PIL preprocessing in threads) feeding the GPU.
        sub = jpegs[: min(len(jpegs), 4096)]
        t = time.perf_counter()
        _, images, _ = decode_all(sub, workers=os.cpu_count() or 4, **LIMITS)
        enc._embed_preprocessed_pil(images)
        sync(args.device)
        rows.append(
            {
                "path": f"JPEG bytes -> vectors: PIL decode + preprocess pool ({os.cpu_count()} threads) + GPU",
                "images_per_s": round(len(sub) / (time.perf_counter() - t), 1),
            }
        )
        # Preprocessing agreement with the CPU reference (PIL decode + PIL bicubic resize):
        # relative L2 error of the model input tensors, per image.
        check = jpegs[:64]
        ref_t = torch.stack([enc._preprocess(decode_image(d, **LIMITS)) for d in check]).cuda()
        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in check]
        nv = torch.stack(decode_jpeg(raw, mode=ImageReadMode.RGB, device="cuda"))
        for name, x in (("nvjpeg", nv),):
            got_t = enc.gpu_preprocess(x).float()
            rel = ((got_t - ref_t).flatten(1).norm(dim=1) / ref_t.flatten(1).norm(dim=1)).cpu().numpy()
            rows.append(
                {
                    "path": f"input tensor rel. error vs CPU reference, {name} (64 images)",
                    "images_per_s": f"max {rel.max():.4f} mean {rel.mean():.4f}",
                }
            )
        # Vector agreement (random-init weights: also show how far apart different images are).
        ref_enc = OpenClipEncoder(args.model, "none", device="cpu")
        ref = ref_enc.embed_images([decode_image(d, **LIMITS) for d in check])
        got = enc.embed_image_bytes(check, **LIMITS).vectors
        for name, vecs in (("in-process", got), ("EmbedPool", pool_check)):
            if vecs is None:
                continue
            cos = (ref * vecs).sum(axis=1)
            rows.append(
                {
                    "path": f"cosine vs CPU reference, {name} GPU path (64 images)",
                    "images_per_s": f"min {cos.min():.5f} mean {cos.mean():.5f}",
                }
            )
        off = (ref @ ref.T)[~np.eye(len(ref), dtype=bool)]
        rows.append(
            {
                "path": "cosine between different images (reference, for scale)",
                "images_per_s": f"min {off.min():.5f} mean {off.mean():.5f}",
            }
        )

    meta = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "model": args.model,
        "images": args.images,
        "mean_jpeg_kb": round(mean_kb, 1),
        "jpeg_side": args.size,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(meta))
    width = max(len(str(r["path"])) for r in rows)
    for r in rows:
        print(f"{str(r['path']).ljust(width)}  {r['images_per_s']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
