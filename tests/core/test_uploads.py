"""Which notified keys a deployment indexes (core/uploads.triage): the one place that decides."""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from core.uploads import triage


def records(*pairs: tuple[str, str]) -> dict[str, object]:
    return {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": b}, "object": {"key": k}}} for b, k in pairs
        ]
    }


def test_keeps_metadata_under_uploads_of_this_bucket() -> None:
    found = triage(
        records(
            ("shop", "uploads/a.jsonl"),
            ("shop", "uploads/b+c.CSV"),  # URL-encoded space, any case of the suffix
            ("shop", "uploads/photo.jpg"),
            ("shop", "images/x.json"),
            ("other", "uploads/d.json"),
        ),
        "shop",
    )
    assert found.keys == ["uploads/a.jsonl", "uploads/b c.CSV"]
    assert [i.key for i in found.ignored] == ["uploads/photo.jpg", "images/x.json", "uploads/d.json"]
    assert [i.kind for i in found.ignored] == ["not_upload", "not_upload", "other_bucket"]
    assert "not served here" in found.ignored[2].reason
    assert "under uploads/" in found.ignored[0].reason


def test_event_without_bucket_is_taken_as_ours() -> None:
    found = triage({"detail": {"object": {"key": "uploads/e.json"}}, "detail-type": "Object Created"}, "shop")
    assert found.keys == ["uploads/e.json"]


def test_unrecognised_payload_is_refused() -> None:
    with pytest.raises(InvalidInput):
        triage({"hello": "world"}, "shop")
