"""What one event batch costs to store: CPU, latency and object-store requests per append.

    python -m bench.events                      # 300 sequential batches of 5, on a table of 2,000 events
    python -m bench.events --batches 500 --prefill 100000 --rounds 3

As the dev runner does: the embedded S3 server (moto) in this process, the ``events`` table in a
fresh bucket, :class:`core.events.EventLog` appending one batch at a time (no concurrent callers,
so no commit is shared). Per round: process CPU per append (the API's work, Lance's and the S3
server's, all in this process), wall-time percentiles, and the requests the server answered per
append, by kind (from a counter in front of moto's app). Sequential appends give the same work
every run, so this separates changes to the write path that the load sweep's noise hides.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import percentiles, report
from core.events import EventLog, parse_event
from core.settings import Settings
from local import s3server


def request_kind(environ: dict[str, Any]) -> str:
    """``METHOD what`` for one S3 request: versions (manifests), data files, transactions, lists."""
    path, query = str(environ.get("PATH_INFO", "")), str(environ.get("QUERY_STRING", ""))
    if "list-type" in query:
        what = "list"
    elif "/_versions/" in path:
        what = "manifest"
    elif "/data/" in path:
        what = "data file"
    elif "/_transactions/" in path:
        what = "transaction"
    else:
        what = "other"
    return f"{environ.get('REQUEST_METHOD')} {what}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=300, help="appends per round")
    ap.add_argument("--size", type=int, default=5, help="events per batch")
    ap.add_argument("--prefill", type=int, default=2000, help="events stored before the first round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="events")
    args = ap.parse_args()

    counts: Counter[str] = Counter()
    serve = s3server.S3OnlyDispatcher.get_application

    def counted(self: Any, environ: dict[str, Any]) -> Any:
        counts[request_kind(environ)] += 1
        return serve(self, environ)

    s3server.S3OnlyDispatcher.get_application = counted  # type: ignore[method-assign]
    data = Path(tempfile.mkdtemp(prefix="bench-events-"))
    server = s3server.EmbeddedS3(data, interval=2.0).start()  # mirrored to disk, as in the dev runner
    server.client().create_bucket(Bucket="events")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint_url=server.url,
        s3_bucket="events",
        aws_access_key_id=SecretStr(s3server.ACCESS_KEY),
        aws_secret_access_key=SecretStr(s3server.SECRET_KEY),
    )
    log = EventLog.open(settings)
    now = datetime.now(UTC)
    n = 0

    def batch(size: int) -> list[Any]:
        nonlocal n
        n += size
        return [
            parse_event({"user_id": f"u{i % 977}", "product_id": f"p{i % 3001}", "event_type": "view"}, now)
            for i in range(n - size, n)
        ]

    if args.prefill:
        log.append(batch(args.prefill))
    for _ in range(20):  # warm-up: connections, caches, the first compaction
        log.append(batch(args.size))
    rows = []
    try:
        for r in range(args.rounds):
            counts.clear()
            cpu0, wall = time.process_time(), []
            for _ in range(args.batches):
                t = time.perf_counter()
                log.append(batch(args.size))
                wall.append((time.perf_counter() - t) * 1000)
            cpu = time.process_time() - cpu0
            spread = percentiles(wall)
            row: dict[str, Any] = {
                "round": r + 1,
                "core_ms_per_append": round(cpu * 1000 / args.batches, 2),
                "wall_ms_p50": spread["p50_ms"],
                "wall_ms_p95": spread["p95_ms"],
                "requests_per_append": round(sum(counts.values()) / args.batches, 2),
            }
            row |= {k: round(v / args.batches, 2) for k, v in sorted(counts.items())}
            print(row, flush=True)
            rows.append(row)
    finally:
        server.stop()
    cores = [r["core_ms_per_append"] for r in rows]
    print(f"core-ms per append: median {statistics.median(cores):.2f} over {len(cores)} rounds")
    meta = {"batches": args.batches, "size": args.size, "prefill": args.prefill, "rounds": args.rounds}
    report(args.name, rows, meta)


if __name__ == "__main__":
    main()
