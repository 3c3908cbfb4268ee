"""Event validation, the append-only events table on the S3 server, and bulk import."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.events import EventLog, import_event_file, parse_event, parse_events
from core.settings import Settings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_valid_events_and_timestamps() -> None:
    e = parse_event({"user_id": "u1", "product_id": "p1", "event_type": "view"}, NOW)
    assert (e.user_id, e.product_id, e.event_type, e.value, e.timestamp) == ("u1", "p1", "view", None, NOW)
    assert e.event_id  # generated idempotency key
    r = parse_event({"user_id": 7, "product_id": 9, "event_type": "Rating", "value": "4", "timestamp": 881250949})
    assert (r.user_id, r.product_id, r.event_type, r.value) == ("7", "9", "rating", 4.0)
    assert r.timestamp == datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC)
    iso = parse_event({"user_id": "u", "product_id": "p", "event_type": "purchase", "timestamp": "2025-05-01T10:00:00"})
    assert iso.timestamp == datetime(2025, 5, 1, 10, tzinfo=UTC)  # naive ISO means UTC
    off = parse_event({"user_id": "u", "product_id": "p", "event_type": "click", "timestamp": "2025-05-01T12:00+02:00"})
    assert off.timestamp == datetime(2025, 5, 1, 10, tzinfo=UTC)
    assert parse_event({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": "1700000000"}).timestamp


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"product_id": "p", "event_type": "view"}, "user_id is required"),
        ({"user_id": " ", "product_id": "p", "event_type": "view"}, "user_id must not be empty"),
        ({"user_id": "u", "event_type": "view"}, "product_id is required"),
        ({"user_id": "u", "product_id": "p", "event_type": "like"}, "event_type must be one of"),
        ({"user_id": "u", "product_id": "p", "event_type": "rating"}, "a rating needs a value"),
        ({"user_id": "u", "product_id": "p", "event_type": "rating", "value": 6}, "from 1 to 5"),
        ({"user_id": "u", "product_id": "p", "event_type": "rating", "value": 0}, "from 1 to 5"),
        ({"user_id": "u", "product_id": "p", "event_type": "rating", "value": "x"}, "must be a number"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "value": float("nan")}, "finite"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": "yesterday"}, "not ISO-8601"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": -5}, "non-negative"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": 1.7e12}, "epoch seconds expected"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": 4e9}, "in the future"),
        ({"user_id": "u", "product_id": "p", "event_type": "view", "timestamp": [1]}, "ISO-8601 or epoch"),
        ({"user_id": "u" * 300, "product_id": "p", "event_type": "view"}, "longer than"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_bad_events_say_why(item: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_event(item, NOW)


def test_batch_keeps_good_items_and_reports_bad_ones_by_position() -> None:
    good, bad = parse_events(
        [
            {"user_id": "u", "product_id": "a", "event_type": "view"},
            {"user_id": "u", "product_id": "b", "event_type": "teleport"},
            {"user_id": "u", "product_id": "c", "event_type": "purchase"},
            {"user_id": "u", "product_id": "d", "event_type": "rating", "value": 9},
        ],
        NOW,
    )
    assert [e.product_id for e in good] == ["a", "c"]
    assert [e.index for e in bad] == [1, 3] and "event_type" in bad[0].detail and "1 to 5" in bad[1].detail


@pytest.mark.integration
def test_event_log_appends_and_reads_incrementally(s3_settings: Settings) -> None:
    log = EventLog.open(s3_settings)
    first, _ = parse_events([{"user_id": "u", "product_id": f"p{i}", "event_type": "view"} for i in range(3)])
    assert log.append(first) == 3 and log.append([]) == 0
    table = log.read()
    assert table.num_rows == 3 and log.count() == 3
    mark = max(table.column("received_at").to_pylist())
    second, _ = parse_events([{"user_id": "v", "product_id": "q", "event_type": "purchase", "timestamp": 1e9}])
    log.append(second)
    newer = log.read(received_after=mark)
    assert newer.column("user_id").to_pylist() == ["v"]
    assert newer.column("timestamp").to_pylist()[0] == datetime.fromtimestamp(1e9, UTC)
    # Another handle on the same dataset (another process) sees everything.
    assert EventLog.open(s3_settings).count() == 4


@pytest.mark.integration
def test_import_event_file_reports_bad_lines(s3_settings: Settings, tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(
        '{"user_id": "u1", "product_id": "p1", "event_type": "rating", "value": 5, "timestamp": 881250949}\n'
        "\n"
        "{not json\n"
        '{"user_id": "u1", "product_id": "p2", "event_type": "rating", "value": 7}\n'
        '{"user_id": "u2", "product_id": "p1", "event_type": "view"}\n'
    )
    log = EventLog.open(s3_settings)
    report = import_event_file(log, jsonl, batch_size=1, progress=False)
    assert (report.accepted, report.rejected) == (2, 2)
    assert [n for n, _ in report.errors] == [3, 4]
    assert "invalid JSON" in report.errors[0][1] and "1 to 5" in report.errors[1][1]
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,product_id,event_type,value,timestamp\nu3,p9,purchase,,2024-01-01T00:00:00Z\nu3,,view,,\n")
    report = import_event_file(log, csv, progress=False)
    assert (report.accepted, report.rejected) == (1, 1) and report.errors[0][0] == 3
    assert log.count() == 3
    assert "imported 1 events, rejected 1" in report.summary()
