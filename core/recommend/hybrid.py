"""The hybrid recommender: its parameters, the model that scores, and its reranker.

The hybrid scores item ``i`` for user ``u`` at request time ``t`` as

    s(u, i) = (cf(u, i) / max cf(u) + beta * pop_t(i) / max pop_t + gamma * content(u, i) / max content(u)
               + eta * choice_t(u, i)) scaled by trend_t(i) ** trend

- ``cf``: EASE (Steck 2019) item-item weights ``B`` (:attr:`HybridModel.ease`) applied to the
  user's history vector, where each past item counts ``strength ** alpha * 0.5 ** (rank /
  half_life)`` (purchase > cart > click > view, ratings by stars; ``rank`` 0 = most recent item),
  shrunk towards the fit's low-rank core (``shrink``, ``rank``; :attr:`HybridModel.subspace`);
- ``pop_t``: item popularity as of ``t`` (events up to ``t`` in a one-sided exponential kernel of
  width ``tau_days``);
- ``content``: cosine between each item's fused embedding and the user's recency-weighted
  profile of embeddings, which reaches new products nobody interacted with yet;
- ``choice_t``: the time-aware choice model of :mod:`core.recommend.factors`
  (:attr:`HybridModel.choice`: user and item factors learned from what was chosen when, with a
  rating head): the probability that the user chooses the item as of ``t`` and likes it, relative
  to their most likely item;
- ``trend_t``: how much more an item is chosen just before ``t`` than its history up to ``t``
  predicts (:meth:`TimePopularity.trend`), a multiplier.

Every time signal is anchored at the request (serving: now or ``as_of``; evaluation: the cutoff)
and sees only events before it. All hyper-parameters are chosen by
:func:`~core.recommend.tuning.tune_hybrid` on a split *inside* the training data of the same kind
as the evaluation's (by default one time cutoff), never on held-out data. On the same split
:func:`~core.recommend.tuning.fit_reranker` fits a :class:`Reranker`, a logistic model that
reorders each user's best candidates from :data:`RERANK_FEATURES`; it is kept only when it beats
the blend on users it was not fitted on. :data:`~core.recommend.tuning.SIGNALS` names what the
ablation (``python -m local evaluate --ablation``) turns off one at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from core.recommend.data import F32, F64, I32
from core.recommend.factors import FactorModel
from core.recommend.signals import (
    TimePopularity,
    _apply,
    _row_max_normalise,
    block,
    boost,
    content_scores,
    top_k,
)

INF = math.inf


@dataclass(frozen=True)
class HybridParams:
    lam: float = 300.0
    rho: float = 0.0
    alpha: float = 0.0
    half_life: float = INF
    beta: float = 0.0
    tau_days: float = 14.0
    gamma: float = 0.0
    trend: float = 0.0
    trend_tau_days: float = 7.0
    shrink: float = 0.0
    rank: int = 48
    eta: float = 0.0
    neighbors: int = 256
    cf: float = 1.0  # the collaborative signal's weight (0 only to measure what it is worth)

    def __post_init__(self) -> None:
        for name in ("rank", "neighbors"):  # integers, also when a tuning grid (floats) sets them
            object.__setattr__(self, name, int(getattr(self, name)))

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v) if math.isfinite(v) else "inf") for k, v in asdict(self).items()}  # type: ignore[misc]

    def describe(self) -> str:
        hidden = {"neighbors"} | ({"rank"} if self.shrink <= 0 else set())  # rank means nothing unshrunk
        hidden |= {"cf"} if self.cf == 1.0 else set()
        return " ".join(f"{k}={v:g}" for k, v in asdict(self).items() if k not in hidden)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HybridParams:
        fields = cls.__dataclass_fields__
        values = {k: int(v) if k in ("neighbors", "rank") else float(v) for k, v in raw.items() if k in fields}
        return cls(**values)  # type: ignore[arg-type]


# The blend used when the training data is too small to tune anything.
NO_SIGNAL = HybridParams(alpha=1.0, half_life=20.0, beta=0.2, gamma=0.4)

RERANK_CANDIDATES = 100
"""How many of the hybrid's best products per user the reranker reorders."""

RERANK_FEATURES = (
    "score",
    "log_rank",
    "collaborative",
    "content",
    "log_trend_3d",
    "log_trend_7d",
    "log_trend_21d",
    "log_recent_popularity",
    "log_popularity",
    "days_since_first_event",
    "days_since_last_event",
    "mean_stars",
    "positive_share",
)


