"""The batch training job: all events + the catalog -> a tuned hybrid model in the bucket."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from core.catalog import Catalog
from core.errors import ConfigError, InvalidInput
from core.events import EventLog
from core.recommend.artifact import ModelStore
from core.recommend.data import F32, EventArrays
from core.recommend.hybrid import HybridModel
from core.recommend.online import product_vectors
from core.recommend.signals import active_items, ease_bytes, restrict_items
from core.recommend.tuning import MAX_ITEMS, RerankMode, train_hybrid
from core.types import Weights


@dataclass(frozen=True)
class TrainReport:
    key: str
    model: HybridModel
    events: int
    users: int
    items: int
    seconds: float
    startup_file: str | None = None
    """The start-up file written after training (``functions.jobs.write_startup_file``), or why not."""

    def summary(self) -> str:
        p = self.model.params
        info = self.model.info
        val = info.get("validation_ndcg")
        covered = len(self.model.items)
        scope = f" (the {covered} most active in the collaborative model)" if covered < self.items else ""
        return (
            f"trained on {self.events} events from {self.users} users over {self.items} products{scope} in "
            f"{self.seconds:.1f} s -> {self.key}\n"
            f"  parameters: {p.describe()}"
            + (f"\n  internal validation NDCG@10: {val:.4f} ({info.get('trials')} trials)" if val is not None else "")
            + self._reranker_line()
            + self._factors_line()
            + (f"\n  start-up file for query processes: {self.startup_file}" if self.startup_file else "")
        )

    def _factors_line(self) -> str:
        f = self.model.choice
        if f is None:
            return ""
        secs = self.model.info.get("factor_seconds", 0.0)
        return f"\n  choice model: {f.p.shape[1]} factors for {len(f.users)} users, fitted in {secs:.1f} s"

    def _reranker_line(self) -> str:
        check = self.model.info.get("rerank_check")
        mode = self.model.info.get("rerank_mode", "auto")
        if mode == "off":
            return "\n  reranker: off (RECS_RERANK=off)"
        if check is None:
            return ""
        if self.model.reranker is None:
            verdict = "dropped: no better than the blend"
        elif check["reranked"] <= check["blend"]:
            verdict = "kept anyway (RECS_RERANK=always)"
        else:
            verdict = "kept"
        return (
            f"\n  reranker: NDCG@10 {check['reranked']:.4f} vs blend {check['blend']:.4f} "
            f"(two-fold over {int(check['users'])} validation users), {verdict}"
        )


TRAINING_COLUMNS = ("user_id", "product_id", "event_type", "value", "timestamp")
EVENT_BYTES = 200
"""Training memory per stored event (the columns read, their codes, the aggregated pairs, the
sparse matrices and tuning buffers built from them). With :data:`BASE_BYTES`, fitted to
``bench.scale``'s peaks (4.2 GB at 100k products x 1M events, 5.3 GB at 1M x 10M; the estimate
is 4.3 and 6.1)."""
BASE_BYTES = 3 << 29
"""Training memory before any data (1.5 GB): the interpreter, numpy/scipy/torch and their buffers."""
GB = 1 << 30


def memory_needed(events: int, items: int, dim: int) -> dict[str, int]:
    """Bytes training needs, by part: the events, EASE over ``items`` products, their vectors."""
    return {
        "base": BASE_BYTES,
        "events": events * EVENT_BYTES,
        "collaborative model": ease_bytes(items),
        "vectors": items * dim * 4,
    }


def vectors_of(catalog: Catalog, weights: Weights, product_ids: Sequence[str], row_ids: Sequence[int]) -> F32:
    """Fused vectors of ``product_ids`` (row ``k`` for ``product_ids[k]``), read from their catalog
    rows ``row_ids`` alone; a product whose row is gone (removed since the scan) gets zeros."""
    rows = catalog.rows_by_row_id(row_ids)
    at = {str(p): j for j, p in enumerate(rows.column("product_id").to_pylist())}  # rows come in any order
    fused = product_vectors(rows, catalog, weights)
    out: F32 = np.zeros((len(product_ids), fused.shape[1]), dtype=np.float32)
    found = [(k, at[pid]) for k, pid in enumerate(product_ids) if pid in at]
    if found:
        dst, src = (np.array(x, dtype=np.int64) for x in zip(*found, strict=True))
        out[dst] = fused[src]
    return out


def train(
    catalog: Catalog,
    events: EventLog,
    models: ModelStore,
    weights: Weights,
    *,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    rerank: RerankMode = "auto",
    max_items: int = MAX_ITEMS,
    memory_gb: float | None = None,
) -> TrainReport:
    """Train on every stored event whose product is in the catalog; save and return the model.

    The collaborative model covers the ``max_items`` products most active lately (see
    :func:`~core.recommend.signals.active_items`); only their vectors are read. With ``memory_gb``,
    a data set that would need more memory than that is refused before any fitting starts, with
    a :class:`ConfigError` that says what to change."""
    t0 = time.perf_counter()
    version, ids_table = catalog.scan(["product_id"], row_ids=True)
    if ids_table.num_rows == 0:
        raise InvalidInput("the catalog is empty: index products before training")
    ids = [str(i) for i in ids_table.column("product_id").to_pylist()]
    table = events.read(columns=TRAINING_COLUMNS)
    events_total = table.num_rows
    ev = EventArrays.from_arrow(table, ids)
    del table
    if len(ev) == 0:
        raise InvalidInput("no events on catalog products yet: POST /events or import an event file first")
    keep = active_items(ev, max_items)
    dim = (catalog.clip_dim if weights.image > 0 else 0) + catalog.text_dim
    need = memory_needed(events_total, len(keep), dim)
    if memory_gb is not None and sum(need.values()) > memory_gb * GB:
        parts = ", ".join(f"{name} {b / GB:.1f} GB" for name, b in need.items())
        raise ConfigError(
            f"training would need about {sum(need.values()) / GB:.1f} GB ({parts}), more than "
            f"RECS_TRAIN_MEMORY_GB={memory_gb:g}: raise it, or lower RECS_MAX_ITEMS={max_items} "
            f"(the collaborative model grows with its square)"
        )
    ev = restrict_items(ev, keep)
    vectors = vectors_of(catalog, weights, ev.items, ids_table.column("_rowid").take(pa.array(keep)).to_pylist())
    model = train_hybrid(
        ev, vectors, min_rating=min_rating, positive_types=positive_types, rerank=rerank, max_items=max_items
    )
    model.info.update(catalog_version=version, events_total=events_total, catalog_items=len(ids))
    key = models.save(model)
    return TrainReport(key, model, len(ev), len(set(ev.user.tolist())), len(ids), time.perf_counter() - t0)
