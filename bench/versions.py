"""Cost of keeping dataset versions: single-product PUT latency over many commits, with the
version retention that cleanup honours (short = the old 30 s, long = the 24 h default).

    python -m bench.versions --puts 300

Each PUT is one commit (one new version); compaction runs every 32 commits and deletes only
versions older than the retention. Prints p50 of the first and last 50 PUTs per retention, the
mean of the last 100 (the compaction every 32 commits shows there, not in a p50) and the total.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import report, s3_settings
from core.embedding.fake import fake_embedder
from core.ingest import PendingProduct
from core.types import ProductInput
from functions.services import Services


def run(puts: int, retention_hours: float, local: str | None = None) -> dict[str, object]:
    extra = {"catalog_uri": f"{local}/r{retention_hours:g}"} if local else {}
    settings, server = s3_settings(version_retention_hours=retention_hours, **extra)
    try:
        services = Services.from_settings(settings, embedder=fake_embedder())
        times = []
        for i in range(puts):
            item = PendingProduct(ProductInput.from_mapping({"product_id": f"P{i}", "title": f"product {i}"}))
            t = time.perf_counter()
            services.indexer.index([item])
            times.append((time.perf_counter() - t) * 1000)
        versions = len(services.catalog._table.list_versions())
        return {
            "store": "local disk" if local else "S3 server (moto)",
            "retention": f"{retention_hours * 3600:g} s" if retention_hours < 1 else f"{retention_hours:g} h",
            "puts": puts,
            "first50_p50_ms": round(statistics.median(times[:50]), 1),
            "last50_p50_ms": round(statistics.median(times[-50:]), 1),
            "last100_mean_ms": round(statistics.fmean(times[-100:]), 1),
            "max_ms": round(max(times), 1),
            "total_s": round(sum(times) / 1000, 1),
            "versions_kept": versions,
            "rows": services.catalog.count(),
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--local", help="also run with the dataset in this local folder (no object store)")
    ap.add_argument("--long-only", action="store_true", help="only the 24 h retention (the default)")
    args = ap.parse_args()
    rows = [run(args.puts, 24.0)] if args.long_only else [run(args.puts, 30 / 3600), run(args.puts, 24.0)]
    if args.local:
        rows += [run(args.puts, 30 / 3600, args.local), run(args.puts, 24.0, args.local)]
    report("versions", rows, {"puts": args.puts})


if __name__ == "__main__":
    main()