def _signed_log(x: npt.NDArray[Any]) -> F32:
    out: F32 = (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
    return out


def rerank_features(
    total: F32, collaborative: F32, content: F32 | None, items: I32, t_query: float, pop: TimePopularity
) -> F32:
    """The :data:`RERANK_FEATURES` of one user's candidates ``items`` (best hybrid score first;
    ``total``, ``collaborative`` and ``content`` are their parts of the score, aligned with
    ``items``), for a request at ``t_query``: ``len(items) x features``. Scores are
    relative to the best candidate's, days to the request's day."""
    n = len(items)
    t = np.array([t_query])
    top = float(abs(total[0])) if n and np.isfinite(total[0]) and total[0] != 0 else 1.0  # the best candidate
    day = int(pop._days(t)[0])
    cols = [
        total / top,
        np.log1p(np.arange(n, dtype=np.float32)),
        collaborative,
        np.zeros(n, np.float32) if content is None else content,
        *(np.log(pop.trend(t, tau)[0, items]) for tau in (3.0, 7.0, 21.0)),
        np.log1p(np.asarray(pop.at(t, 7.0)[0, items], dtype=np.float32)),
        np.log1p(pop.global_counts[items]),
        _signed_log(day - pop.first_day[items]),
        _signed_log(day - pop.last_day[items]),
        pop.mean_stars[items],
        pop.positive_share[items],
    ]
    return np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=1)


@dataclass(frozen=True)
class Reranker:
    """A logistic model that reorders the hybrid's :data:`RERANK_CANDIDATES` best products per
    user from :func:`rerank_features`: what the blend cannot express, such as how a product's
    age, its trend at several widths and its ratings so far change the odds that a user who
    ranks it highly will like it. Fitted by :func:`~core.recommend.tuning.fit_reranker` on the
    same split inside the training data that tunes the blend; the score it gives is that
    probability."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    candidates: int = RERANK_CANDIDATES
    features: tuple[str, ...] = RERANK_FEATURES

    def logits(self, x: F32) -> F32:
        z = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.scale, np.float32)
        out: F32 = (z @ np.asarray(self.coef, np.float32) + np.float32(self.intercept)).astype(np.float32)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Reranker:
        if tuple(raw["features"]) != RERANK_FEATURES:
            raise ValueError(f"reranker features {raw['features']} do not match this version's {RERANK_FEATURES}")
        return cls(
            tuple(raw["mean"]),
            tuple(raw["scale"]),
            tuple(raw["coef"]),
            float(raw["intercept"]),
            int(raw["candidates"]),
            tuple(raw["features"]),
        )


@dataclass
class HybridModel:
    """A trained hybrid: EASE weights over ``items`` plus the tuned parameters."""

    items: list[str]
    ease: Any  # items x items EASE weights: csr (served) or dense (while tuning)
    params: HybridParams
    info: dict[str, Any] = field(default_factory=dict)
    reranker: Reranker | None = None
    subspace: F32 | None = None  # items x rank: the directions the collaborative scores are shrunk towards
    choice: FactorModel | None = None  # the time-aware choice model (users it was trained on x items)

    def project(self, cf: F32) -> F32:
        """Collaborative scores (one row or users x items) with the part outside the model's
        low-rank subspace shrunk by ``params.shrink``: ``(1 - s) cf + s cf V V'`` (``V``: :attr:`subspace`).
        Estimating a user's taste from a few dozen events is noisy; the subspace holds what many users share."""
        if self.subspace is None or self.params.shrink <= 0:
            return cf
        s = self.params.shrink
        out: F32 = ((1.0 - s) * cf + s * ((cf @ self.subspace) @ self.subspace.T)).astype(np.float32)
        return out

    def collaborative_block(self, rows: I32, cols: list[int]) -> F32:
        """Per history item ``rows`` (one row each), its part of the collaborative score of the
        products ``cols``, so that summing over ``rows`` with the history weights gives the
        (unnormalised) collaborative score: what reasons are made from."""
        direct = block(self.ease, rows, cols)
        if self.subspace is None or self.params.shrink <= 0:
            return direct
        s = self.params.shrink
        via = np.asarray(self.ease[rows] @ self.subspace) @ self.subspace[cols].T
        out: F32 = ((1.0 - s) * direct + s * via).astype(np.float32)
        return out

    def components(
        self,
        hist: sp.csr_matrix,
        t_query: F64,
        pop: TimePopularity | None,
        vectors: F32 | None,
        users: npt.NDArray[np.integer[Any]] | None = None,
    ) -> dict[str, F32]:
        """The weighted, per-user normalised parts of the score (users x items):
        ``collaborative``, ``popular``, ``content`` and ``factors`` (the choice model's rows
        ``users``, numbered like the data the model was trained on); the score is their sum."""
        p = self.params
        parts = {"collaborative": p.cf * _row_max_normalise(self.project(_apply(hist, self.ease)))}
        if users is not None:
            factors = self.factor_scores(np.asarray(users, dtype=np.int64), t_query, pop)
            if factors is not None:
                parts["factors"] = factors
        if p.beta > 0 and pop is not None:
            parts["popular"] = p.beta * _row_max_normalise(np.array(pop.at(t_query, p.tau_days), dtype=np.float32))
        if p.gamma > 0 and vectors is not None:
            parts["content"] = p.gamma * _row_max_normalise(content_scores(hist, vectors))
        return parts

    def score(
        self,
        hist: sp.csr_matrix,
        t_query: F64,
        pop: TimePopularity | None,
        vectors: F32 | None,
        exclude: sp.csr_matrix | None = None,
        users: npt.NDArray[np.integer[Any]] | None = None,
    ) -> F32:
        """Scores (users x items) for history rows weighted with this model's alpha/half-life.
        With a reranker, each row's best candidates (``exclude``'s nonzeros, the products the
        user has seen, are never candidates) come first, in the reranker's order; the other
        products keep the blend's order below them."""
        if self.reranker is None or pop is None:
            comps = self.components(hist, t_query, pop, vectors, users)
            return boost(functools.reduce(np.add, comps.values()), self.trend_factor(t_query, pop))
        out, cand, x = self.candidates(hist, t_query, pop, vectors, exclude, self.reranker.candidates, users)
        ranked: F32 = (out - np.abs(out).max(axis=1, keepdims=True) - 1.0).astype(np.float32)  # below candidates
        # The candidates in the reranker's order (stable, like the query path), as 3 - position / n:
        # exact in float32, where probabilities + 2 could tie.
        order = np.argsort(-self.reranker.logits(x), axis=1, kind="stable")
        position = np.empty_like(order)
        np.put_along_axis(position, order, np.arange(order.shape[1])[None, :], axis=1)
        np.put_along_axis(ranked, cand, (3.0 - position / max(order.shape[1], 1)).astype(np.float32), axis=1)
        return ranked

    def candidates(
        self,
        hist: sp.csr_matrix,
        t_query: F64,
        pop: TimePopularity,
        vectors: F32 | None,
        exclude: sp.csr_matrix | None,
        n: int,
        users: npt.NDArray[np.integer[Any]] | None = None,
    ) -> tuple[F32, I32, F32]:
        """The blend's scores (users x items), each row's ``n`` best products outside
        ``exclude`` (best first) and their :func:`rerank_features` (users x n x features)."""
        comps = self.components(hist, t_query, pop, vectors, users)
        out = boost(functools.reduce(np.add, comps.values()), self.trend_factor(t_query, pop))
        cand = top_k(out, n, exclude)
        content = comps.get("content")
        x = np.stack(
            [
                rerank_features(
                    out[r, c],
                    comps["collaborative"][r, c],
                    None if content is None else content[r, c],
                    c,
                    t_query[r],
                    pop,
                )
                for r, c in enumerate(cand)
            ]
        )
        return out, cand, x

    def factor_scores(self, users: npt.NDArray[np.int64], t_query: F64, pop: TimePopularity | None) -> F32 | None:
        """``eta`` times the choice model's scores for rows ``users`` of :attr:`choice` (-1: a user it
        has no row for, zeros) as of the request times ``t_query``; None when the signal is off."""
        f = self.choice
        if self.params.eta <= 0 or f is None or pop is None:
            return None
        log_trend = np.log(np.maximum(pop.trend(t_query, f.tau_days), 1e-6)).astype(np.float32)
        out: F32 = (self.params.eta * f.scores(users, log_trend)).astype(np.float32)
        return out

    def trend_factor(self, t_query: F64, pop: TimePopularity | None) -> F32 | None:
        """``TimePopularity.trend ** trend`` for requests at ``t_query`` (rows), or None
        when the trend signal is off: the multiplier :func:`~core.recommend.signals.boost` applies
        to the summed score."""
        p = self.params
        if p.trend <= 0 or pop is None:
            return None
        return pop.trend(t_query, p.trend_tau_days, p.trend)


