"""The embedded S3 server's mirror to disk: one pass over a bucket of N small objects.

    python -m bench.mirror --objects 5000

Writes N objects through the server, then times the first mirror pass (every object written to
disk) and five passes that find nothing new (the cost the dev runner pays every few seconds
while it runs: wall time and this process's CPU time, medians).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import report
from local.s3server import EmbeddedS3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--name", default="mirror")
    args = ap.parse_args()
    server = EmbeddedS3(Path(tempfile.mkdtemp(prefix="bench-mirror-")), interval=3600).start()  # passes on demand
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="mirror")

        def put(i: int) -> None:
            s3.put_object(Bucket="mirror", Key=f"catalog/t.lance/_versions/{i:020d}.manifest", Body=b"x" * 200)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(args.objects)))
        t = time.perf_counter()
        written = server.mirror()
        first_s = time.perf_counter() - t
        wall, cpu = [], []
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            assert server.mirror() == 0
            wall.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
    finally:
        server.stop()
    row = {
        "objects": args.objects,
        "first_pass_s": round(first_s, 3),
        "written": written,
        "unchanged_pass_ms_p50": round(statistics.median(wall), 2),
        "unchanged_pass_cpu_ms_p50": round(statistics.median(cpu), 2),
    }
    report(args.name, [row], {"objects": args.objects})


if __name__ == "__main__":
    main()
