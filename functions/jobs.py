"""Batch jobs shared by the dev runner and the Modal app: indexing a folder or bucket prefix,
upload processing, sweeping, reindex, training, compaction and start-up files.

Plain functions over :class:`Services` so they run (and are tested) anywhere; the Modal app wraps
each in a GPU class method or a scheduled function.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.catalog import Catalog, Compaction, compact_dataset
from core.errors import InvalidInput
from core.events import EventLog
from core.hot import HotCatalog
from core.ingest import IngestReport, iter_bucket_prefix, iter_folder, records_from_metadata, resolve_bucket_image
from core.recommend.artifact import ModelStore
from core.recommend.online import Recommender
from core.recommend.train import TrainReport, train
from core.settings import Settings
from core.startup import PREFIX as STARTUP_PREFIX
from core.startup import read_startup, write_startup
from core.storage import ObjectStore
from core.uploads import UploadLog, due_uploads, is_upload_metadata
from functions.services import Services

log = logging.getLogger(__name__)


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


def process_upload(services: Services, key: str) -> dict[str, Any] | None:
    """Index one upload object (idempotent per ETag); the ingest record as a dict."""
    rec = services.uploads.process(key)
    return None if rec is None else asdict(rec)


def due_upload_keys(settings: Settings, stale_pending: timedelta = timedelta(minutes=2)) -> list[str]:
    """What the sweeper must (re)process. Opens no models: cheap to run on a schedule."""
    return due_uploads(ObjectStore(settings), UploadLog.open(settings), stale_pending)


def list_metadata(settings: Settings, prefix: str) -> list[str]:
    """Metadata keys (.json/.jsonl/.csv) under ``prefix`` in the bucket, in key order."""
    store = ObjectStore(settings)
    if prefix.startswith("uploads/"):
        return [o.key for o in store.list(prefix) if is_upload_metadata(o.key)]
    return [o.key for o in store.list(prefix) if o.key.lower().endswith((".json", ".jsonl", ".csv"))]


@dataclass
class ReindexSummary:
    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, part: dict[str, Any]) -> None:
        self.files += 1
        self.indexed += part["indexed"]
        self.unchanged += part["unchanged"]
        self.failed += len(part["failures"])
        self.seconds = max(self.seconds, part["seconds"])
        self.failures += part["failures"][: max(0, 100 - len(self.failures))]


def index_key(services: Services, key: str, force: bool = False) -> dict[str, Any]:
    """Index one metadata object of the bucket (a reindex work item); returns counts and failures."""
    data = services.store.get_bytes(key, max_bytes=services.settings.max_upload_bytes)
    report: IngestReport = services.indexer.index(records_from_metadata(key, data, resolve_bucket_image), force=force)
    return {
        "key": key,
        "indexed": report.indexed,
        "unchanged": report.unchanged,
        "seconds": report.seconds,
        "failures": [asdict(f) for f in report.failed],
    }


def open_recommender_store(settings: Settings) -> tuple[Catalog, EventLog, ModelStore]:
    """Catalog, events and model store without loading any model (cheap, for batch jobs)."""
    return Catalog.open_existing(settings), EventLog.open(settings), ModelStore(ObjectStore(settings))


def train_recommender(settings: Settings, *, only_if_new_events: bool = False) -> TrainReport | None:
    """Retrain the recommendation model on every stored event and publish it to the bucket.

    With ``only_if_new_events`` (scheduled runs) nothing happens when no event arrived since the
    last model was trained. Query processes pick the new model up on their next refresh."""
    catalog, events, models = open_recommender_store(settings)
    if only_if_new_events:
        latest = models.latest()
        if latest is not None and latest.get("info", {}).get("events_total") == events.count():
            return None
    weights = settings.default_weights(catalog.clip_random_init)
    report = train(
        catalog,
        events,
        models,
        weights,
        min_rating=settings.recs_min_rating,
        positive_types=settings.positive_types,
        rerank=settings.recs_rerank,
        max_items=settings.recs_max_items,
        memory_gb=settings.recs_train_memory_gb,
    )
    try:
        written = write_startup_file(settings)
    except Exception as exc:  # the model is saved; query processes start the slow way
        log.warning("start-up file not written: %s", exc)
        written = f"not written: {exc}"
    return replace(report, startup_file=written)


def write_startup_file(settings: Settings) -> str | None:
    """Build a query process's state as one would (from the previous start-up file plus what
    changed since, or from the dataset) and write it to the bucket (:mod:`core.startup`); None
    when the catalog is under ``STARTUP_FILE_MIN_PRODUCTS``."""
    catalog, events, models = open_recommender_store(settings)
    if catalog.count() < max(settings.startup_file_min_products, 1):
        return None
    weights = settings.default_weights(catalog.clip_random_init)
    hot = HotCatalog(catalog, ann_min_rows=settings.ann_min_rows, nprobe=settings.ann_nprobe)
    recommender = Recommender(
        catalog,
        events,
        models,
        weights,
        hot=hot,
        ann_min_rows=settings.ann_min_rows,
        event_window_days=settings.recs_event_window_days,
    )
    previous = read_startup(models.store, catalog, weights)
    if previous is not None:
        hot.adopt(previous.hot)
        recommender.adopt(previous.events, previous.recs)
    hot.refresh()
    recommender.refresh()
    snap = hot.snapshot
    assert snap is not None
    file_id = write_startup(models.store, catalog, snap, recommender.snapshot, recommender.state, weights)
    return f"{STARTUP_PREFIX}{file_id}/ ({snap.live} products, {len(recommender.state)} events)"


def compact(settings: Settings) -> list[Compaction]:
    """Scheduled compaction + cleanup of every dataset table (keeps VERSION_RETENTION_HOURS)."""
    return compact_dataset(settings)
