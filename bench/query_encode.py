"""A query batch's text encode (MiniLM + CLIP's text tower), in two layouts, on this CPU.

    python -m bench.query_encode                  # ViT-B-32 random init, as the load sweep

``side by side`` is what a query process runs (:class:`core.embedding.batcher.QueryEncoder`):
CLIP's text tower in a thread of its own, its ONNX session on half the cores, while MiniLM runs
on all of them. ``in turn`` is the layout before: the two towers one after the other, each
session on all the cores. Same models, same texts, same code path; only CLIP's session and the
order differ. Per batch size: wall time (median) and this process's CPU time per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.common import report
from core.embedding import load_embedder
from core.embedding.batcher import QueryEncoder
from core.embedding.onnx_text import OnnxText
from core.settings import Settings

WORDS = ("blue", "red", "green", "black", "white", "leather", "wool", "cotton", "running", "hiking", "vintage", "shoes")


def measure(fn: Any, items: list[tuple[str, bool]], repeat: int) -> tuple[float, float]:
    for _ in range(3):
        fn(items)
    wall = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t = time.perf_counter()
        fn(items)
        wall.append((time.perf_counter() - t) * 1000)
    return statistics.median(wall), (time.process_time() - cpu0) * 1000 / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2, help="both layouts, alternating, this many times")
    ap.add_argument("--name", default="query-encode")
    args = ap.parse_args()
    settings = Settings(_env_file=None, clip_model=args.clip_model, clip_pretrained="none")  # type: ignore[call-arg]
    embedder = load_embedder(settings)
    clip: Any = embedder.clip
    if clip._onnx is None:
        raise SystemExit("CLIP's text tower is not on ONNX Runtime here; nothing to compare")
    half = clip._onnx
    every_core = OnnxText(half.path, threads=torch.get_num_threads(), precision=half.precision)
    encoder = QueryEncoder(embedder)

    def in_turn(items: list[tuple[str, bool]]) -> None:
        texts = [t for t, _ in items]
        embedder.text.embed_texts(texts)
        clip._onnx = every_core
        try:
            clip.embed_texts(texts)
        finally:
            clip._onnx = half

    rows = []
    for r in range(args.rounds):
        for batch in (1, 4, 8):
            items = [(f"{' '.join(WORDS[(i + j) % len(WORDS)] for j in range(3))} {i}", True) for i in range(batch)]
            for layout, fn in (("in turn", in_turn), ("side by side", encoder._encode_texts)):
                wall, cpu = measure(fn, items, args.repeat)
                row = {
                    "round": r + 1,
                    "batch": batch,
                    "layout": layout,
                    "ms_p50": round(wall, 2),
                    "core_ms": round(cpu, 2),
                }
                print(row, flush=True)
                rows.append(row)
    meta = {"clip_model": args.clip_model, "threads": torch.get_num_threads(), "clip_precision": half.precision}
    report(args.name, rows, meta)


if __name__ == "__main__":
    main()
