"""Writes retry commit conflicts and storage errors with backoff, within a budget, and a retried
event append never stores a batch twice (data on the S3 server)."""

from typing import Any

import pytest

from core.catalog import commit_with_retry
from core.embedding import Embedder
from core.errors import Unavailable
from core.events import EventLog, parse_events
from core.settings import Settings
from functions.services import Services

pytestmark = pytest.mark.integration


def test_conflicts_are_retried_until_the_commit_lands() -> None:
    calls: list[str] = []

    def first() -> str:
        calls.append("first")
        raise RuntimeError("lance error: Too many concurrent writers. Attempted 6 times")

    def again() -> str:
        calls.append("again")
        if len(calls) < 3:
            raise OSError("connection reset by peer")
        return "done"

    assert commit_with_retry("test", first, again, budget_s=10) == "done"
    assert calls == ["first", "again", "again"]


def test_retries_stop_at_the_budget_with_unavailable() -> None:
    calls = 0

    def always() -> None:
        nonlocal calls
        calls += 1
        raise OSError("endpoint unreachable")

    with pytest.raises(Unavailable, match="endpoint unreachable"):
        commit_with_retry("test", always, budget_s=0.5)
    assert 2 <= calls <= 6


def test_event_batch_that_landed_but_failed_is_not_stored_twice(s3_settings: Settings, fake: Embedder) -> None:
    services = Services.from_settings(s3_settings, embedder=fake)
    log = EventLog(services.catalog)
    good, _ = parse_events([{"user_id": "u", "product_id": f"P{i}", "event_type": "view"} for i in range(5)])
    table: Any = log._appender.table
    real_add = table.add
    lost = {"n": 0}

    def add_then_lose_the_answer(data: Any) -> None:
        real_add(data)  # the commit lands ...
        lost["n"] += 1
        raise OSError("connection reset while reading the commit response")  # ... its answer does not

    table.add = add_then_lose_the_answer
    try:
        assert log.append(good) == 5
    finally:
        table.add = real_add
    assert lost["n"] == 1
    ids = log.read().column("event_id").to_pylist()
    assert sorted(ids) == sorted(e.event_id for e in good)  # five rows, not ten


def test_concurrent_appends_share_commits_and_lose_nothing(s3_settings: Settings, fake: Embedder) -> None:
    import threading

    services = Services.from_settings(s3_settings, embedder=fake)
    log = EventLog(services.catalog)
    before = log.version()
    batches = [
        parse_events([{"user_id": f"u{t}", "product_id": f"P{i}", "event_type": "click"} for i in range(10)])[0]
        for t in range(16)
    ]
    errors: list[BaseException] = []

    def send(batch: Any) -> None:
        try:
            assert log.append(batch) == 10
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    ids = log.read().column("event_id").to_pylist()
    assert len(ids) == 160 == len(set(ids))
    commits = log.version() - before
    print(f"16 concurrent appends -> {commits} commits")
    assert 1 <= commits < 16  # grouped: fewer commits than callers


def test_two_writers_interleaved_lose_nothing_and_each_reads_its_own_writes(s3_settings: Settings) -> None:
    """Each log appends through a handle that is not reloaded before every commit: commits made on
    an older version land after the other writer's, and a log's reads see its own appends at once."""
    first, second = EventLog.open(s3_settings), EventLog.open(s3_settings)
    sent: list[str] = []
    for round_ in range(6):
        for n, log in enumerate((first, second)):
            batch, _ = parse_events([{"user_id": f"u{n}", "product_id": f"P{round_}", "event_type": "view"}] * 3)
            log.append(batch)
            sent += [e.event_id for e in batch]
            assert set(e.event_id for e in batch) <= set(log.read().column("event_id").to_pylist())
    ids = EventLog.open(s3_settings).read().column("event_id").to_pylist()
    assert sorted(ids) == sorted(sent)  # 36 events, none lost, none twice
