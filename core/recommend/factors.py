"""A time-aware choice model: user and item factors learned from *what was chosen when*.

Each event is a choice among all products, with probability

    P(i | u, t) = softmax_i( c_i + log trend_t(i) + p_u . q_i )

where ``trend_t`` is :meth:`TimePopularity.trend` as of the event's day (what was new or hyped
then) and ``c_i`` the product's all-time appeal. Because the time offset explains *when* things
were chosen, the factors ``p_u . q_i`` are left with taste, which co-occurrence models (EASE,
item-kNN) mix up with exposure. Ratings, where there are any, share the same affinity: a rating
head ``mean + b_u + d_i + scale * p_u . q_i`` is fitted on the stars at the same time, and a
product's score is the log-probability of being chosen at the request time *and* rated
at least ``min_rating``.

The model keeps one factor row per user it was trained on (like ALS models): users who arrive
after training get no factor score until the next training, while the blend's other signals
(EASE over the history, content) react to their events at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.events import EVENT_TYPES
from core.recommend.data import F32, EventArrays

UNKNOWN_ITEM = -1e9
"""Choice bias of products the model never saw (serving): probability 0, no NaN."""


@dataclass(frozen=True)
class FactorConfig:
    """Fitting settings, chosen on inner validation splits of the synthetic development data
    (seeds 0 and 1): 16 factors with this penalty beat 8, 24, 32 and 64 with weaker or stronger
    ones, and 10 or 30 epochs. (Leaving the user's other products out of each choice's softmax
    made the choice model alone better there but the tuned blend worse, so it is not done.)"""

    dim: int = 16
    reg: float = 3e-3  # times dim, on the squared norms of the batch's user and item factors
    epochs: int = 20
    lr: float = 0.01
    batch: int = 1024
    tau_days: float = 7.0
    seed: int = 0


@dataclass(frozen=True)
class FactorModel:
    """Fitted factors; ``users`` (ids) gives the rows of ``p`` and ``user_bias``, ``q`` and the
    item arrays follow the item order of the data it was fitted on (or of a snapshot, see
    :meth:`reindexed`)."""

    users: list[str]
    p: F32
    user_bias: F32
    q: F32
    choice_bias: F32
    item_bias: F32
    mean: float
    scale: float
    tau_days: float
    like_at: float  # stars from which a rating counts as liked (NaN: no rating head)

    @property
    def rated(self) -> bool:
        return not math.isnan(self.like_at)

    def row_of(self) -> dict[str, int]:
        return {u: k for k, u in enumerate(self.users)}

    def scores(self, rows: npt.NDArray[np.int64], log_trend: F32 | None) -> F32:
        """``exp(logit - max logit)`` per user row (users x items, each row's best is 1);
        ``rows`` index :attr:`users`, -1 (unknown user) gives a zero row. ``log_trend`` is the
        log of the trend as of each request time (rows x items), or None."""
        known = rows >= 0
        out = np.zeros((len(rows), len(self.choice_bias)), dtype=np.float32)
        if not known.any() or not len(self.choice_bias):
            return out
        r = rows[known]
        aff = self.p[r] @ self.q.T
        logit = aff + self.choice_bias[None, :]
        if log_trend is not None:
            logit += log_trend[known]
        if self.rated:
            stars = self.mean + self.user_bias[r, None] + self.item_bias[None, :] + self.scale * aff
            # log sigmoid(2 (stars - like_at + 0.5)), computed stably
            z = 2.0 * (stars - self.like_at + 0.5)
            logit += np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))
        best = logit.max(axis=1, keepdims=True)
        # Rows whose best product is one the model never saw (a catalog it has no product of) stay 0.
        out[known] = np.where(best > UNKNOWN_ITEM / 2, np.exp(logit - best), 0.0)
        return out

    def reindexed(self, to_new: npt.NDArray[np.int64], n: int) -> FactorModel:
        """The model over another item order: ``to_new[i]`` is item ``i``'s new index (-1:
        dropped); new items it never saw get zero factors and probability 0."""
        keep = np.flatnonzero(to_new >= 0)
        q = np.zeros((n, self.q.shape[1]), dtype=np.float32)
        c = np.full(n, UNKNOWN_ITEM, dtype=np.float32)
        d = np.zeros(n, dtype=np.float32)
        q[to_new[keep]] = self.q[keep]
        c[to_new[keep]] = self.choice_bias[keep]
        d[to_new[keep]] = self.item_bias[keep]
        return FactorModel(
            self.users, self.p, self.user_bias, q, c, d, self.mean, self.scale, self.tau_days, self.like_at
        )


def fit_factors(
    ev: EventArrays, trend_by_day: F32, day: npt.NDArray[np.int64], *, min_rating: float, config: FactorConfig
) -> FactorModel:
    """Fit on ``ev``; ``trend_by_day`` (days x items) is the trend as of each day and ``day``
    each event's row in it. Deterministic, and independent of how users and products were
    numbered: events, factor rows and softmax columns are taken in id order."""
    import torch

    n_users, n_items = len(ev.users), len(ev.items)
    # Only users with events get factors to fit (in id order): users listed without any event
    # (e.g. ones whose events all lie after an evaluation cutoff) must not shift the random
    # initialisation, or the same events would train another model. Their rows stay zero.
    active = np.unique(ev.user).astype(np.int64)
    by_id = active[np.argsort(np.asarray(ev.users, dtype=object)[active], kind="stable")]
    id_rank = np.zeros(n_users, dtype=np.int64)
    id_rank[by_id] = np.arange(len(by_id))
    n_fit = len(by_id)
    items_by_id = np.argsort(np.asarray(ev.items, dtype=object), kind="stable")
    item_rank = np.empty(n_items, dtype=np.int64)
    item_rank[items_by_id] = np.arange(n_items)
    order = np.lexsort((item_rank[ev.item], ev.ts, id_rank[ev.user]))  # canonical event order
    gen = torch.Generator().manual_seed(config.seed)
    u = torch.from_numpy(id_rank[ev.user][order])
    i = torch.from_numpy(item_rank[ev.item][order])
    d = torch.from_numpy(day[order])
    offset = torch.from_numpy(np.log(np.maximum(trend_by_day[:, items_by_id], 1e-6)).astype(np.float32))
    is_rating = (ev.etype == EVENT_TYPES.index("rating")) & ~np.isnan(ev.value)
    rated = bool(is_rating.any())
    r_mask = torch.from_numpy(is_rating[order])
    stars = torch.from_numpy(np.nan_to_num(ev.value[order], nan=0.0).astype(np.float32))
    mean0 = float(ev.value[is_rating].mean()) if rated else 0.0

    k = config.dim
    p = torch.nn.Parameter(0.01 * torch.randn(n_fit, k, generator=gen))
    q = torch.nn.Parameter(0.01 * torch.randn(n_items, k, generator=gen))
    c = torch.nn.Parameter(torch.zeros(n_items))
    bu = torch.nn.Parameter(torch.zeros(n_fit))
    bi = torch.nn.Parameter(torch.zeros(n_items))
    mean = torch.nn.Parameter(torch.tensor(mean0))
    scale = torch.nn.Parameter(torch.tensor(1.0))
    params = [p, q, c, bu, bi, mean, scale]
    opt = torch.optim.Adam(params, lr=config.lr)
    n = len(order)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # gradient scatter-adds in a fixed order: same data, same model
    try:
        for _ in range(config.epochs if n else 0):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch):
                idx = perm[start : start + config.batch]
                uu, ii = u[idx], i[idx]
                pu = p[uu]
                logits = pu @ q.T + c + offset[d[idx]]
                loss = torch.nn.functional.cross_entropy(logits, ii)
                qi = q[ii]
                loss = loss + config.reg * k * ((pu * pu).sum(1).mean() + (qi * qi).sum(1).mean())
                if rated:
                    m = r_mask[idx]
                    if bool(m.any()):
                        pred = mean + bu[uu[m]] + bi[ii[m]] + scale * (pu[m] * qi[m]).sum(1)
                        loss = loss + ((pred - stars[idx][m]) ** 2).mean()
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
    finally:
        torch.use_deterministic_algorithms(deterministic)

    def out(t: torch.Tensor, rows: npt.NDArray[np.int64] | None = None) -> F32:
        a: F32 = t.detach().numpy().astype(np.float32)
        return a if rows is None else a[rows]

    # The user numbered r in ev has fitted row id_rank[r] (users with events), the product numbered j row item_rank[j].
    return FactorModel(
        list(ev.users),
        _user_rows(out(p), active, id_rank, n_users),
        _user_rows(out(bu), active, id_rank, n_users),
        out(q, item_rank),
        out(c, item_rank),
        out(bi, item_rank),
        float(mean.detach()),
        float(scale.detach()),
        config.tau_days,
        float(min_rating) if rated else math.nan,
    )


def _user_rows(fitted: F32, active: npt.NDArray[np.int64], id_rank: npt.NDArray[np.int64], n_users: int) -> F32:
    """Fitted per-user rows (active users in id order) as rows of every user of the data, zero
    for users without events."""
    out: F32 = np.zeros((n_users, *fitted.shape[1:]), dtype=np.float32)
    out[active] = fitted[id_rank[active]]
    return out


__all__ = ["FactorConfig", "FactorModel", "fit_factors"]
