"""The batch training job: all events + the catalog -> a tuned hybrid model in the bucket."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from core.catalog import Catalog
from core.errors import InvalidInput
from core.events import EventLog
from core.models import Weights
from core.recommend.artifact import ModelStore
from core.recommend.data import EventArrays
from core.recommend.models import HybridModel, RerankMode, train_hybrid
from core.recommend.online import CatalogSnapshot


@dataclass(frozen=True)
class TrainReport:
    key: str
    model: HybridModel
    events: int
    users: int
    items: int
    seconds: float

    def summary(self) -> str:
        p = self.model.params
        info = self.model.info
        val = info.get("validation_ndcg")
        return (
            f"trained on {self.events} events from {self.users} users over {self.items} products in "
            f"{self.seconds:.1f} s -> {self.key}\n"
            f"  parameters: {p.describe()}"
            + (f"\n  internal validation NDCG@10: {val:.4f} ({info.get('trials')} trials)" if val is not None else "")
            + self._reranker_line()
            + self._factors_line()
        )

    def _factors_line(self) -> str:
        f = self.model.f
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


def train(
    catalog: Catalog,
    events: EventLog,
    models: ModelStore,
    weights: Weights,
    *,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    rerank: RerankMode = "auto",
) -> TrainReport:
    """Train on every stored event whose product is in the catalog; save and return the model."""
    t0 = time.perf_counter()
    snap = CatalogSnapshot.load(catalog, weights)
    table = events.read()
    if len(snap) == 0:
        raise InvalidInput("the catalog is empty: index products before training")
    ev = EventArrays.from_arrow(table, [p.product_id for p in snap.products])
    if len(ev) == 0:
        raise InvalidInput("no events on catalog products yet: POST /events or import an event file first")
    model = train_hybrid(ev, snap.vectors, min_rating=min_rating, positive_types=positive_types, rerank=rerank)
    model.info.update(catalog_version=snap.version, events_total=table.num_rows)
    key = models.save(model)
    return TrainReport(key, model, len(ev), len(set(ev.user.tolist())), len(snap), time.perf_counter() - t0)
