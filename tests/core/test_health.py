"""The health rules (core/health.py) as a decision table over what the catalog and bucket say."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import Unavailable
from core.health import check_health


class Part:
    """A catalog or bucket that answers ping (and count/version) as told."""

    def __init__(self, ok: bool, *, count_fails: bool = False) -> None:
        self.ok = ok
        self.count_fails = count_fails
        self.version = 7

    def ping(self) -> bool:
        return self.ok

    def count(self) -> int:
        if self.count_fails:
            raise Unavailable("lost between ping and count")
        return 42


@pytest.mark.parametrize(
    ("db", "s3", "warnings", "status"),
    [
        (Part(True), Part(True), [], "healthy"),
        (Part(True), Part(True), ["CLIP runs with random weights"], "degraded"),
        (Part(True), Part(False), [], "degraded"),
        (Part(False), Part(True), [], "unhealthy"),
        (Part(False), Part(False), ["x"], "unhealthy"),
        (Part(True, count_fails=True), Part(True), [], "unhealthy"),
    ],
)
def test_status_rules(db: Any, s3: Any, warnings: list[str], status: str) -> None:
    h = check_health(db, s3, warnings)
    assert h.status == status
    assert h.database_connected == (status != "unhealthy")
    assert h.storage_connected == s3.ok
    if h.database_connected:
        assert (h.product_count, h.dataset_version) == (42, 7)
    else:
        assert (h.product_count, h.dataset_version) == (None, None)
    assert h.warnings[: len(warnings)] == warnings
    assert any("object storage unreachable" in w for w in h.warnings) == (not s3.ok)
