"""The products table: a LanceDB dataset on S3-compatible storage or a local path.

One :class:`Catalog` per process keeps the connection and table handle open; LanceDB checks for
new dataset versions every ``refresh_seconds`` so other writers' commits become visible without a
reopen. Vectors are stored L2-normalised, so ``dot`` distance is ``1 - cosine``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import Bitmap, BTree, IvfPq

from core.errors import ConfigError, InvalidInput, NotFound, Unavailable
from core.settings import Settings
from core.types import Filters, Product, Vector

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = "products"
Column = Literal["image", "text"]
_VECTOR_COLUMNS: dict[Column, str] = {"image": "image_vector", "text": "text_vector"}
_PRODUCT_COLUMNS = [
    "product_id",
    "title",
    "description",
    "category",
    "price",
    "image_key",
    "more_image_keys",
    "in_stock",
    "attributes",
    "content_hash",
    "created_at",
    "updated_at",
]


@dataclass(frozen=True)
class ProductRecord:
    """A product with its vectors, ready to be written."""

    product: Product
    image_vector: Vector | None
    text_vector: Vector
    content_hash: str
    more_image_vectors: tuple[Vector, ...] = ()  # the photos after the first, in order
    embed_hash: str | None = None
    """``"<text>/<images>"``: hashes of what the text and the image vectors were made from (with
    the models' names); an update that leaves one of them unchanged reuses its stored vectors."""


@dataclass(frozen=True)
class StoredVectors:
    """A product's stored vectors and the ``embed_hash`` they were made from."""

    embed_hash: str | None
    image_vector: Vector | None
    text_vector: Vector
    more_image_vectors: tuple[Vector, ...]


@dataclass(frozen=True)
class Candidate:
    """A row returned by a vector search, with both stored vectors for exact re-scoring."""

    product: Product
    image_vector: Vector | None
    text_vector: Vector | None
    more_image_vectors: tuple[Vector, ...] = ()


def added_columns(clip_dim: int) -> list[pa.Field]:
    """Columns added since the first datasets, which gain them (all null) when opened: the
    photos after the first (keys and vectors, in order; null: none), the stock flag (null: in
    stock) and what the vectors were made from (null: not known, see :class:`ProductRecord`)."""
    return [
        pa.field("more_image_keys", pa.list_(pa.string())),
        pa.field("more_image_vectors", pa.list_(pa.list_(pa.float32(), clip_dim))),
        pa.field("in_stock", pa.bool_()),
        pa.field("embed_hash", pa.string()),
    ]


def products_schema(clip_dim: int, text_dim: int, space: dict[str, str]) -> pa.Schema:
    """Arrow schema of the products table; ``space`` names the models that made the vectors."""
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("title", pa.string(), nullable=False),
            pa.field("description", pa.string()),
            pa.field("category", pa.string()),
            pa.field("price", pa.float64()),
            pa.field("image_key", pa.string()),
            pa.field("attributes", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("created_at", ts, nullable=False),
            pa.field("updated_at", ts, nullable=False),
            pa.field("image_vector", pa.list_(pa.float32(), clip_dim)),
            pa.field("text_vector", pa.list_(pa.float32(), text_dim)),
            *added_columns(clip_dim),
        ],
        metadata={"embedding_space": json.dumps(space, sort_keys=True)},
    )


def quote(value: str) -> str:
    """A SQL string literal for Lance filters."""
    return "'" + value.replace("'", "''") + "'"


def filter_sql(filters: Filters, exclude_id: str | None = None) -> str | None:
    """Lance SQL predicate for ``filters`` (None when nothing is filtered)."""
    if filters.attributes:
        # Attributes are one JSON string column in the dataset; the in-memory catalog has them
        # parsed. Never ignored silently.
        raise InvalidInput("attribute filters need the in-memory catalog (HOT_CATALOG), which is not loaded")
    parts: list[str] = []
    if filters.categories is not None:
        parts.append(f"category IN ({', '.join(quote(c) for c in filters.categories)})")
    if filters.min_price is not None:
        parts.append(f"price >= {float(filters.min_price)!r}")
    if filters.max_price is not None:
        parts.append(f"price <= {float(filters.max_price)!r}")
    if not filters.include_out_of_stock:
        parts.append("(in_stock IS NULL OR in_stock = true)")
    excluded = sorted(filters.exclude_ids | ({exclude_id} if exclude_id is not None else set()))
    if excluded:
        parts.append(f"product_id NOT IN ({', '.join(quote(i) for i in excluded)})")
    return " AND ".join(parts) or None


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Lance reports object-store failures as OSError/RuntimeError; callers get Unavailable."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise Unavailable(f"catalog {action} failed: {exc}") from exc


