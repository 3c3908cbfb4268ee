"""Shopper interaction events: validation and the append-only ``events`` table.

Events are facts ("u1 purchased P7 at t"), so the table is append-only: nothing updates or deletes
a row, and readers see a prefix-closed history. Every row carries the caller's ``timestamp``
(history order and recency use it) and the server's ``received_at`` (readers use it to pick up
rows written by other processes since they last looked).

Unknown product ids are accepted on purpose: uploads are indexed asynchronously, so a shopper's
click can reach us before the product's upload has been indexed, and migrated history often
arrives before the catalog. Such events are stored and start to count as soon as the product
exists; recommendations only ever return products that are in the catalog.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from core.catalog import Appender, Catalog, Compactor, open_dataset_table, storage_errors
from core.errors import InvalidInput
from core.settings import Settings

TABLE = "events"
EventType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
MAX_ID_LENGTH = 256
FUTURE_TOLERANCE = timedelta(days=1)

# How strongly one event says "this shopper wants this kind of product". Ratings map 1..5 onto
# 0.5..3.5 (a 1-star rating is still a sign of interest in the kind of product, a weak one).
EVENT_STRENGTH: dict[str, float] = {"view": 1.0, "click": 1.5, "add_to_cart": 3.0, "purchase": 5.0}


def event_strength(event_type: str, value: float | None) -> float:
    """Strength of one event: purchase > add_to_cart > click > view; ratings scaled by stars."""
    if event_type == "rating":
        return 0.5 + 0.75 * ((value if value is not None else 3.0) - 1.0)
    return EVENT_STRENGTH[event_type]


@dataclass(frozen=True)
class Event:
    """One validated event."""

    user_id: str
    product_id: str
    event_type: EventType
    timestamp: datetime
    value: float | None = None
    event_id: str = ""

    @property
    def strength(self) -> float:
        return event_strength(self.event_type, self.value)


@dataclass(frozen=True)
class EventError:
    """Why item ``index`` of a batch was rejected."""

    index: int
    detail: str


def _parse_id(raw: Any, name: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidInput(f"{name} is required (a string)")
    value = str(raw).strip()
    if not value:
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{name} is longer than {MAX_ID_LENGTH} characters")
    return value


def parse_timestamp(raw: Any, now: datetime) -> datetime:
    """ISO-8601 (naive means UTC) or epoch seconds; missing means ``now``."""
    if raw is None or raw == "":
        return now
    if isinstance(raw, bool):
        raise InvalidInput("timestamp must be ISO-8601 or epoch seconds")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or raw < 0:
            raise InvalidInput("timestamp must be non-negative epoch seconds")
        try:
            ts = datetime.fromtimestamp(float(raw), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidInput(f"timestamp {raw} is out of range (epoch seconds expected, not milliseconds)") from exc
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            ts = datetime.fromtimestamp(float(text), tz=UTC) if _is_number(text) else datetime.fromisoformat(text)
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidInput(f"timestamp {raw!r} is not ISO-8601 or epoch seconds") from exc
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
    else:
        raise InvalidInput("timestamp must be ISO-8601 or epoch seconds")
    if ts > now + FUTURE_TOLERANCE:
        raise InvalidInput(f"timestamp {ts.isoformat()} is in the future (epoch milliseconds instead of seconds?)")
    return ts.astimezone(UTC)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_event(item: Any, now: datetime | None = None) -> Event:
    """Validate one event object; :class:`InvalidInput` says what is wrong with it."""
    now = now or datetime.now(UTC)
    if not isinstance(item, Mapping):
        raise InvalidInput("each event must be a JSON object")
    user_id = _parse_id(item.get("user_id"), "user_id")
    product_id = _parse_id(item.get("product_id"), "product_id")
    raw_type = item.get("event_type")
    event_type = raw_type.strip().lower() if isinstance(raw_type, str) else raw_type
    if event_type not in EVENT_TYPES:
        raise InvalidInput(f"event_type must be one of {', '.join(EVENT_TYPES)} (got {raw_type!r})")
    value = _parse_value(item.get("value"), event_type)
    event_id = item.get("event_id")
    if event_id is not None:
        event_id = _parse_id(event_id, "event_id")
    return Event(
        user_id=user_id,
        product_id=product_id,
        event_type=event_type,
        timestamp=parse_timestamp(item.get("timestamp"), now),
        value=value,
        event_id=event_id or uuid.uuid4().hex,
    )


def _parse_value(raw: Any, event_type: str) -> float | None:
    if raw is None or raw == "":
        if event_type == "rating":
            raise InvalidInput("a rating needs a value from 1 to 5")
        return None
    if isinstance(raw, bool):
        raise InvalidInput("value must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"value must be a number (got {raw!r})") from exc
    if not math.isfinite(value):
        raise InvalidInput("value must be a finite number")
    if event_type == "rating" and not 1 <= value <= 5:
        raise InvalidInput(f"rating value must be from 1 to 5 (got {raw})")
    return value


def parse_events(items: Iterable[Any], now: datetime | None = None) -> tuple[list[Event], list[EventError]]:
    """Validate a batch: good events and one error per bad item (by position)."""
    now = now or datetime.now(UTC)
    good: list[Event] = []
    bad: list[EventError] = []
    for i, item in enumerate(items):
        try:
            good.append(parse_event(item, now))
        except InvalidInput as exc:
            bad.append(EventError(i, str(exc)))
    return good, bad


def events_schema() -> pa.Schema:
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("value", pa.float64()),
            pa.field("timestamp", ts, nullable=False),
            pa.field("received_at", ts, nullable=False),
        ]
    )


def to_arrow(events: Sequence[Event], received_at: datetime | None = None) -> pa.Table:
    received = received_at or datetime.now(UTC)
    return pa.table(
        {
            "event_id": [e.event_id for e in events],
            "user_id": [e.user_id for e in events],
            "product_id": [e.product_id for e in events],
            "event_type": [e.event_type for e in events],
            "value": [e.value for e in events],
            "timestamp": [e.timestamp for e in events],
            "received_at": [received] * len(events),
        },
        schema=events_schema(),
    )


@dataclass
class _Ticket:
    """One caller's batch waiting for a group commit (``signal``: finished, or your turn to lead)."""

    events: list[Event]
    signal: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    error: BaseException | None = None


