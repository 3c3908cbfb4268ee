"""A query batch's text encode (MiniLM + CLIP's text tower) on this CPU: thread layouts.

    python -m bench.query_encode                  # ViT-B-32 random init, as the load sweep

Layouts of one batch's encode (same models, same texts, same code path; only the sessions'
intra-op threads and the order differ):

``split cores`` is what a query process runs (:class:`core.embedding.batcher.QueryEncoder`,
:func:`core.embedding.onnx_text.query_threads`): CLIP's text tower in a thread of its own while
MiniLM runs in the caller's, the two sessions splitting the cores. ``side by side, MiniLM on all
cores`` is the layout before it (CLIP's session on half the cores, MiniLM's on all of them);
``in turn`` the one before that (the towers one after the other, each on all the cores).

Then each tower alone, on one thread and on all the cores; and CLIP's tower on one thread in the
int8 copy in use (every MatMul weight int8, :data:`core.embedding.onnx_text.TEXT_KEEP_FP32`)
against the image tower's recipe (attention input projections fp32), the copy used before. Per
batch size: wall time (median) and this process's CPU time per batch. Last, each int8 copy's
agreement with PyTorch fp32 over 180 random token strings of 5-16 tokens (cosine, min and mean).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from bench.common import report
from core.embedding import load_embedder
from core.embedding.batcher import QueryEncoder
from core.embedding.onnx_image import KEEP_FP32, quantized
from core.embedding.onnx_text import OnnxText, query_threads
from core.settings import Settings

WORDS = ("blue", "red", "green", "black", "white", "leather", "wool", "cotton", "running", "hiking", "vintage", "shoes")
BATCHES = (1, 4, 8)
SOT, EOT = 49406, 49407  # CLIP's start and end of text tokens


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    wall = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t) * 1000)
    return statistics.median(wall), (time.process_time() - cpu0) * 1000 / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2, help="every layout, alternating, this many times")
    ap.add_argument("--name", default="query-encode")
    args = ap.parse_args()
    settings = Settings(_env_file=None, clip_model=args.clip_model, clip_pretrained="none")  # type: ignore[call-arg]
    embedder = load_embedder(settings)
    clip: Any = embedder.clip
    text: Any = embedder.text
    if clip._onnx is None or text._onnx is None:
        raise SystemExit("the text towers are not both on ONNX Runtime here; nothing to compare")
    cores = torch.get_num_threads()
    sessions = {  # (tower, threads) -> session; the process's own two are among them
        ("clip", query_threads("clip")): clip._onnx,
        ("sentence", query_threads("sentence")): text._onnx,
    }
    for tower, own in (("clip", clip._onnx), ("sentence", text._onnx)):
        for threads in (1, cores):
            if (tower, threads) not in sessions:
                sessions[tower, threads] = OnnxText(own.path, threads=threads, precision=own.precision)
    process = {"clip": clip._onnx, "sentence": text._onnx}
    fp32_path = clip._onnx.path.with_name(clip._onnx.path.name.split("-int8q")[0] + ".onnx")
    copies = {"in use": OnnxText(clip._onnx.path, threads=1, precision="int8")}
    if clip._onnx.precision == "int8" and quantized(fp32_path, KEEP_FP32) != clip._onnx.path:
        copies["q/k/v fp32 (before)"] = OnnxText(quantized(fp32_path, KEEP_FP32), threads=1, precision="int8")
    encoder = QueryEncoder(embedder)

    def using(clip_threads: int, sentence_threads: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            clip._onnx, text._onnx = sessions["clip", clip_threads], sessions["sentence", sentence_threads]
            try:
                return fn()
            finally:
                clip._onnx, text._onnx = process["clip"], process["sentence"]

        return run

    def layouts(texts: list[str]) -> dict[str, Callable[[], Any]]:
        items = [(t, True) for t in texts]

        def in_turn() -> None:
            embedder.text.embed_texts(texts)
            embedder.clip.embed_texts(texts)

        out = {
            "in turn": using(cores, cores, in_turn),
            "side by side, MiniLM on all cores": using(
                query_threads("clip"), cores, lambda: encoder._encode_texts(items)
            ),
            "split cores": lambda: encoder._encode_texts(items),
        }
        feeds = {"clip": clip._text_feeds(texts), "sentence": text._feeds(texts)}
        for tower in ("clip", "sentence"):
            for threads in sorted({1, cores}):
                session, feed = sessions[tower, threads], feeds[tower]
                out[f"{tower} alone, {threads} thread{'s' if threads > 1 else ''}"] = partial(session.run, feed)
        for label, copy in copies.items():
            out[f"clip int8 {label}, 1 thread"] = partial(copy.run, feeds["clip"])
        return out

    rows = []
    for r in range(args.rounds):
        for batch in BATCHES:
            texts = [f"{' '.join(WORDS[(i + j) % len(WORDS)] for j in range(3))} {i}" for i in range(batch)]
            for layout, fn in layouts(texts).items():
                wall, cpu = measure(fn, args.repeat)
                row = {
                    "round": r + 1,
                    "batch": batch,
                    "layout": layout,
                    "ms_p50": round(wall, 2),
                    "core_ms": round(cpu, 2),
                }
                print(row, flush=True)
                rows.append(row)
    rng = np.random.default_rng(0)
    for label, copy in copies.items():
        cosines = []
        for _ in range(180):
            n = int(rng.integers(5, 17))
            tokens = np.zeros((1, n), np.int64)
            tokens[0, 0], tokens[0, -1] = SOT, EOT
            tokens[0, 1:-1] = rng.integers(1, SOT, n - 2)
            padded = np.zeros((1, 77), np.int64)  # PyTorch takes the tokenizer's full context
            padded[:, :n] = tokens
            ref = clip._run(torch.from_numpy(padded), image=False)
            cosines.append(float((copy.run({"tokens": tokens}) * ref).sum()))
        row = {"agreement": f"clip int8 {label}", "min_cosine": round(min(cosines), 5)}
        row["mean_cosine"] = round(float(np.mean(cosines)), 5)
        print(row, flush=True)
        rows.append(row)
    meta = {
        "clip_model": args.clip_model,
        "threads": cores,
        "clip_threads": query_threads("clip"),
        "sentence_threads": query_threads("sentence"),
        "clip_precision": clip._onnx.precision,
    }
    report(args.name, rows, meta)


if __name__ == "__main__":
    main()