def on_items(model: HybridModel, items: Sequence[str], index: Mapping[str, int] | None = None) -> HybridModel:
    """``model`` over the products ``items`` (``index``: each id's position in them, built when not
    given): products it did not cover get no collaborative or choice-model score, and products of
    the model that ``items`` lacks drop out. Query processes map a model onto their catalog
    snapshot with it; offline scoring maps a bounded model (``max_items`` of
    :func:`~core.recommend.tuning.train_hybrid`) onto the whole catalog."""
    if list(model.items) == list(items):
        return model
    index = {it: k for k, it in enumerate(items)} if index is None else index
    to_new = np.array([index.get(i, -1) for i in model.items], dtype=np.int64)  # the one Python pass
    n = len(items)
    keep = np.flatnonzero(to_new >= 0)
    # model items x new items, 1 where they are the same product: sel.T @ m re-indexes rows.
    sel = sp.csr_matrix((np.ones(len(keep), dtype=np.float32), (keep, to_new[keep])), shape=(len(model.items), n))
    ease = (sel.T @ sp.csr_matrix(model.ease) @ sel).tocsr()
    subspace = None if model.subspace is None else np.asarray(sel.T @ model.subspace, dtype=np.float32)
    choice = None if model.choice is None else model.choice.reindexed(to_new, n)
    return replace(model, items=list(items), ease=ease, subspace=subspace, choice=choice)