class EventLog:
    """The append-only ``events`` table in the catalog's dataset."""

    def __init__(self, catalog: Catalog) -> None:
        with storage_errors("open events"):
            table = catalog.open_or_create(TABLE, events_schema())
            appends = catalog.open_for_appends(TABLE)
        self._setup(table, appends, catalog.refresh_seconds, catalog.retention, catalog.write_retry_seconds)

    @classmethod
    def open(cls, settings: Settings) -> EventLog:
        """The events table alone (no models, no products table needed)."""
        log = cls.__new__(cls)
        table = open_dataset_table(settings, TABLE, events_schema())
        appends = open_dataset_table(settings, TABLE, events_schema(), consistency=False)
        log._setup(
            table,
            appends,
            settings.catalog_refresh_seconds,
            timedelta(hours=settings.version_retention_hours),
            settings.write_retry_seconds,
        )
        return log

    def _setup(self, table: Any, appends: Any, refresh_s: float, retention: timedelta, retry_s: float) -> None:
        self._table = table  # reads: checks for other processes' events every refresh_s
        self._appender = Appender(appends, refresh_seconds=refresh_s, retry_seconds=retry_s)
        self._read_commits = 0  # the appender's commits the read handle has caught up with
        self._compact = Compactor(appends, background=True, retention=retention)
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._committing = False

    def append(self, events: Sequence[Event]) -> int:
        """Store ``events`` durably; returns how many were written.

        Group commit: concurrent callers in one process share commits. A caller that finds no
        commit running leads one round: it commits everything queued at that moment (its own
        batch and those that arrived meanwhile) in one write, wakes their callers, and hands the
        lead to the next queued caller, if any. Appends from one process never race each other
        for a version, a burst of small batches costs a few commits, and no caller waits for
        more than the rounds ahead of its own.
        """
        if not events:
            return 0
        ticket = _Ticket(list(events))
        with self._queue_lock:
            self._queue.append(ticket)
            if not self._committing:
                self._committing = True
                ticket.lead = True
        while not ticket.finished:
            if ticket.lead:
                self._commit_round()
            ticket.signal.wait()
        if ticket.error is not None:
            raise ticket.error
        return len(events)

    def _commit_round(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        error: BaseException | None = None
        try:
            self._appender.append("append events", to_arrow([e for t in batch for e in t.events]), key="event_id")
            self._compact.committed()
        except BaseException as exc:  # handed to every caller of this round
            error = exc
        for t in batch:
            t.error, t.finished = error, True
            t.signal.set()
        with self._queue_lock:
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].signal.set()
            else:
                self._committing = False

    def _reader(self) -> Any:
        """The read handle, brought up to date first if this process appended since its last
        read (reads see this process's own events at once, other processes' within refresh_s)."""
        commits = self._appender.commits
        if commits != self._read_commits:
            self._table.checkout_latest()
            self._read_commits = commits
        return self._table

    def count(self) -> int:
        with storage_errors("count events"):
            return int(self._reader().count_rows())

    def version(self) -> int:
        with storage_errors("read events"):
            return int(self._reader().version)

    def read_batches(self, received_after: datetime | None = None, batch_size: int = 262_144) -> Iterator[pa.Table]:
        """:meth:`read` in batches of about ``batch_size`` rows, in the table's order: a reader of
        millions of events need not hold them all as Arrow strings at once."""
        with storage_errors("read events"):
            q = self._reader().search().limit(None).select(events_schema().names)
            if received_after is not None:
                q = q.where(f"received_at > timestamp '{received_after.astimezone(UTC).isoformat(sep=' ')}'")
            for batch in q.to_batches(batch_size):
                yield pa.Table.from_batches([batch]).select(events_schema().names)

    def read(self, received_after: datetime | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """All events, or those received after ``received_after`` (for incremental readers);
        only ``columns`` when given (training needs neither ids nor arrival times)."""
        with storage_errors("read events"):
            q = self._reader().search().limit(None).select(list(columns or events_schema().names))
            if received_after is not None:
                q = q.where(f"received_at > timestamp '{received_after.astimezone(UTC).isoformat(sep=' ')}'")
            return q.to_arrow().select(list(columns or events_schema().names))


def iter_event_file(lines: Iterable[str], fmt: Literal["jsonl", "csv"]) -> Iterator[tuple[int, Any]]:
    """(line number, raw item) pairs from a JSONL or CSV file (CSV header: user_id, product_id,
    event_type, value, timestamp). A line that is not JSON yields an :class:`InvalidInput`."""
    import csv
    import json

    if fmt == "jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, InvalidInput(f"invalid JSON: {exc.msg}")
        return
    reader = csv.DictReader(lines)
    for n, row in enumerate(reader, 2):
        yield n, {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}


@dataclass
class ImportReport:
    """Outcome of an event-file import: counts and the first bad lines with reasons."""

    accepted: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, limit: int = 20) -> str:
        lines = [f"imported {self.accepted} events, rejected {self.rejected}, in {self.seconds:.1f} s"]
        lines += [f"  line {n}: {reason}" for n, reason in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


def import_event_file(
    log: EventLog,
    path: Path,
    *,
    batch_size: int = 20_000,
    progress: bool = True,
    max_errors: int = 1000,
) -> ImportReport:
    """Bulk-load a JSONL or CSV event file (by suffix): good lines are stored in batches, each
    bad line is reported with its number and reason."""
    import time

    from tqdm import tqdm

    fmt: Literal["jsonl", "csv"] = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    report = ImportReport()
    started = time.perf_counter()
    now = datetime.now(UTC)
    batch: list[Event] = []
    with (
        path.open(encoding="utf-8") as fh,
        tqdm(desc=f"import {path.name}", unit=" events", disable=not progress) as bar,
    ):
        for n, item in iter_event_file(fh, fmt):
            try:
                if isinstance(item, InvalidInput):
                    raise item
                batch.append(parse_event(item, now))
            except InvalidInput as exc:
                report.rejected += 1
                if len(report.errors) < max_errors:
                    report.errors.append((n, str(exc)))
            if len(batch) >= batch_size:
                report.accepted += log.append(batch)
                bar.update(len(batch))
                batch = []
        report.accepted += log.append(batch)
        bar.update(len(batch))
    report.seconds = time.perf_counter() - started
    return report
