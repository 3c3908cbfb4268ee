"""Fitting the hybrid: the hyper-parameter search, the reranker and its check, the choice model,
and :func:`train_hybrid`, which ties them together.

All hyper-parameters are chosen on a split *inside* the training data of the same kind as the
evaluation's (by default one time cutoff), never on held-out data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from core.recommend.data import F32, I32, EventArrays, aggregate
from core.recommend.factors import FactorConfig, FactorModel, fit_factors
from core.recommend.hybrid import INF, NO_SIGNAL, RERANK_CANDIDATES, HybridModel, HybridParams, Reranker
from core.recommend.metrics import Split, SplitScheme, evaluate_scores, make_split, sample_users
from core.recommend.signals import (
    DAY,
    MAX_RANK,
    TimePopularity,
    _mix,
    active_items,
    binary_matrix,
    ease_pair,
    fit_ease,
    fit_projection,
    history_matrix,
    positive_matrix,
    prune_rows,
    restrict_items,
)

GRID: dict[str, list[float]] = {
    "lam": [30.0, 100.0, 300.0, 1000.0, 3000.0],
    "rho": [0.0, 0.5, 1.0],
    "shrink": [0.0, 0.25, 0.5],
    "rank": [32.0, 48.0, 64.0],
    "half_life": [INF, 200.0, 50.0, 20.0, 8.0],
    "alpha": [0.0, 0.5, 1.0],
    "tau_days": [1.0, 4.0, 14.0, 60.0, 1e6],
    "beta": [0.0, 0.1, 0.2, 0.4, 0.8],
    "gamma": [0.0, 0.05, 0.1, 0.2, 0.4],
    "trend": [0.0, 0.25, 0.5, 1.0],
    "trend_tau_days": [3.0, 7.0, 21.0],
    "eta": [0.0, 0.25, 0.5, 1.0, 2.0],
}
SIGNALS: dict[str, dict[str, list[float]]] = {
    "collaborative": {"cf": [0.0], "shrink": [0.0]},
    "shrink": {"shrink": [0.0]},
    "choice": {"eta": [0.0]},
    "content": {"gamma": [0.0]},
    "trending": {"beta": [0.0]},
    "trend": {"trend": [0.0]},
    "reranker": {},
}
"""What turning each signal off means for the tuner (``off=`` of :func:`train_hybrid`): its weight
pinned to 0. ``reranker`` means no reranker. Used to measure what each part is worth."""

FACTOR_MAX_ITEMS = 20_000
"""The choice model is fitted on at most this many products (the most chosen ones)..."""
FACTOR_BUDGET = 1_000_000_000
"""... and on fewer when events x products would pass this (its full softmax costs that per epoch:
171 s for 20 epochs at 100k events x 10k products on the 2-core dev VM), but on at least
:data:`FACTOR_MIN_ITEMS`."""
FACTOR_MIN_ITEMS = 2_000
FACTOR_MAX_EVENTS = 2_000_000
"""The choice model learns from at most this many events, the most recent ones: its epochs cost
time in proportion to the events (the other signals use them all)."""
MAX_ITEMS = 15_000
"""The collaborative model (EASE, its projection, the choice model) is fitted on at most this many
products, the most active lately (:func:`~core.recommend.signals.active_items`): EASE's dense
products x products matrices grow with the square (see :func:`~core.recommend.signals.ease_bytes`).
The other products are reached by content and popularity. ``RECS_MAX_ITEMS`` sets it for
``local train``."""
RERANK_MIN_POSITIVES = 50
"""Fewer positives among the validation candidates than this: no reranker (nothing to learn from)."""
RerankMode = Literal["auto", "always", "off"]
"""``auto``: keep the reranker only when the two-fold check says it beats the blend; ``always``:
keep it whenever it can be fitted (the check is still run and reported); ``off``: never fit one."""


@dataclass
class TuneLog:
    trials: list[tuple[dict[str, float], float]] = field(default_factory=list)
    seconds: float = 0.0
    reranker: Reranker | None = None
    rerank_check: dict[str, float] | None = None  # NDCG@10 of the blend and of it reranked, on held-out users
    factor_seconds: float = 0.0  # fitting the choice model on the inner split


def tune_hybrid(
    ev: EventArrays,
    vectors: F32 | None = None,
    *,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    max_users: int = 1500,
    max_items: int = 3000,
    rounds: int = 2,
    grid: dict[str, list[float]] | None = None,
    start: HybridParams = HybridParams(),  # noqa: B008 (frozen: safe as a default)
    rerank: RerankMode = "auto",
    scheme: SplitScheme = "global",
    off: Sequence[str] = (),
) -> tuple[HybridParams, float, TuneLog]:
    """Coordinate ascent over :data:`GRID` maximising NDCG@10 on a split of ``ev`` (the training
    data) by ``scheme``: by default the last 20% of its time range is judged, as of its start,
    fitting on what came before. ``off`` names :data:`SIGNALS` pinned off."""
    t0 = time.perf_counter()
    grid = dict(grid or GRID)
    if vectors is None:
        grid["gamma"] = [0.0]
    for name in off:
        grid.update(SIGNALS[name])
    rerank = "off" if "reranker" in off else rerank
    start = replace(start, **{k: v[0] for k, v in grid.items() if len(v) == 1})  # type: ignore[arg-type]
    if len(ev.items) > max_items:
        # Tune on the most-interacted products: the parameters transfer, the cost is bounded.
        keep = np.sort(np.argsort(-np.bincount(ev.item, minlength=len(ev.items)), kind="stable")[:max_items])
        ev = restrict_items(ev, keep)
        vectors = None if vectors is None else vectors[keep]
    split = make_split(ev, 0.2, min_rating, positive_types, scheme)
    split = replace(split, users=sample_users(split.users, max_users))
    x = binary_matrix(split.train)
    pop = TimePopularity(split.train_ev, split.train.n_items)
    log = TuneLog()
    y = positive_matrix(split.train_ev, min_rating, positive_types)
    if y.nnz == 0:
        grid["rho"] = [0.0]
    factors = None
    if any(v > 0 for v in grid.get("eta", [])) and len(split.train_ev):
        factors = factors_for(split.train_ev, pop, min_rating)
        log.factor_seconds = factors[1]
    pairs: dict[float, tuple[F32, F32 | None]] = {}
    projections: dict[tuple[float, float], F32] = {}

    def model_for(p: HybridParams) -> HybridModel:
        if p.lam not in pairs:
            pairs.clear()  # one pair in memory at a time (2 x items^2 floats)
            projections.clear()
            pairs[p.lam] = ease_pair(x, p.lam, y if y.nnz else None)
        ease = _mix(pairs[p.lam], p.rho)
        subspace = None
        if p.shrink > 0:
            if (p.lam, p.rho) not in projections:  # one SVD per EASE fit serves every rank
                projections[(p.lam, p.rho)] = fit_projection(x, ease, MAX_RANK)
            subspace = projections[(p.lam, p.rho)][:, : p.rank]
        return HybridModel(ev.items, ease, p, subspace=subspace, choice=None if factors is None else factors[0])

    def run(p: HybridParams) -> float:
        model = model_for(p)
        hist = history_matrix(split.train, p.alpha, p.half_life)
        m = evaluate_scores(split, lambda rows: model.score(hist[rows], split.t_query[rows], pop, vectors, users=rows))
        log.trials.append((p.as_dict(), m.ndcg))
        return m.ndcg

    best, best_score = start, run(start)
    for _ in range(rounds):
        improved = False
        for name, values in grid.items():
            for v in values:
                cand = replace(best, **{name: v})  # type: ignore[arg-type]
                if cand == best:
                    continue
                s = run(cand)
                if s > best_score + 1e-6:
                    best, best_score, improved = cand, s, True
        if not improved:
            break
    if rerank != "off":
        # The tuned blend exactly as it was validated (cached EASE weights and projection).
        always = rerank == "always"
        log.reranker, log.rerank_check = _checked_reranker(split, model_for(best), pop, vectors, always=always)
    log.seconds = time.perf_counter() - t0
    return best, best_score, log


def _checked_reranker(
    split: Split,
    model: HybridModel,
    pop: TimePopularity,
    vectors: F32 | None,
    *,
    always: bool = False,
) -> tuple[Reranker | None, dict[str, float] | None]:
    """A reranker for the tuned blend ``model``, or None when it does not help (unless ``always``)
    or cannot be fitted. Two-fold check: fitted on one half of the split's users and judged on
    the other, both ways, against the blend alone on the same users (the blend was tuned on all of
    them, so both sides of the comparison share that bias); when kept, it is refitted on all users."""
    best = model.params
    hist = history_matrix(split.train, best.alpha, best.half_life)
    seen = binary_matrix(split.train)
    shuffled = np.random.default_rng(0).permutation(_by_id(split, split.users))
    halves = [np.sort(h).astype(np.int32) for h in (shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2 :])]
    if min(len(h) for h in halves) == 0:
        return None, None

    def ndcg(m: HybridModel, users: I32) -> float:
        return evaluate_scores(
            replace(split, users=users),
            lambda rows: m.score(hist[rows], split.t_query[rows], pop, vectors, seen[rows], rows),
        ).ndcg

    blend = reranked = 0.0
    for fit_on, judge_on in (halves, halves[::-1]):
        half = fit_reranker(replace(split, users=fit_on), model, hist, pop, vectors)
        if half is None:
            return None, None
        share = len(judge_on) / len(split.users)
        blend += share * ndcg(model, judge_on)
        reranked += share * ndcg(replace(model, reranker=half), judge_on)
    check = {"blend": blend, "reranked": reranked, "users": float(len(split.users))}
    if reranked <= blend and not always:
        return None, check
    return fit_reranker(split, model, hist, pop, vectors), check


def _by_id(split: Split, users: I32) -> I32:
    """``users`` (row numbers) ordered by user id: fitting the reranker on the same rows in the same
    order makes it independent of the order in which users' events arrived (the model trained
    through the API equals the offline one)."""
    ids = np.asarray(split.train_ev.users, dtype=object)[users]
    out: I32 = users[np.argsort(ids, kind="stable")]
    return out


def fit_reranker(
    split: Split,
    model: HybridModel,
    hist: sp.csr_matrix,
    pop: TimePopularity,
    vectors: F32 | None,
    candidates: int = RERANK_CANDIDATES,
) -> Reranker | None:
    """Fit a :class:`~core.recommend.hybrid.Reranker` on ``split``: each user's ``candidates`` best products by
    ``model``'s blend, labelled by whether they are among the user's held-out positives. None
    when fewer than :data:`RERANK_MIN_POSITIVES` candidates are positive."""
    from sklearn.linear_model import LogisticRegression

    seen = binary_matrix(split.train)
    xs, ys = [], []
    users = _by_id(split, split.users)  # the same rows in the same order however users were numbered
    for start in range(0, len(users), 512):
        rows = users[start : start + 512]
        _out, cand, x = model.candidates(hist[rows], split.t_query[rows], pop, vectors, seen[rows], candidates, rows)
        rel = split.relevant[rows]
        xs.append(x.reshape(-1, x.shape[-1]))
        ys.append(np.asarray(rel[np.arange(len(rows))[:, None], cand].toarray() > 0).ravel())
    if not xs:
        return None
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if y_all.sum() < RERANK_MIN_POSITIVES or y_all.all():
        return None
    mean = x_all.mean(axis=0)
    scale = x_all.std(axis=0)
    scale[scale < 1e-6] = 1.0
    lr = LogisticRegression(C=1.0, max_iter=1000).fit((x_all - mean) / scale, y_all)
    return Reranker(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in lr.coef_.ravel()),
        float(lr.intercept_[0]),
        candidates,
    )


def train_hybrid(
    ev: EventArrays,
    vectors: F32 | None = None,
    *,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    params: HybridParams | None = None,
    rerank: RerankMode = "auto",
    scheme: SplitScheme = "global",
    off: Sequence[str] = (),
    max_items: int = MAX_ITEMS,
) -> HybridModel:
    """Tune (unless ``params`` are given) on a split inside ``ev`` (``scheme``), then fit on all
    of ``ev``; ``rerank`` says when the tuned blend gets a :class:`~core.recommend.hybrid.Reranker` (see
    :data:`RerankMode`); ``off`` names :data:`SIGNALS` left out (to measure what they are worth).
    Over more than ``max_items`` products the model covers the :func:`~core.recommend.signals.active_items` only."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {"catalog_items": len(ev.items)}
    if len(ev.items) > max_items:
        keep = active_items(ev, max_items)
        ev = restrict_items(ev, keep)
        vectors = None if vectors is None else vectors[keep]
    reranker = None
    if params is None:
        params, val_ndcg, log = tune_hybrid(
            ev, vectors, min_rating=min_rating, positive_types=positive_types, rerank=rerank, scheme=scheme, off=off
        )
        info.update(validation_ndcg=val_ndcg, tune_seconds=log.seconds, trials=len(log.trials), rerank_mode=rerank)
        info["tune_factor_seconds"] = log.factor_seconds
        if log.rerank_check is not None:
            info.update(rerank_check=log.rerank_check, reranker=log.reranker is not None)
        reranker = log.reranker
        if val_ndcg <= 0.0:
            # Too little data to validate anything (every trial scored 0): use every signal with
            # middle-of-the-grid weights instead of whatever the first trial happened to be.
            params = NO_SIGNAL
            reranker = None
            info["fallback"] = "no validation signal: default blend"
    x = binary_matrix(aggregate(ev))
    y = positive_matrix(ev, min_rating, positive_types)
    dense = fit_ease(x, params.lam, y, params.rho)
    subspace = fit_projection(x, dense, params.rank) if params.shrink > 0 else None
    ease = prune_rows(dense, params.neighbors)
    del dense
    choice = None
    if params.eta > 0:
        choice, info["factor_seconds"] = factors_for(ev, TimePopularity(ev, len(ev.items)), min_rating)
    info.update(train_seconds=time.perf_counter() - t0, events=len(ev), users=len(ev.users), items=len(ev.items))
    return HybridModel(list(ev.items), ease, params, info, reranker, subspace, choice)


