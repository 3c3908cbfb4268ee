"""Offline evaluation: our hybrid next to popularity, item-kNN and EASE on one per-user time split.

Every method gets the same treatment: its hyper-parameters are tuned on a time split *inside* the
training part (the last 20% of each user's training events), then it is refit on the whole
training part and scored on the held-out test part, which no method ever sees before.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.recommend.data import F32, I32, EventArrays
from core.recommend.models import (
    Metrics,
    Split,
    TimePopularity,
    binary_matrix,
    evaluate_scores,
    fit_ease,
    fit_itemknn,
    history_matrix,
    make_split,
    sample_users,
    train_hybrid,
)

EASE_LAMBDAS = [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
KNN_KS = [10, 20, 50, 100, 200, 400]


@dataclass(frozen=True)
class Row:
    name: str
    metrics: Metrics
    seconds: float
    params: str


def _inner(split: Split, min_rating: float, positive_types: Sequence[str]) -> Split:
    inner = make_split(split.train_ev, 0.2, min_rating, positive_types)
    return replace(inner, users=sample_users(inner.users, 1500))


def _tune(inner: Split, values: Sequence[float], fit: object) -> float:
    x = binary_matrix(inner.train)
    best, best_v = -1.0, values[0]
    for v in values:
        w = fit(x, v)  # type: ignore[operator]

        def score(rows: I32, w: object = w) -> F32:
            return _dense(x[rows] @ w)

        m = evaluate_scores(inner, score)
        if m.ndcg > best:
            best, best_v = m.ndcg, v
    return best_v


def _dense(m: object) -> F32:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32)  # type: ignore[union-attr]


def evaluate(
    ev: EventArrays,
    vectors: F32 | None = None,
    *,
    test_fraction: float = 0.2,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    k: int = 10,
) -> list[Row]:
    """The comparison table on one split of ``ev`` (``vectors`` aligned with ``ev.items``)."""
    split = make_split(ev, test_fraction, min_rating, positive_types)
    inner = _inner(split, min_rating, positive_types)
    x = binary_matrix(split.train)
    rows: list[Row] = []

    t0 = time.perf_counter()
    counts = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
    m = evaluate_scores(split, lambda u: np.broadcast_to(counts, (len(u), len(counts))), k)
    rows.append(Row("popularity", m, time.perf_counter() - t0, "global counts"))

    t0 = time.perf_counter()
    knn_k = int(_tune(inner, KNN_KS, lambda xx, v: fit_itemknn(xx, int(v))))
    s = fit_itemknn(x, knn_k)
    m = evaluate_scores(split, lambda u: _dense(x[u] @ s), k)
    rows.append(Row("item-kNN (cosine)", m, time.perf_counter() - t0, f"k={knn_k}"))

    t0 = time.perf_counter()
    lam = _tune(inner, EASE_LAMBDAS, fit_ease)
    b = fit_ease(x, lam)
    m = evaluate_scores(split, lambda u: _dense(x[u] @ b), k)
    rows.append(Row("EASE", m, time.perf_counter() - t0, f"lambda={lam:g}"))

    t0 = time.perf_counter()
    model = train_hybrid(split.train_ev, vectors, min_rating=min_rating, positive_types=positive_types)
    hist = history_matrix(split.train, model.params.alpha, model.params.half_life)
    pop = TimePopularity(split.train_ev, len(ev.items))
    recent = history_matrix(split.train, 0.0, model.params.seq_half_life)
    seen = binary_matrix(split.train)
    m = evaluate_scores(split, lambda u: model.score(hist[u], split.t_last[u], pop, vectors, recent[u], seen[u], u), k)
    desc = model.params.describe()
    check = model.info.get("rerank_check")
    if check is not None:  # the two-fold check on the inner split that decided about the reranker
        verdict = "kept" if model.reranker is not None else "dropped"
        desc += f" reranker: {verdict} ({check['blend']:.4f} -> {check['reranked']:.4f} inner two-fold)"
    rows.append(Row("shelfsearch hybrid", m, time.perf_counter() - t0, desc))
    return rows


def format_table(rows: Sequence[Row], split_desc: str) -> str:
    lines = [
        split_desc,
        f"{'method':<20} {'NDCG@10':>8} {'recall@10':>9} {'(capped)':>8} {'coverage':>8} {'users':>5} {'sec':>5}"
        "  params",
    ]
    for r in rows:
        m = r.metrics
        cells = f"{m.ndcg:>8.4f} {m.recall:>9.4f} {m.recall_capped:>8.4f} {m.coverage:>8.3f} {m.users:>5d}"
        cells += f" {r.seconds:>5.1f}"
        lines.append(f"{r.name:<20} {cells}  {r.params}")
    lines.append("recall@10 = hits / held-out positives; (capped) = hits / min(10, held-out positives)")
    return "\n".join(lines)


__all__ = ["I32", "Row", "evaluate", "format_table"]
