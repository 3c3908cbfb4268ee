"""Ranking metrics and the train/test splits they are measured on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from core.recommend.data import F32, F64, I32, EventArrays, Interactions, aggregate, global_split, positives, time_split
from core.recommend.signals import binary_matrix, top_k


@dataclass(frozen=True)
class RankingMetrics:
    ndcg: float
    recall: float
    coverage: float
    users: int
    recall_capped: float = 0.0  # hits / min(k, relevant): the "normalised" recall some papers use

    def as_dict(self) -> dict[str, float]:
        return {
            "ndcg@10": self.ndcg,
            "recall@10": self.recall,
            "recall@10_capped": self.recall_capped,
            "coverage": self.coverage,
            "users": self.users,
        }


def ranking_metrics(recs: I32, relevant: sp.csr_matrix, n_items: int, k: int = 10) -> RankingMetrics:
    """NDCG@k and recall@k (hits / number of relevant items) averaged over rows, and the share of
    the catalog that appears in anyone's top k."""
    rel = relevant.tocsr()
    hits = np.asarray(rel[np.arange(recs.shape[0])[:, None], recs[:, :k]].toarray() > 0, dtype=np.float64)
    n_rel = np.asarray((rel > 0).sum(axis=1)).ravel().astype(np.float64)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ disc[: hits.shape[1]]  # fewer than k items in a tiny catalog
    idcg = np.array([disc[: int(min(n, k))].sum() for n in n_rel])
    ok = n_rel > 0
    cov = len(np.unique(recs[:, :k])) / max(n_items, 1)
    if not ok.any():
        return RankingMetrics(0.0, 0.0, cov, 0)
    n_hits = hits.sum(axis=1)[ok]
    return RankingMetrics(
        float((dcg[ok] / idcg[ok]).mean()),
        float((n_hits / n_rel[ok]).mean()),
        cov,
        int(ok.sum()),
        float((n_hits / np.minimum(n_rel[ok], k)).mean()),
    )


SplitScheme = Literal["global", "user"]
"""``global``: one time cutoff for everyone (train on the past, judge the future, as a shop uses
a recommender); ``user``: each user's latest events held out, the others' later events still in
training (optimistic: what other users did after a test user's held-out period leaks in)."""


@dataclass(frozen=True)
class Split:
    """A train/test split ready for scoring: train interactions, test relevance and the request
    time each user is scored at."""

    train_ev: EventArrays
    train: Interactions
    relevant: sp.csr_matrix  # users x items, test positives the user had not touched in training
    users: I32  # users with training history and at least one test positive
    t_query: F64  # per user, the request time: the cutoff (global) or the last training event (user)
    scheme: SplitScheme = "global"
    cutoff: float = math.nan  # the global cutoff T


def make_split(
    ev: EventArrays,
    test_fraction: float = 0.2,
    min_rating: float = 4.0,
    positive_types: Sequence[str] = ("purchase",),
    scheme: SplitScheme = "global",
    cutoff: float | None = None,
) -> Split:
    """Split ``ev`` by ``scheme`` (see :data:`SplitScheme`; ``cutoff``: the global split's time,
    default the ``1 - test_fraction`` quantile); positives are ratings >= ``min_rating`` and
    ``positive_types`` events."""
    if scheme == "global":
        train_ev, test_ev, at = global_split(ev, test_fraction, cutoff)
    else:
        train_ev, test_ev = time_split(ev, test_fraction)
    train = aggregate(train_ev)
    pos = positives(test_ev, min_rating, positive_types)
    rel = sp.csr_matrix(
        (np.ones(len(pos), dtype=np.float32), (pos.user, pos.item)), shape=(len(ev.users), len(ev.items))
    )
    rel.data[:] = 1.0
    rel = rel - rel.multiply(binary_matrix(train))  # what the user already had is never recommended
    rel.eliminate_zeros()
    has_history = np.bincount(train.user, minlength=len(ev.users)) > 0
    users = np.flatnonzero((np.asarray(rel.sum(axis=1)).ravel() > 0) & has_history).astype(np.int32)
    if scheme == "global":
        return Split(train_ev, train, sp.csr_matrix(rel), users, np.full(len(ev.users), at), scheme, at)
    return Split(train_ev, train, sp.csr_matrix(rel), users, train.user_last_ts(), scheme)


ScoreFn = Callable[[I32], F32]


def evaluate_scores(split: Split, score: ScoreFn, k: int = 10, batch: int = 2048) -> RankingMetrics:
    """Ranking metrics of a scoring function on ``split`` (train items excluded from the candidates)."""
    seen = binary_matrix(split.train)
    recs = []
    for start in range(0, len(split.users), batch):
        rows = split.users[start : start + batch]
        recs.append(top_k(score(rows), k, seen[rows]))
    all_recs = np.concatenate(recs) if recs else np.zeros((0, k), dtype=np.int32)
    return ranking_metrics(all_recs, split.relevant[split.users], split.train.n_items, k)


def sample_users(users: I32, limit: int, seed: int = 0) -> I32:
    if len(users) <= limit:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, limit, replace=False)).astype(np.int32)
