"""Upload triggers: product files dropped under ``uploads/`` index themselves.

Every metadata object (``.json`` / ``.jsonl`` / ``.csv``) under ``uploads/`` ends as one ingest
record in the ``uploads`` table of the dataset: ``indexed``, ``partial`` (some records failed),
or ``failed``, each failure with its line and reason. Processing always reads the object's
*current* bytes and records their ETag, so duplicate, racing or reordered notifications converge:
the same ETag twice is a no-op, a new ETag re-indexes, and product upserts are idempotent.
Deleting an upload object keeps its products (they belong to the catalog; use
``DELETE /products/{id}``) and marks the record ``deleted_at``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote_plus

import pyarrow as pa

from core.catalog import Catalog, commit_with_retry, open_dataset_table, quote, storage_errors
from core.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from core.ingest import METADATA_SUFFIXES, Indexer, records_from_metadata, resolve_bucket_image
from core.ratelimit import RateLimiter
from core.settings import Settings
from core.storage import ObjectStore, validate_key

log = logging.getLogger(__name__)

UPLOAD_PREFIX = "uploads/"
TABLE = "uploads"
MAX_STORED_FAILURES = 1000
MAX_ATTEMPTS = 3
Status = Literal["pending", "indexed", "partial", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "indexed", "partial", "failed")


@dataclass(frozen=True)
class ObjectEvent:
    """One object change from a bucket notification."""

    bucket: str | None
    key: str
    created: bool


def _record_events(records: list[Any]) -> Iterator[ObjectEvent]:
    for rec in records:
        if not isinstance(rec, dict):
            raise InvalidInput("notification Records entries must be objects")
        s3 = rec.get("s3") or {}
        name = str(rec.get("eventName") or "")
        key = (s3.get("object") or {}).get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput("notification record without s3.object.key")
        bucket = (s3.get("bucket") or {}).get("name")
        # AWS and MinIO URL-encode keys in Records (spaces as '+').
        yield ObjectEvent(bucket, unquote_plus(key), created="ObjectRemoved" not in name)


def parse_notification(payload: Any) -> list[ObjectEvent]:
    """Object events from an AWS S3 notification (``Records``), a MinIO webhook payload
    (``EventName`` + ``Key`` + ``Records``) or an EventBridge event (``detail``).

    AWS's ``s3:TestEvent`` yields no events. Anything else is :class:`InvalidInput`.
    """
    if isinstance(payload, list):
        return [e for item in payload for e in parse_notification(item)]
    if not isinstance(payload, dict):
        raise InvalidInput("notification must be a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    if isinstance(payload.get("Records"), list):
        return list(_record_events(payload["Records"]))
    if isinstance(payload.get("detail"), dict):
        detail = payload["detail"]
        key = (detail.get("object") or {}).get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput("EventBridge event without detail.object.key")
        kind = str(payload.get("detail-type") or "")
        return [ObjectEvent((detail.get("bucket") or {}).get("name"), key, created="Deleted" not in kind)]
    if isinstance(payload.get("Key"), str):  # MinIO without Records: "Key" is "bucket/key"
        bucket, _, key = payload["Key"].partition("/")
        return [ObjectEvent(bucket, unquote_plus(key), "ObjectRemoved" not in str(payload.get("EventName")))]
    raise InvalidInput("unrecognised notification: expected S3 Records, a MinIO payload or an EventBridge event")


def is_upload_metadata(key: str) -> bool:
    """Keys the trigger indexes: metadata files under ``uploads/`` (images come via their JSON)."""
    return key.startswith(UPLOAD_PREFIX) and key.lower().endswith(METADATA_SUFFIXES)


@dataclass(frozen=True)
class Ignored:
    """A notified key that is not indexed, why (``reason``, for the caller) and what kind of
    refusal it is (``kind``, a metrics label)."""

    key: str
    kind: Literal["other_bucket", "not_upload", "missing", "too_large", "duplicate", "over_rate"]
    reason: str


@dataclass(frozen=True)
class Triage:
    """What a notification asks this deployment to do: the keys to index, and the others."""

    keys: list[str]
    ignored: list[Ignored]


def triage(payload: Any, bucket: str) -> Triage:
    """Parse a bucket notification (:func:`parse_notification`) and keep the metadata files
    under ``uploads/`` of ``bucket``: the one place that decides which notified keys are indexed."""
    keys: list[str] = []
    ignored: list[Ignored] = []
    for ev in parse_notification(payload):
        if ev.bucket is not None and ev.bucket != bucket:
            ignored.append(Ignored(ev.key, "other_bucket", f"bucket {ev.bucket!r} is not served here"))
        elif not is_upload_metadata(ev.key):
            ignored.append(Ignored(ev.key, "not_upload", "not a .json/.jsonl/.csv file under uploads/"))
        else:
            keys.append(ev.key)
    return Triage(keys, ignored)


class UploadGate:
    """Checks every notified key before any work is queued or spawned for it, so that a flood of
    made-up or repeated notifications costs a HEAD request each, not an indexing run (on Modal, a
    GPU call): the object exists, is at most ``max_bytes``, was not let through before with the
    same ETag, and fewer than ``per_minute`` keys a minute went through (0: no cap; the others
    are left to the upload sweeper, which finds every unindexed upload)."""

    def __init__(self, store: ObjectStore, max_bytes: int, per_minute: int, remember: int = 10_000) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.remember = remember
        self._limit = RateLimiter(per_minute) if per_minute > 0 else None
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, found: Triage) -> Triage:
        """``found`` with the keys that fail a check moved to ``ignored``. While the bucket cannot
        be asked (an outage), keys are let through unchecked, under the same per-minute cap: the
        worker retries them once storage is back, and nothing a notification names is lost."""
        keys: list[str] = []
        ignored = list(found.ignored)
        reachable = True
        for key in found.keys:
            etag = None
            if reachable:
                try:
                    info = self.store.head(key)
                    etag = info.etag
                except NotFound:
                    ignored.append(Ignored(key, "missing", "no such object in the bucket"))
                    continue
                except Unavailable as exc:
                    reachable = False  # one timeout per notification, not one per key
                    log.warning("bucket unreachable (%s): notified keys are queued unchecked", exc)
                else:
                    if info.size > self.max_bytes:
                        reason = f"{info.size} bytes, over MAX_UPLOAD_BYTES ({self.max_bytes})"
                        ignored.append(Ignored(key, "too_large", reason))
                        continue
            with self._lock:
                if etag is not None and (key, etag) in self._seen:
                    ignored.append(Ignored(key, "duplicate", "already queued with this ETag"))
                    continue
                if self._limit is not None and self._limit.take("notifications") > 0:
                    reason = "over WEBHOOK_KEYS_PER_MINUTE: left to the upload sweeper"
                    ignored.append(Ignored(key, "over_rate", reason))
                    continue
                if etag is not None:
                    self._seen[(key, etag)] = None
                    if len(self._seen) > self.remember:
                        self._seen.popitem(last=False)
            keys.append(key)
        return Triage(keys, ignored)


@dataclass(frozen=True)
class UploadRecord:
    """The ingest record of one upload object."""

    key: str
    etag: str
    status: Status
    reason: str = ""
    product_ids: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    records_total: int = 0
    records_indexed: int = 0
    records_failed: int = 0
    attempts: int = 0
    size: int = 0
    first_seen_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    deleted_at: datetime | None = None


def _schema() -> pa.Schema:
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("etag", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reason", pa.string()),
            pa.field("product_ids", pa.list_(pa.string())),
            pa.field("failures", pa.string()),
            pa.field("records_total", pa.int64()),
            pa.field("records_indexed", pa.int64()),
            pa.field("records_failed", pa.int64()),
            pa.field("attempts", pa.int64()),
            pa.field("size", pa.int64()),
            pa.field("first_seen_at", ts, nullable=False),
            pa.field("updated_at", ts, nullable=False),
            pa.field("deleted_at", ts),
        ]
    )


def _from_row(row: dict[str, Any]) -> UploadRecord:
    return UploadRecord(
        key=row["key"],
        etag=row["etag"],
        status=row["status"],
        reason=row.get("reason") or "",
        product_ids=list(row.get("product_ids") or []),
        failures=json.loads(row["failures"]) if row.get("failures") else [],
        records_total=int(row.get("records_total") or 0),
        records_indexed=int(row.get("records_indexed") or 0),
        records_failed=int(row.get("records_failed") or 0),
        attempts=int(row.get("attempts") or 0),
        size=int(row.get("size") or 0),
        first_seen_at=row["first_seen_at"],
        updated_at=row["updated_at"],
        deleted_at=row.get("deleted_at"),
    )


class UploadLog:
    """The ``uploads`` table: one row per upload key (its latest ETag), upserted by key."""

    def __init__(self, catalog: Catalog) -> None:
        self._retry_s = catalog.write_retry_seconds
        with storage_errors("open uploads"):
            self._table = catalog.open_or_create(TABLE, _schema())

    @classmethod
    def open(cls, settings: Settings) -> UploadLog:
        """The log alone, without models or the products table (for a model-free sweeper)."""
        log = cls.__new__(cls)
        log._retry_s = settings.write_retry_seconds
        log._table = open_dataset_table(settings, TABLE, _schema())
        return log

    def get(self, key: str) -> UploadRecord | None:
        with storage_errors("read uploads"):
            rows = self._table.search().where(f"key = {quote(key)}").limit(1).to_arrow().to_pylist()
        return _from_row(rows[0]) if rows else None

    def put(self, rec: UploadRecord) -> None:
        row = {
            "key": rec.key,
            "etag": rec.etag,
            "status": rec.status,
            "reason": rec.reason,
            "product_ids": rec.product_ids,
            "failures": json.dumps(rec.failures[:MAX_STORED_FAILURES]),
            "records_total": rec.records_total,
            "records_indexed": rec.records_indexed,
            "records_failed": rec.records_failed,
            "attempts": rec.attempts,
            "size": rec.size,
            "first_seen_at": rec.first_seen_at,
            "updated_at": rec.updated_at,
            "deleted_at": rec.deleted_at,
        }
        data = pa.Table.from_pylist([row], schema=self._table.schema)
        commit_with_retry(
            "write uploads",
            lambda: (
                self._table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)
            ),
            budget_s=self._retry_s,
        )

    def known(self) -> dict[str, UploadRecord]:
        """Every record by key (the sweeper compares these with the bucket listing)."""
        with storage_errors("read uploads"):
            rows = self._table.search().limit(None).to_arrow().to_pylist()
        return {r["key"]: _from_row(r) for r in rows}

    def counts(self) -> dict[str, int]:
        """Upload records by status."""
        with storage_errors("read uploads"):
            statuses = self._table.search().select(["status"]).limit(None).to_arrow().column("status")
        return dict(Counter(statuses.to_pylist()))

    def list(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> tuple[list[UploadRecord], int]:
        """A page of records, newest first, and the total matching ``status``."""
        with storage_errors("read uploads"):
            q = self._table.search().limit(None)
            if status is not None:
                q = q.where(f"status = {quote(status)}")
            table = q.to_arrow().sort_by([("updated_at", "descending"), ("key", "ascending")])
        rows = table.slice(offset, limit).to_pylist()
        return [_from_row(r) for r in rows], table.num_rows


class UploadProcessor:
    """Indexes one upload object into the catalog and records the outcome."""

    def __init__(self, store: ObjectStore, indexer: Indexer, log: UploadLog, settings: Settings) -> None:
        self.store = store
        self.indexer = indexer
        self.log = log
        self.settings = settings

    def process(self, key: str) -> UploadRecord | None:
        """Index ``key`` if its current ETag has not been processed; returns the record (None for
        keys the trigger ignores). Storage outages raise :class:`core.errors.Unavailable`."""
        if not is_upload_metadata(key):
            return None
        key = validate_key(key)
        prior = self.log.get(key)
        try:
            info = self.store.head(key)
        except NotFound:
            if prior is not None and prior.deleted_at is None:
                prior = replace(prior, deleted_at=datetime.now(UTC), updated_at=datetime.now(UTC))
                self.log.put(prior)
            return prior
        if prior is not None and prior.etag == info.etag and prior.status != "pending" and prior.deleted_at is None:
            return prior  # already processed at this ETag: duplicate or racing event
        now = datetime.now(UTC)
        attempts = (prior.attempts if prior is not None and prior.etag == info.etag else 0) + 1
        first_seen = prior.first_seen_at if prior is not None else now
        pending = UploadRecord(key, info.etag, "pending", attempts=attempts, size=info.size, first_seen_at=first_seen)
        if attempts > MAX_ATTEMPTS:
            failed = replace(pending, status="failed", reason=f"gave up after {MAX_ATTEMPTS} attempts")
            self.log.put(failed)
            return failed
        self.log.put(pending)
        try:
            data, etag = self.store.get_with_etag(key, max_bytes=self.settings.max_upload_bytes)
        except PayloadTooLarge as exc:
            rec = replace(pending, status="failed", reason=str(exc), updated_at=datetime.now(UTC))
            self.log.put(rec)
            return rec
        except NotFound:
            rec = replace(pending, status="failed", reason="object deleted before it could be read")
            self.log.put(rec)
            return rec

        report = self.indexer.index(records_from_metadata(key, data, resolve_bucket_image))
        failures = [{"line": e.line, "product_id": e.product_id, "reason": e.reason} for e in report.failed]
        ok = report.indexed + report.unchanged
        status: Status
        if report.total == 0:
            status, reason = "failed", "no product records in the file"
        elif not failures:
            status, reason = "indexed", ""
        else:
            status = "partial" if ok else "failed"
            reason = f"{len(failures)} of {report.total} records failed; first: {failures[0]['reason']}"
        rec = replace(
            pending,
            etag=etag,
            status=status,
            reason=reason,
            product_ids=report.product_ids,
            failures=failures,
            records_total=report.total,
            records_indexed=ok,
            records_failed=len(failures),
            updated_at=datetime.now(UTC),
        )
        self.log.put(rec)
        log.info("upload %s: %s (%d indexed, %d failed)", key, status, ok, len(failures))
        return rec

    def due(self, stale_pending: timedelta = timedelta(minutes=2)) -> list[str]:
        """Sweeper: see :func:`due_uploads`."""
        return due_uploads(self.store, self.log, stale_pending)


def due_uploads(store: ObjectStore, log: UploadLog, stale_pending: timedelta = timedelta(minutes=2)) -> list[str]:
    """Upload keys whose current ETag has no final record, plus deletions to note. A ``pending``
    record older than ``stale_pending`` is due again (its process died). Needs no models."""
    known = log.known()
    now = datetime.now(UTC)
    due: list[str] = []
    seen: set[str] = set()
    for obj in store.list(UPLOAD_PREFIX):
        if not is_upload_metadata(obj.key):
            continue
        seen.add(obj.key)
        rec = known.get(obj.key)
        changed = rec is None or rec.etag != obj.etag or rec.deleted_at is not None
        if changed or (rec is not None and rec.status == "pending" and now - rec.updated_at >= stale_pending):
            due.append(obj.key)
    due += [k for k, r in known.items() if k not in seen and r.deleted_at is None]
    return due
