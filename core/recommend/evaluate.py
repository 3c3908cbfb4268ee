"""Offline evaluation: our hybrid next to the baselines a shop would try first.

The default split is the way a shop uses a recommender: one time cutoff ``T`` (the 80% quantile
of event times); everything before ``T`` trains, and each user with history before ``T`` is
judged on the products they liked after it, scored as of ``T``. Every method gets the same
treatment: its hyper-parameters are tuned on a split of the same kind *inside* the training part
(a cutoff inside the training period), then it is refit on the whole training part and scored on
the held-out part, which no method, tuner or signal ever sees.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from core.recommend.data import F32, F64, I32, EventArrays
from core.recommend.models import (
    MAX_ITEMS,
    SIGNALS,
    Metrics,
    Split,
    SplitScheme,
    TimePopularity,
    binary_matrix,
    evaluate_scores,
    fit_ease,
    fit_itemknn,
    history_matrix,
    make_split,
    on_items,
    sample_users,
    train_hybrid,
)

EASE_LAMBDAS = [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
KNN_KS = [10, 20, 50, 100, 200, 400]
RECENT_DAYS = [1.0, 3.0, 7.0, 14.0, 30.0, 60.0]
BLEND_WEIGHTS = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
HYBRID = "shelfsearch hybrid"


@dataclass(frozen=True)
class Row:
    name: str
    metrics: Metrics
    seconds: float
    params: str
    peak_rss_mb: float = 0.0  # the process's peak resident memory after this row (hybrid rows)


def _inner(split: Split, min_rating: float, positive_types: Sequence[str]) -> Split:
    inner = make_split(split.train_ev, 0.2, min_rating, positive_types, split.scheme)
    return replace(inner, users=sample_users(inner.users, 1500))


def _best(inner: Split, values: Sequence[float], score_for: Callable[[float], Callable[[I32], F32]]) -> float:
    """The value whose scoring function has the best NDCG@10 on ``inner``."""
    best, best_v = -1.0, values[0]
    for v in values:
        m = evaluate_scores(inner, score_for(v))
        if m.ndcg > best:
            best, best_v = m.ndcg, v
    return best_v


def _dense(m: object) -> F32:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32)  # type: ignore[union-attr]


def _norm(m: F32) -> F32:
    mx = m.max(axis=1, keepdims=True)
    mx[mx <= 0] = 1.0
    out: F32 = m / mx
    return out


def _recent(split: Split) -> Callable[[float], Callable[[I32], F32]]:
    """Scoring functions "popular in the last N days before the request"."""
    pop = TimePopularity(split.train_ev, split.train.n_items)
    return lambda days: lambda rows: pop.recent(split.t_query[rows], days)


def _ease(split: Split) -> Callable[[float], Callable[[I32], F32]]:
    x = binary_matrix(split.train)

    def score_for(lam: float) -> Callable[[I32], F32]:
        b = fit_ease(x, lam)
        return lambda rows: _dense(x[rows] @ b)

    return score_for


def _blend(split: Split, lam: float, days: float) -> Callable[[float], Callable[[I32], F32]]:
    """EASE + ``w`` x recent popularity, both max-normalised per user."""
    x = binary_matrix(split.train)
    b = fit_ease(x, lam)
    recent = _recent(split)(days)
    return lambda w: lambda rows: _norm(_dense(x[rows] @ b)) + w * _norm(recent(rows))


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
    model = train_hybrid(
        split.train_ev,
        vectors,
        min_rating=min_rating,
        positive_types=positive_types,
        scheme=split.scheme,
        off=off,
        max_items=max_items,
    )
    model = on_items(model, split.train_ev.items)  # the products beyond max_items score too
    hist = history_matrix(split.train, model.params.alpha, model.params.half_life)
    pop = TimePopularity(split.train_ev, split.train.n_items)
    seen = binary_matrix(split.train)
    m = evaluate_scores(split, lambda u: model.score(hist[u], split.t_query[u], pop, vectors, seen[u], u), k)
    desc = model.params.describe()
    check = model.info.get("rerank_check")
    if check is not None:  # the two-fold check on the inner split that decided about the reranker
        verdict = "kept" if model.reranker is not None else "dropped"
        desc += f" reranker: {verdict} ({check['blend']:.4f} -> {check['reranked']:.4f} inner two-fold)"
    return Row(name, m, time.perf_counter() - t0, desc, _peak_rss_mb())


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
    x = binary_matrix(split.train)
    rows: list[Row] = []
    total = len(BASELINES) + 1 + (len(SIGNALS) if ablation else 0)

    def add(row: Row) -> None:
        rows.append(row)
        if progress is not None:
            progress(row, total - len(rows))

    def timed(name: str, params: str, run: Callable[[], Metrics]) -> None:
        t0 = time.perf_counter()
        m = run()
        add(Row(name, m, time.perf_counter() - t0, params))

    counts = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
    timed("popularity", "all-time counts", lambda: evaluate_scores(split, lambda u: np.tile(counts, (len(u), 1)), k))

    days = _best(inner, RECENT_DAYS, _recent(inner))  # tuned inside the training part, like the others
    timed("recent popularity", f"last {days:g} days", lambda: evaluate_scores(split, _recent(split)(days), k))

    t0 = time.perf_counter()
    x_inner = binary_matrix(inner.train)
    kk = int(_best(inner, KNN_KS, lambda v: _knn_scores(x_inner, int(v))))
    m = evaluate_scores(split, _knn_scores(x, kk), k)
    add(Row("item-kNN (cosine)", m, time.perf_counter() - t0, f"k={kk}"))

    lam = _best(inner, EASE_LAMBDAS, _ease(inner))
    timed("EASE", f"lambda={lam:g}", lambda: evaluate_scores(split, _ease(split)(lam), k))

    w = _best(inner, BLEND_WEIGHTS, _blend(inner, lam, days))
    timed(
        "EASE + recent pop.",
        f"lambda={lam:g} last {days:g} days w={w:g}",
        lambda: evaluate_scores(split, _blend(split, lam, days)(w), k),
    )

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


def _knn_scores(x: sp.csr_matrix, kk: int) -> Callable[[I32], F32]:
    s = fit_itemknn(x, kk)
    return lambda rows: _dense(x[rows] @ s)


BASELINES = ("popularity", "recent popularity", "item-kNN (cosine)", "EASE", "EASE + recent pop.")


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
