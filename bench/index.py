"""Indexing throughput: sample products (224px JPEG images + text) -> CLIP + MiniLM -> LanceDB on S3.

    python -m bench.index --products 200 [--clip-model ViT-B-32]

Uses random-init CLIP weights (CLIP_PRETRAINED=none) unless --pretrained is given: the
architecture, and so the compute, is the same as with real weights.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from bench.common import report, s3_settings
from core.embedding import load_embedder
from core.images import decode_image
from core.ingest import PendingProduct
from core.types import ProductInput
from functions.services import Services
from local.sample import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=200)
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    settings, server = s3_settings(
        clip_model=args.clip_model, clip_pretrained=args.pretrained, embed_batch_size=args.batch_size
    )
    t = time.perf_counter()
    embedder = load_embedder(settings)
    load_s = time.perf_counter() - t
    services = Services.from_settings(settings, embedder=embedder)
    products = generate(args.products)
    items = [
        PendingProduct(
            ProductInput.from_mapping({k: v for k, v in p.record.items() if k != "image"}), image_bytes=p.image
        )
        for p in products
    ]
    images = [decode_image(p.image, max_bytes=10**7, max_pixels=10**8) for p in products[:64]]
    t = time.perf_counter()
    embedder.clip.embed_images(images)
    clip_only = len(images) / (time.perf_counter() - t)
    texts = [p.record["title"] for p in products[:256]]
    t = time.perf_counter()
    embedder.text.embed_texts([str(x) for x in texts])
    text_only = len(texts) / (time.perf_counter() - t)
    rep = services.indexer.index(items, progress=True, total=len(items))
    # A shop's daily edits: every product's stock flips (an inventory sync), then every title
    # changes (a copy edit); the photos stay the same.
    out_of_stock = [replace(i, product=replace(i.product, in_stock=False)) for i in items]
    stock = services.indexer.index(out_of_stock)
    retitled = [replace(i, product=replace(i.product, title=i.product.title + " (new)")) for i in out_of_stock]
    title = services.indexer.index(retitled)
    server.stop()
    rows = [
        {"stage": "model load (CLIP + MiniLM)", "value": f"{load_s:.1f} s"},
        {"stage": f"CLIP {args.clip_model} images only (batch {args.batch_size})", "value": f"{clip_only:.1f} img/s"},
        {"stage": "MiniLM texts only", "value": f"{text_only:.0f} texts/s"},
        {
            "stage": "end-to-end index (decode+embed+upsert on S3)",
            "value": f"{rep.indexed / rep.seconds:.1f} products/s ({rep.indexed} in {rep.seconds:.1f} s)",
        },
        {
            "stage": "re-index after a stock change (every product)",
            "value": f"{stock.indexed / stock.seconds:.1f} products/s ({stock.indexed} in {stock.seconds:.1f} s)",
        },
        {
            "stage": "re-index after a title change (every product)",
            "value": f"{title.indexed / title.seconds:.1f} products/s ({title.indexed} in {title.seconds:.1f} s)",
        },
    ]
    report("index", rows, {"products": args.products, "clip_model": args.clip_model, "pretrained": args.pretrained})


if __name__ == "__main__":
    main()
