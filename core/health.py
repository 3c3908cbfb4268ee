"""The health rules: what makes a query process healthy, degraded or unhealthy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.catalog import Catalog
from core.errors import Unavailable
from core.storage import ObjectStore

Status = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class Health:
    status: Status
    database_connected: bool
    storage_connected: bool
    product_count: int | None
    dataset_version: int | None
    warnings: list[str]


def check_health(catalog: Catalog, store: ObjectStore, warnings: Sequence[str] = ()) -> Health:
    """Unhealthy when the catalog cannot be read (nothing can be answered); degraded when the
    bucket is unreachable (answers come from cached data) or anything is ``warnings`` (a model
    in demo mode, a failing background job); else healthy."""
    db_ok = catalog.ping()
    s3_ok = store.ping()
    count = version = None
    if db_ok:
        try:
            count, version = catalog.count(), catalog.version
        except Unavailable:
            db_ok = False
    notes = list(warnings)
    if not s3_ok:
        notes.append("object storage unreachable: answering from cached data where possible")
    status: Status = "unhealthy" if not db_ok else "degraded" if notes else "healthy"
    return Health(status, db_ok, s3_ok, count, version, notes)
