"""Offline evaluation: our hybrid next to the baselines a shop would try first.

The default split is the way a shop uses a recommender: one time cutoff ``T`` (the 80% quantile
of event times); everything before ``T`` trains, and each user with history before ``T`` is
judged on the products they liked after it, scored as of ``T``. Every method gets the same
treatment: its hyper-parameters are tuned on a split of the same kind *inside* the training part
(a cutoff inside the training period), then it is refit on the whole training part and scored on
the held-out part, which no method, tuner or signal ever sees. Each method is a
:class:`~core.recommend.baselines.Ranker`, driven the same way.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from core.recommend.baselines import (
    HYBRID,
    Ease,
    EaseRecentBlend,
    Hybrid,
    ItemKNN,
    Popularity,
    Ranker,
    RecentPopularity,
)
from core.recommend.data import F32, F64, EventArrays
from core.recommend.metrics import RankingMetrics, Split, SplitScheme, evaluate_scores, make_split, sample_users
from core.recommend.tuning import MAX_ITEMS, SIGNALS

EASE_LAMBDAS = [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
KNN_KS = [10, 20, 50, 100, 200, 400]
RECENT_DAYS = [1.0, 3.0, 7.0, 14.0, 30.0, 60.0]
BLEND_WEIGHTS = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
BASELINES = (Popularity.name, RecentPopularity.name, ItemKNN.name, Ease.name, EaseRecentBlend.name)


@dataclass(frozen=True)
class Row:
    name: str
    metrics: RankingMetrics
    seconds: float
    params: str
    peak_rss_mb: float = 0.0  # the process's peak resident memory after this row (hybrid rows)


def _inner(split: Split, min_rating: float, positive_types: Sequence[str]) -> Split:
    inner = make_split(split.train_ev, 0.2, min_rating, positive_types, split.scheme)
    return replace(inner, users=sample_users(inner.users, 1500))


def _best(inner: Split, values: Sequence[float], fitted: Callable[[float], Ranker]) -> float:
    """The value whose ranker (fitted on ``inner``) has the best NDCG@10 on ``inner``."""
    best, best_v = -1.0, values[0]
    for v in values:
        m = evaluate_scores(inner, fitted(v).score)
        if m.ndcg > best:
            best, best_v = m.ndcg, v
    return best_v


def _row(ranker: Ranker, split: Split, k: int, t0: float, *, peak_rss: bool = False) -> Row:
    """``ranker`` fitted on ``split``'s training part and scored on its held-out part, timed from ``t0``."""
    m = evaluate_scores(split, ranker.fit(split).score, k)
    return Row(ranker.name, m, time.perf_counter() - t0, ranker.describe(), _peak_rss_mb() if peak_rss else 0.0)


def hybrid_row(
    split: Split,
    vectors: F32 | None,
    *,
    min_rating: float,
    positive_types: Sequence[str],
    k: int = 10,
    off: Sequence[str] = (),
    name: str = HYBRID,
    max_items: int = MAX_ITEMS,
) -> Row:
    """Train the hybrid on ``split``'s training part (tuned inside it; the collaborative model
    over at most ``max_items`` products) and score the test part."""
    t0 = time.perf_counter()
    ranker = Hybrid(
        vectors, min_rating=min_rating, positive_types=positive_types, off=off, max_items=max_items, name=name
    )
    return _row(ranker, split, k, t0, peak_rss=True)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def evaluate(
    ev: EventArrays,
    vectors: F32 | None = None,
    *,
    test_fraction: float = 0.2,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    k: int = 10,
    scheme: SplitScheme = "global",
    cutoff: float | None = None,
    ablation: bool = False,
    progress: Callable[[Row, int], None] | None = None,
    max_items: int = MAX_ITEMS,
) -> list[Row]:
    """The comparison table on one split of ``ev`` (``vectors`` aligned with ``ev.items``;
    ``cutoff``: the global split's time, default the ``1 - test_fraction`` quantile). With
    ``ablation``, one more hybrid row per :data:`SIGNALS` entry, retrained without it.
    ``progress`` is called with each row as it is done and the number of rows to come."""
    split = make_split(ev, test_fraction, min_rating, positive_types, scheme, cutoff)
    inner = _inner(split, min_rating, positive_types)
    rows: list[Row] = []
    total = len(BASELINES) + 1 + (len(SIGNALS) if ablation else 0)

    def add(row: Row) -> None:
        rows.append(row)
        if progress is not None:
            progress(row, total - len(rows))

    def timed(ranker: Ranker, t0: float | None = None) -> None:
        add(_row(ranker, split, k, time.perf_counter() if t0 is None else t0))

    timed(Popularity())
    # Each baseline's hyper-parameters are tuned inside the training part, like the hybrid's.
    days = _best(inner, RECENT_DAYS, lambda v: RecentPopularity(v).fit(inner))
    timed(RecentPopularity(days))
    t0 = time.perf_counter()  # item-kNN's time includes its search over k
    kk = int(_best(inner, KNN_KS, lambda v: ItemKNN(int(v)).fit(inner)))
    timed(ItemKNN(kk), t0)
    lam = _best(inner, EASE_LAMBDAS, lambda v: Ease(v).fit(inner))
    timed(Ease(lam))
    blend = EaseRecentBlend(Ease(lam), RecentPopularity(days)).fit(inner)
    w = _best(inner, BLEND_WEIGHTS, blend.weighted)
    timed(EaseRecentBlend(Ease(lam), RecentPopularity(days), w))

    add(hybrid_row(split, vectors, min_rating=min_rating, positive_types=positive_types, k=k, max_items=max_items))
    if ablation:
        for signal in SIGNALS:
            add(
                hybrid_row(
                    split,
                    vectors,
                    min_rating=min_rating,
                    positive_types=positive_types,
                    k=k,
                    off=(signal,),
                    name=f"  without {signal}",
                    max_items=max_items,
                )
            )
    return rows


def format_table(rows: Sequence[Row], split_desc: str) -> str:
    lines = [
        split_desc,
        f"{'method':<22} {'NDCG@10':>8} {'recall@10':>9} {'(capped)':>8} {'coverage':>8} {'users':>5} {'sec':>6}"
        "  params",
    ]
    for r in rows:
        m = r.metrics
        cells = f"{m.ndcg:>8.4f} {m.recall:>9.4f} {m.recall_capped:>8.4f} {m.coverage:>8.3f} {m.users:>5d}"
        cells += f" {r.seconds:>6.1f}"
        lines.append(f"{r.name:<22} {cells}  {r.params}")
    lines.append("recall@10 = hits / held-out positives; (capped) = hits / min(10, held-out positives)")
    base = [r for r in rows if r.name in BASELINES]
    ours = next((r for r in rows if r.name == HYBRID), None)
    if base and ours is not None:
        best_n = max(base, key=lambda r: r.metrics.ndcg)
        best_r = max(base, key=lambda r: r.metrics.recall)
        lines.append(
            f"hybrid vs the best baseline: NDCG@10 x{ours.metrics.ndcg / max(best_n.metrics.ndcg, 1e-12):.3f} "
            f"({best_n.name}), recall@10 x{ours.metrics.recall / max(best_r.metrics.recall, 1e-12):.3f} ({best_r.name})"
        )
    return "\n".join(lines)


__all__ = ["BASELINES", "F64", "HYBRID", "Row", "evaluate", "format_table", "hybrid_row"]