def factors_for(
    ev: EventArrays,
    pop: TimePopularity,
    min_rating: float,
    config: FactorConfig | None = None,
    max_items: int | None = None,
) -> tuple[FactorModel, float]:
    """The choice model fitted on ``ev`` (``pop`` built from the same events) and its seconds.
    Over more than ``max_items`` products (default: from :data:`FACTOR_BUDGET`) it is fitted on
    the most-chosen ``max_items``; the others get probability 0 from it. It learns from the
    :data:`FACTOR_MAX_EVENTS` most recent events."""
    t0 = time.perf_counter()
    config = config or FactorConfig()
    if len(ev) > FACTOR_MAX_EVENTS:
        ev = ev.take(np.sort(np.argsort(-ev.ts, kind="stable")[:FACTOR_MAX_EVENTS]))
    if max_items is None:
        max_items = min(FACTOR_MAX_ITEMS, max(FACTOR_MIN_ITEMS, FACTOR_BUDGET // max(len(ev), 1)))
    days = pop.day0 + np.arange(pop.n_days, dtype=np.float64) + 0.5
    table = np.asarray(pop.trend(days * DAY, config.tau_days), dtype=np.float32)  # the trend serving uses
    if len(ev.items) > max_items:
        keep = np.sort(np.argsort(-pop.global_counts, kind="stable")[:max_items]).astype(np.int64)
        sub = restrict_items(ev, keep)
        fitted = fit_factors(sub, table[:, keep], pop._days(sub.ts), min_rating=min_rating, config=config)
        return fitted.reindexed(keep, len(ev.items)), time.perf_counter() - t0
    model = fit_factors(ev, table, pop._days(ev.ts), min_rating=min_rating, config=config)
    return model, time.perf_counter() - t0