WRITE_RETRY_SECONDS = 30.0


def commit_with_retry(
    action: str,
    first: Callable[[], T],
    again: Callable[[], T] | None = None,
    *,
    budget_s: float = WRITE_RETRY_SECONDS,
) -> T:
    """Run one commit, retrying with jittered exponential backoff (0.1 s doubling to 4 s) while
    it fails with a commit conflict ("too many concurrent writers") or a storage error, for at
    most ``budget_s`` seconds; then :class:`Unavailable` (503, nothing half-written). ``again``
    replaces ``first`` on retries: for appends, an insert-if-absent keyed by id, so a commit
    that landed although its answer was lost is not written twice."""
    deadline = time.monotonic() + budget_s
    delay, attempt, fn = 0.1, 0, first
    while True:
        try:
            with storage_errors(action):
                return fn()
        except Unavailable as exc:
            attempt += 1
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (attempt %d), retrying in ~%.1fs: %s", action, attempt, delay, exc)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 4.0)
            fn = again or first


def _vec(value: Any) -> Vector | None:
    if value is None:
        return None
    return np.asarray(value, dtype=np.float32)


def _stored_row(p: Product, content_hash: str) -> dict[str, Any]:
    """The product columns of ``p`` as stored (:func:`_to_product` reads them back)."""
    return {
        "product_id": p.product_id,
        "title": p.title,
        "description": p.description,
        "category": p.category,
        "price": p.price,
        "image_key": p.image,
        "more_image_keys": list(p.more_images) or None,
        "in_stock": p.in_stock,
        "attributes": json.dumps(p.attributes, sort_keys=True, default=str),
        "content_hash": content_hash,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def _to_product(row: dict[str, Any]) -> Product:
    price = row.get("price")
    return Product(
        product_id=row["product_id"],
        title=row["title"],
        description=row.get("description") or "",
        category=row.get("category"),
        price=None if price is None or (isinstance(price, float) and math.isnan(price)) else price,
        image=row.get("image_key"),
        attributes=json.loads(row["attributes"]) if row.get("attributes") else {},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        more_images=tuple(row.get("more_image_keys") or ()),
        in_stock=row.get("in_stock") is not False,
    )


def _candidate(row: dict[str, Any]) -> Candidate:
    more = tuple(np.asarray(v, dtype=np.float32) for v in row.get("more_image_vectors") or ())
    return Candidate(_to_product(row), _vec(row["image_vector"]), _vec(row["text_vector"]), more)


COMPACT_EVERY = 32
SCAN_BATCH_ROWS = 32_768
COMPACT_FRAGMENT_ROWS = 131_072
CLEANUP_EVERY = timedelta(hours=1)
DEFAULT_RETENTION = timedelta(hours=24)


def compact_files(table: Any) -> None:
    """Merge a table's small fragments and fold new rows into its indexes, keeping every version.

    LanceDB's ``optimize`` also removes old versions, and to do that reads the manifest of every
    version still kept: on the embedded S3 server it took 1.1 s at 108 versions and 5.2 s at 920,
    against 0.25-0.31 s for the compaction alone (2,000 products, 2026-11-28). Run after every 32
    single-product PUTs, that made a long import quadratic. So this is compaction only (pylance's
    ``compact_files`` and ``optimize_indices``), and :class:`Compactor` removes old versions at most
    once per :data:`CLEANUP_EVERY`, in the background.
    """
    ds = table.to_lance()
    # Fragments stop being merged at COMPACT_FRAGMENT_ROWS: with Lance's default (1M rows) every
    # compaction during a bulk load rewrote all rows so far: quadratic writes and disk use.
    ds.optimize.compact_files(target_rows_per_fragment=COMPACT_FRAGMENT_ROWS)
    if ds.describe_indices():
        table.to_lance().optimize.optimize_indices()
    table.checkout_latest()  # this handle's next write starts from the compacted version


class Compactor:
    """Compacts a table after every ``every`` commits made through this process.

    Each small commit (one PUT, one event batch) adds a fragment, and reads and merge-inserts
    touch every fragment: without compaction a 2,000-product import by single PUTs slows down
    linearly with the number of writes. Compaction
    (:func:`compact_files`) merges fragments and keeps every version; versions older than
    ``retention`` (VERSION_RETENTION_HOURS) are removed at most once per ``cleanup_every``, in a
    thread of their own (removing files commits nothing, so writers never wait for it), and by the
    scheduled :func:`compact_dataset`. A version a query process still serves, or one a user may
    roll back to, is never deleted.
    """

    def __init__(
        self,
        table: Any,
        every: int = COMPACT_EVERY,
        background: bool = False,
        retention: timedelta = DEFAULT_RETENTION,
        cleanup_every: timedelta | None = None,
    ) -> None:
        self.table = table
        self.every = every
        self.background = background
        self.retention = retention
        # A retention shorter than CLEANUP_EVERY (a deployment short of disk) is honoured by
        # cleaning up that often: a bulk import's compactions leave superseded files behind.
        self.cleanup_every = cleanup_every if cleanup_every is not None else min(CLEANUP_EVERY, retention)
        self._commits = 0
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._cleaning = threading.Lock()
        self._last_cleanup = time.monotonic()

    def committed(self) -> None:
        """Count one commit; compact when due (in a thread with ``background``: appends commute
        with compaction, so append-only tables need not wait)."""
        with self._lock:
            self._commits += 1
            if self._commits < self.every:
                return
            self._commits = 0
        if self.background:
            threading.Thread(target=self._compact_once, name="compaction", daemon=True).start()
        else:
            self._compact_once()

    def _compact_once(self) -> None:
        if not self._running.acquire(blocking=False):
            return  # one compaction at a time
        try:
            compact_files(self.table)
        except Exception as exc:  # best effort (e.g. a concurrent writer won): try again next time
            log.warning("compaction of %s skipped: %s", self.table.name, exc)
        finally:
            self._running.release()
        if time.monotonic() - self._last_cleanup >= self.cleanup_every.total_seconds():
            self._last_cleanup = time.monotonic()
            threading.Thread(target=self.cleanup, name="version-cleanup", daemon=True).start()

    def cleanup(self) -> None:
        """Remove the versions older than ``retention`` (one cleanup at a time)."""
        if not self._cleaning.acquire(blocking=False):
            return
        try:
            self.table.to_lance().cleanup_old_versions(older_than=self.retention)
        except Exception as exc:  # best effort: the scheduled compaction cleans up as well
            log.warning("cleanup of %s's old versions skipped: %s", self.table.name, exc)
        finally:
            self._cleaning.release()


class Appender:
    """Appends to one table through a handle of its own that does not reload the table before
    every commit.

    A LanceDB handle opened with a read-consistency interval lists the table's versions before
    each write, one object-store request per commit on top of the commit's own. Appends need no
    fresh view: a commit made on an older version is checked against the versions committed since
    (appends commute with appends and with compaction) and lands after them. So this handle is
    brought up to date only every ``refresh_seconds`` and after a failed commit (an old version's
    files may have been cleaned up by then). Readers use another handle; :attr:`commits` tells them
    when this process has appended since their last read.
    """

    def __init__(self, table: Any, *, refresh_seconds: float, retry_seconds: float) -> None:
        self.table = table
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._checked = time.monotonic()
        self.commits = 0
        """Commits made through this handle (readers compare it with what they last saw)."""

    def append(self, action: str, data: pa.Table, key: str) -> None:
        """Commit ``data``, retrying (:func:`commit_with_retry`); a retry inserts only the rows
        whose ``key`` is not stored yet, so a commit that landed although its answer was lost is
        not written twice."""

        def first() -> None:
            if time.monotonic() - self._checked >= self.refresh_seconds:
                self._refresh()
            self.table.add(data)

        def again() -> None:
            self._refresh()
            self.table.merge_insert(key).when_not_matched_insert_all().execute(data)

        # both inside the retries: a refresh fails like a commit while the store is away
        commit_with_retry(action, first, again, budget_s=self.retry_seconds)
        self.commits += 1

    def _refresh(self) -> None:
        self.table.checkout_latest()
        self._checked = time.monotonic()


def open_dataset_table(
    settings: Settings, name: str, schema: pa.Schema, *, consistency: bool = True
) -> lancedb.table.Table:
    """One table of the dataset (created on first use) without opening the products table, for
    model-free jobs (upload sweeper, event import). ``consistency=False``: a handle that looks for
    other processes' versions only when told to (``checkout_latest``), see :class:`Appender`."""
    uri = settings.resolved_catalog_uri
    with storage_errors(f"open {name}"):
        db = lancedb.connect(
            uri,
            storage_options=settings.storage_options() if uri.startswith("s3://") else None,
            read_consistency_interval=timedelta(seconds=settings.catalog_refresh_seconds) if consistency else None,
        )
        try:
            return db.open_table(name)
        except ValueError:
            return db.create_table(name, schema=schema, exist_ok=True)


@dataclass(frozen=True)
class Compaction:
    table: str
    versions_before: int
    versions_after: int
    seconds: float


def compact_dataset(settings: Settings) -> list[Compaction]:
    """Compact every table of the dataset and delete versions older than
    VERSION_RETENTION_HOURS (never younger ones: query processes may still serve them and
    `rollback` may need them). Safe beside readers and writers; run it on a schedule."""
    import time

    uri = settings.resolved_catalog_uri
    retention = timedelta(hours=settings.version_retention_hours)
    out = []
    with storage_errors("compact"):
        db = lancedb.connect(uri, storage_options=settings.storage_options() if uri.startswith("s3://") else None)
        for name in sorted(db.list_tables().tables):
            table = db.open_table(name)
            before = len(table.list_versions())
            started = time.perf_counter()
            table.optimize(cleanup_older_than=retention)
            out.append(Compaction(name, before, len(table.list_versions()), time.perf_counter() - started))
    return out


@dataclass(frozen=True)
class DatasetVersion:
    version: int
    timestamp: datetime
    products: int


class Catalog:
    """Products on LanceDB: idempotent upserts, gets, deletes and filtered vector search."""

    def __init__(
        self,
        uri: str,
        *,
        clip_dim: int,
        text_dim: int,
        space: dict[str, str],
        storage_options: dict[str, str] | None = None,
        refresh_seconds: float = 1.0,
        index_min_rows: int = 5000,
        retention: timedelta = DEFAULT_RETENTION,
        write_retry_seconds: float = WRITE_RETRY_SECONDS,
    ) -> None:
        self.uri = uri
        self.refresh_seconds = refresh_seconds
        self._storage_options = storage_options or None
        self.retention = retention
        self.write_retry_seconds = write_retry_seconds
        self.clip_dim = clip_dim
        self.text_dim = text_dim
        self.space = space
        self.index_min_rows = index_min_rows
        self._write_lock = threading.Lock()
        self.local_writes = 0  # commits made through this object (read-your-writes for caches)
        self._write_listeners: list[Callable[[], None]] = []
        schema = products_schema(clip_dim, text_dim, space)
        with storage_errors("open"):
            self._db = lancedb.connect(
                uri,
                storage_options=storage_options or None,
                read_consistency_interval=timedelta(seconds=refresh_seconds),
            )
            try:
                self._table = self._db.open_table(TABLE)
            except ValueError:
                # Not there yet: create it. exist_ok covers a concurrent creator.
                self._table = self._db.create_table(TABLE, schema=schema, exist_ok=True)
            self._add_columns()
        self._check_schema()
        self._compactor = Compactor(self._table, retention=retention)

    @classmethod
    def from_settings(cls, settings: Settings, *, clip_dim: int, text_dim: int, space: dict[str, str]) -> Catalog:
        uri = settings.resolved_catalog_uri
        return cls(
            uri,
            clip_dim=clip_dim,
            text_dim=text_dim,
            space=space,
            storage_options=settings.storage_options() if uri.startswith("s3://") else None,
            refresh_seconds=settings.catalog_refresh_seconds,
            index_min_rows=settings.index_min_rows,
            retention=timedelta(hours=settings.version_retention_hours),
            write_retry_seconds=settings.write_retry_seconds,
        )

    @classmethod
    def open_existing(cls, settings: Settings) -> Catalog:
        """Open the products table without loading models (vector sizes from its schema), for
        jobs such as training that only read stored vectors."""
        uri = settings.resolved_catalog_uri
        opts = settings.storage_options() if uri.startswith("s3://") else None
        with storage_errors("open"):
            db = lancedb.connect(uri, storage_options=opts)
            try:
                schema = db.open_table(TABLE).schema
            except ValueError:
                raise NotFound(f"no catalog at {uri}: index products first") from None
        meta = schema.metadata or {}
        space = json.loads(meta[b"embedding_space"]) if b"embedding_space" in meta else {}
        return cls(
            uri,
            clip_dim=schema.field("image_vector").type.list_size,
            text_dim=schema.field("text_vector").type.list_size,
            space=space,
            storage_options=opts,
            refresh_seconds=settings.catalog_refresh_seconds,
            index_min_rows=settings.index_min_rows,
            retention=timedelta(hours=settings.version_retention_hours),
            write_retry_seconds=settings.write_retry_seconds,
        )

    @property
    def clip_random_init(self) -> bool:
        """True when the stored image vectors come from random-init CLIP (not meaningful)."""
        return str(self.stored_space.get("clip", "")).endswith(":none")

    def _add_columns(self) -> None:
        """Bring an older dataset up to date: the :func:`added_columns` it lacks, all null, in
        one new version (no data is rewritten). Another process doing the same at the same
        moment wins the race; this one then just sees the columns."""
        have = set(self._table.schema.names)
        missing = [f for f in added_columns(self.clip_dim) if f.name not in have]
        if not missing:
            return
        try:
            self._table.add_columns(missing)
            log.info("catalog %s: added columns %s", self.uri, [f.name for f in missing])
        except (OSError, RuntimeError, ValueError) as exc:
            self._table.checkout_latest()  # type: ignore[no-untyped-call]
            if not {f.name for f in missing} <= set(self._table.schema.names):
                raise Unavailable(
                    f"catalog {self.uri}: adding columns {[f.name for f in missing]} failed: {exc}"
                ) from exc

    def _check_schema(self) -> None:
        schema = self._table.schema
        for col, dim in (("image_vector", self.clip_dim), ("text_vector", self.text_dim)):
            have = schema.field(col).type.list_size
            if have != dim:
                raise ConfigError(
                    f"catalog {self.uri} stores {col} of dimension {have}, but the configured model "
                    f"produces {dim}. Use the models the catalog was built with, or a new CATALOG_URI "
                    "and re-index."
                )

    def open_or_create(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        """Another table of the same dataset (e.g. the upload log), created on first use."""
        try:
            return self._db.open_table(name)
        except ValueError:
            return self._db.create_table(name, schema=schema, exist_ok=True)

    def open_for_appends(self, name: str) -> lancedb.table.Table:
        """A second handle on an existing table of the dataset, from a connection that looks for
        other processes' versions only when told to (see :class:`Appender`)."""
        db = lancedb.connect(self.uri, storage_options=self._storage_options, read_consistency_interval=None)
        return db.open_table(name)

    @property
    def stored_space(self) -> dict[str, str]:
        """The models the stored vectors were made with (from the table's schema metadata)."""
        meta = self._table.schema.metadata or {}
        raw = meta.get(b"embedding_space")
        return json.loads(raw) if raw else {}

    @property
    def version(self) -> int:
        with storage_errors("version"):
            return int(self._table.version)

    def count(self) -> int:
        with storage_errors("count"):
            return int(self._table.count_rows())

    def versions(self, limit: int = 20) -> list[DatasetVersion]:
        """The newest ``limit`` versions of the products table still stored (older ones were
        cleaned up after VERSION_RETENTION_HOURS), newest first, with their row counts."""
        with storage_errors("list versions"):
            listed = sorted(self._table.list_versions(), key=lambda v: -int(v["version"]))[:limit]
            reader = self._db.open_table(TABLE)
            out = []
            for v in listed:
                reader.checkout(int(v["version"]))
                ts = v["timestamp"]
                when = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
                out.append(DatasetVersion(int(v["version"]), when, int(reader.count_rows())))
            return out

    def restore(self, version: int) -> int:
        """Make ``version`` the current state again by committing it as a new version (history
        is kept, so a restore can itself be undone). Returns the new version number."""
        with storage_errors("list versions"):
            known = {int(v["version"]) for v in self._table.list_versions()}
        if version not in known:
            oldest = min(known) if known else None
            raise NotFound(
                f"catalog version {version} does not exist or was cleaned up (stored versions: "
                f"{oldest}..{max(known) if known else None}; VERSION_RETENTION_HOURS keeps older ones)"
            )
        with self._write_lock, storage_errors("restore"):
            self._table.restore(version)
            self._committed()
            new = int(self._table.version)
        log.warning("catalog %s restored to version %d as new version %d", self.uri, version, new)
        return new

    def ping(self) -> bool:
        try:
            self.count()
            return True
        except Unavailable:
            return False

    def _query_rows(self, where: str, columns: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
        with storage_errors("read"):
            q = self._table.search().where(where).select(list(columns))
            q = q.limit(limit)
            rows: list[dict[str, Any]] = q.to_arrow().to_pylist()
            return rows

    def scan(self, columns: Sequence[str] | None = None, *, row_ids: bool = False) -> tuple[int, pa.Table]:
        """All rows (``columns`` of them, plus ``_rowid`` when ``row_ids``) and the dataset
        version they were read at."""
        with storage_errors("read"):
            version = int(self._table.version)
            q = self._table.search().limit(None)
            if columns is not None:
                q = q.select(list(columns))
            if row_ids:
                q = q.with_row_id(True)
            return version, q.to_arrow()

    def scan_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = SCAN_BATCH_ROWS
    ) -> tuple[int, Iterator[pa.RecordBatch]]:
        """All rows as batches of about ``batch_size`` (a reader of the whole catalog need not
        hold it all at once), and the dataset version they are read at."""
        with storage_errors("read"):
            version = int(self._table.version)
            q = self._table.search().limit(None)
            if columns is not None:
                q = q.select(list(columns))
            reader = q.to_batches(batch_size)

        def batches() -> Iterator[pa.RecordBatch]:
            with storage_errors("read"):
                yield from reader

        return version, batches()

    def latest_version(self) -> int:
        """The newest committed version, looked up now (``version`` may lag other writers' commits
        by up to the read-consistency interval)."""
        with storage_errors("version"):
            self._table.checkout_latest()  # type: ignore[no-untyped-call]
            return int(self._table.version)

    def rows_by_row_id(self, row_ids: Sequence[int]) -> pa.Table:
        """Full rows at these ``_rowid``s (from :meth:`scan`), in any order. Reads only those rows;
        rows deleted or moved since the scan are simply absent."""
        with storage_errors("read"):
            return self._table.take_row_ids([int(r) for r in row_ids]).to_arrow()

    def rows_by_id(self, product_ids: Sequence[str]) -> pa.Table:
        """Full rows (product columns, content hash and vectors) of these products."""
        where = f"product_id IN ({', '.join(quote(i) for i in product_ids)})"
        with storage_errors("read"):
            return self._table.search().where(where).limit(None).to_arrow()

    def products_table(self, products: Sequence[Product], hashes: Mapping[str, str]) -> pa.Table:
        """``products`` (and each one's content hash) as rows of :meth:`scan`'s product columns:
        what :meth:`products_from` reads back."""
        schema = pa.schema([self._table.schema.field(c) for c in _PRODUCT_COLUMNS])
        return pa.Table.from_pylist([_stored_row(p, hashes.get(p.product_id, "")) for p in products], schema=schema)

    def products_from(self, table: pa.Table) -> list[Product]:
        """Products from rows returned by :meth:`scan` (with the product columns)."""
        return [_to_product(r) for r in table.select(_PRODUCT_COLUMNS).to_pylist()]

    def get(self, product_id: str) -> Product:
        """The product, or :class:`NotFound`."""
        rows = self._query_rows(f"product_id = {quote(product_id)}", _PRODUCT_COLUMNS, limit=1)
        if not rows:
            raise NotFound(f"product {product_id!r} not found")
        return _to_product(rows[0])

    def get_candidate(self, product_id: str) -> Candidate:
        """The product with its stored vectors."""
        rows = self._query_rows(
            f"product_id = {quote(product_id)}",
            [*_PRODUCT_COLUMNS, "image_vector", "text_vector", "more_image_vectors"],
            limit=1,
        )
        if not rows:
            raise NotFound(f"product {product_id!r} not found")
        return _candidate(rows[0])

    def existing(self, product_ids: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        """``product_id -> (content_hash, created_at)`` for the ids that exist."""
        out: dict[str, tuple[str, datetime]] = {}
        ids = list(dict.fromkeys(product_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            where = f"product_id IN ({', '.join(quote(i) for i in chunk)})"
            for row in self._query_rows(where, ["product_id", "content_hash", "created_at"]):
                out[row["product_id"]] = (row["content_hash"] or "", row["created_at"])
        return out

    def stored_vectors(self, product_ids: Sequence[str]) -> dict[str, StoredVectors]:
        """The stored vectors of these products (those that exist)."""
        out: dict[str, StoredVectors] = {}
        ids = list(dict.fromkeys(product_ids))
        columns = ["product_id", "embed_hash", "image_vector", "text_vector", "more_image_vectors"]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in self._query_rows(f"product_id IN ({', '.join(quote(i) for i in chunk)})", columns):
                text = _vec(row["text_vector"])
                if text is None:
                    continue
                more = tuple(np.asarray(v, dtype=np.float32) for v in row.get("more_image_vectors") or ())
                out[row["product_id"]] = StoredVectors(row.get("embed_hash"), _vec(row["image_vector"]), text, more)
        return out

    def upsert(
        self, records: Sequence[ProductRecord], *, prior: Mapping[str, tuple[str, datetime]] | None = None
    ) -> list[Product]:
        """Insert or replace products by ``product_id`` (last one wins within a batch).

        ``created_at`` of an existing product is kept; ``prior`` (what :meth:`existing` returned
        for these ids, when the caller has just looked: ids missing from it are new) saves
        looking again. Returns the products as stored: the values :meth:`get` reads back.
        """
        latest: dict[str, ProductRecord] = {}
        for rec in records:
            latest[rec.product.product_id] = rec
        if not latest:
            return []
        for rec in latest.values():
            if len(rec.more_image_vectors) != len(rec.product.more_images):
                raise InvalidInput(f"{rec.product.product_id}: one vector per photo is needed")
            vectors = [(rec.image_vector, self.clip_dim), (rec.text_vector, self.text_dim)]
            for vec, dim in [*vectors, *((v, self.clip_dim) for v in rec.more_image_vectors)]:
                if vec is not None and (vec.shape != (dim,) or not np.isfinite(vec).all()):
                    raise InvalidInput(f"{rec.product.product_id}: vector of shape {vec.shape} is not finite {dim}-d")
        if prior is None:
            prior = self.existing(list(latest))
        rows = []
        for pid, rec in latest.items():
            p = rec.product
            row = _stored_row(p, rec.content_hash)
            row["created_at"] = prior[pid][1] if pid in prior else p.created_at
            row["image_vector"] = None if rec.image_vector is None else rec.image_vector.tolist()
            row["text_vector"] = rec.text_vector.tolist()
            row["more_image_vectors"] = [v.tolist() for v in rec.more_image_vectors] or None
            row["embed_hash"] = rec.embed_hash
            rows.append(row)
        data = pa.Table.from_pylist(rows, schema=self._table.schema)
        with self._write_lock:
            commit_with_retry(
                "upsert",
                lambda: (
                    self._table.merge_insert("product_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    # Null is how "no image" is stored; real vectors were validated above.
                    .execute(data, on_bad_vectors="null")
                ),
                budget_s=self.write_retry_seconds,
            )
            self._compactor.committed()
            self._committed()
        return [_to_product(row) for row in rows]

    def on_write(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit made through this object (a background cache
        that should serve this process's writes at once sets a wake-up flag; keep it that cheap:
        it runs under the write lock)."""
        self._write_listeners.append(listener)

    def _committed(self) -> None:
        self.local_writes += 1
        for listener in self._write_listeners:
            try:
                listener()
            except Exception as exc:  # a cache's problem never fails the write that succeeded
                log.warning("catalog write listener failed: %s", exc)

    def delete(self, product_id: str) -> None:
        """Delete a product; :class:`NotFound` if it does not exist."""
        self.get(product_id)
        with self._write_lock:
            commit_with_retry(
                "delete",
                lambda: self._table.delete(f"product_id = {quote(product_id)}"),
                budget_s=self.write_retry_seconds,
            )
            self._committed()

    def vector_search(
        self,
        column: Column,
        vector: Vector,
        k: int,
        filters: Filters = Filters(),
        exclude_id: str | None = None,
    ) -> list[Candidate]:
        """The ``k`` rows nearest to ``vector`` on one vector column, pre-filtered.

        Rows whose vector on that column is absent (products without an image) are never returned.
        Exact (flat) below ``index_min_rows``; IVF-PQ with re-ranking of the full vectors above.
        """
        col = _VECTOR_COLUMNS[column]
        with storage_errors("search"):
            q = (
                self._table.search(vector, vector_column_name=col)
                .distance_type("dot")  # type: ignore[attr-defined]
                .select([*_PRODUCT_COLUMNS, "image_vector", "text_vector", "more_image_vectors", "_distance"])
                .limit(k)
            )
            if self._has_vector_index(col):
                q = q.nprobes(32).refine_factor(10)
            where = filter_sql(filters, exclude_id)
            if where:
                q = q.where(where, prefilter=True)
            rows = q.to_arrow().to_pylist()
        return [_candidate(r) for r in rows]

    def _index_names(self) -> set[str]:
        with storage_errors("list indices"):
            return {",".join(ix.columns) for ix in self._table.list_indices()}

    def _has_vector_index(self, col: str) -> bool:
        return col in self._index_names()

    def ensure_indexes(self) -> list[str]:
        """Create ANN and scalar indexes once the table is big enough; fold new rows into them.

        Returns the names of indexes created by this call.
        """
        n = self.count()
        created: list[str] = []
        if n < self.index_min_rows:
            return created
        have = self._index_names()
        with self._write_lock, storage_errors("index"):
            for col in ("product_id", "category", "price"):
                if col not in have:
                    scalar = Bitmap() if col == "category" else BTree()
                    self._table.create_index(col, config=scalar)
                    created.append(col)
            for col, dim in (("image_vector", self.clip_dim), ("text_vector", self.text_dim)):
                if col not in have:
                    # ~sqrt(n) partitions; 16 dims per PQ sub-vector; full vectors re-rank (refine).
                    ivf = IvfPq(
                        distance_type="dot",
                        num_partitions=max(1, int(math.sqrt(n))),
                        num_sub_vectors=max(1, dim // 16),
                    )
                    self._table.create_index(col, config=ivf)
                    created.append(col)
            if not created:
                self._table.optimize()
        return created

    def newest(self, k: int, filters: Filters = Filters()) -> list[Product]:
        """The ``k`` most recently created products that satisfy ``filters``."""
        where = filter_sql(filters)
        with storage_errors("read"):
            q = self._table.search().select(["product_id", "created_at"]).limit(None)
            if where:
                q = q.where(where)
            ids = q.to_arrow().sort_by([("created_at", "descending"), ("product_id", "ascending")])
        top = ids.column("product_id").to_pylist()[:k]
        if not top:
            return []
        rows = self._query_rows(f"product_id IN ({', '.join(quote(i) for i in top)})", _PRODUCT_COLUMNS)
        by_id = {r["product_id"]: _to_product(r) for r in rows}
        return [by_id[i] for i in top if i in by_id]
