"""The embedded S3 server's answer to the listing Lance sends on every commit, in a growing bucket.

    python -m bench.listing --objects 3000,30000,150000

A bucket holds N objects, a third of them a table's ``_versions/`` manifests (named as Lance's V2
scheme names them, newest first) and the rest its data and transaction files. The listing is the
one a Lance commit sends: ``_versions/`` without ``max-keys``, so a page of up to 1,000 keys.
Timed over HTTP (p50 of ``--repeat``), three ways: moto's own walk over the bucket and its own
XML; moto's walk with the directly written XML (``local.s3server.fast_listings``); the sorted key
index (``local.s3index``) with that XML, as the dev runner serves it now.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request

from bench.common import report
from local.s3index import indexed_listings
from local.s3server import ACCESS_KEY, SECRET_KEY, fast_listings, start_moto

MODES = (
    ("moto walk, moto XML", False, False),
    ("moto walk, direct XML", True, False),
    ("index, direct XML", True, True),
)


def fill(bucket: str, objects: int, start: int) -> None:
    """Objects ``start`` .. ``objects - 1`` straight into moto's backend (an HTTP PUT each would
    take minutes at 150,000); the key index sees them as it sees PUTs."""
    from moto.s3.models import s3_backends

    backend = s3_backends["123456789012"]["global"]
    for i in range(start, objects):
        if i % 3 == 0:
            key = f"catalog/events.lance/_versions/{18446744073709551615 - i // 3:020d}.manifest"
        elif i % 3 == 1:
            key = f"catalog/events.lance/data/{i:012d}.lance"
        else:
            key = f"catalog/events.lance/_transactions/{i:012d}.txn"
        backend.put_object(bucket, key, b"x" * 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", default="3000,30000,150000", help="bucket sizes, comma-separated, ascending")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--slow-max", type=int, default=30000, help="skip moto's own XML above this many objects")
    ap.add_argument("--name", default="listing")
    args = ap.parse_args()
    sizes = [int(s) for s in args.objects.split(",")]
    server = start_moto()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    ).create_bucket(Bucket="listing")
    query = f"{url}/listing?list-type=2&prefix=catalog%2Fevents.lance%2F_versions%2F"
    rows = []
    try:
        filled = 0
        for size in sizes:
            fill("listing", size, filled)
            filled = size
            row: dict[str, object] = {"objects": size, "versions": (size + 2) // 3}
            for label, fast, indexed in MODES:
                if not fast and size > args.slow_max:
                    continue
                fast_listings(fast)
                indexed_listings(indexed)
                ms = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    with urllib.request.urlopen(query, timeout=120) as resp:
                        body = resp.read()
                    ms.append((time.perf_counter() - t) * 1000)
                row[f"{label} ms_p50"] = round(statistics.median(ms), 2)
                row["page_keys"] = body.count(b"<Contents>")
            print(row, flush=True)
            rows.append(row)
    finally:
        fast_listings(True)
        indexed_listings(True)
        server.stop()
    report(args.name, rows, {"objects": args.objects, "repeat": args.repeat})


if __name__ == "__main__":
    main()
