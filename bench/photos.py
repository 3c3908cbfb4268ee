"""What several photos per product cost the query path: photo search over a catalog whose
products have one photo against the same catalog with more photos each.

    python -m bench.photos --products 100000 --more 2      # ~5 min on 2 cores

For each catalog (LanceDB in a local folder: this measures the in-memory query path, not S3):
load the hot catalog (time, bytes of the photo matrices, RSS growth), then run ``--queries``
photo searches (image weight only, top 10) through :func:`core.search.hot_ranked`, each a noisy
copy of a random stored photo (with several photos, any of them), and report p50/p95 latency
and recall@10 against an exact best-photo ranking over every photo vector. Vectors are synthetic
at CLIP's 512 dimensions, drawn around product-type centres like ``bench.query``'s.

Writes ``bench/results/photos-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.query import build_catalog, current_rss_mb
from core.catalog import Catalog
from core.embedding import l2_normalize
from core.hot import HotCatalog, HotSnapshot
from core.search import hot_ranked
from core.types import Weights

IMAGE_ONLY = Weights(image=1.0, text=0.0)


class ExactBestPhoto:
    """The products with the best photo for a query, by brute force over float32 copies of
    every photo vector (made once: a copy per query would disturb the timed searches)."""

    def __init__(self, snap: HotSnapshot) -> None:
        self.snap = snap
        self.rows = np.flatnonzero(snap.alive & snap.has_image)
        self.image = snap.image[self.rows].astype(np.float32)
        self.more = snap.more_image.astype(np.float32)

    def top(self, q: np.ndarray, k: int) -> list[str]:
        best = np.full(len(self.snap.alive), -np.inf)
        best[self.rows] = self.image @ q
        if len(self.more):
            np.maximum.at(best, self.snap.more_owner, self.more @ q)
        top = np.argsort(-best, kind="stable")[:k]
        return [self.snap.products[int(r)].product_id for r in top]


def run(folder: Path, n: int, more: int, queries: int, seed: int) -> dict[str, Any]:
    catalog = Catalog(str(folder), clip_dim=512, text_dim=384, space={"clip": "bench", "text": "bench"})
    built, _ = build_catalog(catalog, n, more_photos=more)
    rss = current_rss_mb()
    hot = HotCatalog(catalog)
    started = time.perf_counter()
    hot.refresh()
    load_s = time.perf_counter() - started
    rss_growth = current_rss_mb() - rss
    snap = hot.snapshot
    assert snap is not None
    exact = ExactBestPhoto(snap)
    rng = np.random.default_rng(seed)
    photos = np.flatnonzero(snap.has_image)
    lat, recall = [], []
    for _ in range(queries):
        pick = int(rng.integers(0, len(photos) + len(snap.more_owner)))
        src = snap.image[photos[pick]] if pick < len(photos) else snap.more_image[pick - len(photos)]
        noise = rng.standard_normal(512).astype(np.float32) * (0.3 / np.sqrt(512))
        q = l2_normalize((src.astype(np.float32) + noise)[None])[0]
        t = time.perf_counter()
        hits = hot_ranked(hot, snap, q, None, IMAGE_ONLY, 10)
        lat.append((time.perf_counter() - t) * 1000)
        want = exact.top(q, 10)
        recall.append(len({h.product.product_id for h in hits} & set(want)) / 10)
    return {
        "products": n,
        "photos_per_product": 1 + more,
        "photo_vectors": int(snap.has_image.sum()) + len(snap.more_owner),
        "build_s": round(built, 1),
        "hot_load_s": round(load_s, 1),
        "photo_matrix_mb": round((snap.image.nbytes + snap.more_image.nbytes) / 1e6, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "ann_more_photos": snap.ann_more_image is not None,
        "photo_search_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "photo_search_p95_ms": round(float(np.percentile(lat, 95)), 2),
        "recall_at_10": round(float(np.mean(recall)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--more", type=int, default=2, help="photos after the first, per product")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for more in (0, args.more):
            rows.append(run(Path(tmp) / f"c{more}", args.products, more, args.queries, args.seed))
            print(json.dumps(rows[-1]))
    print()
    head = ("photos/product", "vectors", "matrix MB", "load s", "p50 ms", "p95 ms", "recall")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (15, 9, 10, 7, 7, 7, 7), strict=True)))
    for r in rows:
        print(
            f"{r['photos_per_product']:>15} {r['photo_vectors']:>9} {r['photo_matrix_mb']:>10} {r['hot_load_s']:>7}"
            f" {r['photo_search_p50_ms']:>7} {r['photo_search_p95_ms']:>7} {r['recall_at_10']:>7}"
        )
    out = Path("bench/results") / f"photos-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
