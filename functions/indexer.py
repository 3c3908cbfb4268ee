"""Batch indexer: index a local folder or a bucket prefix into the catalog."""

from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInput
from core.ingest import IngestReport, iter_bucket_prefix, iter_folder
from functions.services import Services


def index_source(services: Services, source: str, *, force: bool = False, progress: bool = True) -> IngestReport:
    """Index ``source``: a local folder, or ``s3://<bucket>/<prefix>`` in the configured bucket.

    JSON / JSONL / CSV metadata files are read; images are paths relative to the metadata file
    (folders) or keys in the bucket (bucket prefixes). Ends with ANN/scalar indexes refreshed.
    """
    if source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
        if bucket != services.store.bucket:
            raise InvalidInput(f"bucket {bucket!r} is not the configured bucket {services.store.bucket!r}")
        items = iter_bucket_prefix(services.store, prefix, services.settings)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise InvalidInput(f"{source} is neither a folder nor an s3://{services.store.bucket}/ prefix")
        items = iter_folder(folder, services.settings)
    report = services.indexer.index(items, force=force, progress=progress, desc=f"indexing {source}")
    services.catalog.ensure_indexes()
    return report
