"""Recommendation models: popularity, item-kNN, EASE, and our hybrid.

The hybrid scores item ``i`` for user ``u`` at request time ``t`` as

    s(u, i) = (cf(u, i) / max cf(u) + beta * pop_t(i) / max pop_t + gamma * content(u, i) / max content(u)
               + eta * choice_t(u, i)) scaled by trend_t(i) ** trend

- ``cf``: EASE (Steck 2019) item-item weights ``B`` applied to the user's history vector, where
  each past item counts ``strength ** alpha * 0.5 ** (rank / half_life)`` (purchase > cart >
  click > view, ratings by stars; ``rank`` 0 = most recent item), shrunk towards the fit's
  low-rank core (``shrink``, ``rank``);
- ``pop_t``: item popularity as of ``t`` (events up to ``t`` in a one-sided exponential kernel of
  width ``tau_days``);
- ``content``: cosine between each item's fused embedding and the user's recency-weighted
  profile of embeddings, which reaches new products nobody interacted with yet;
- ``choice_t``: the time-aware choice model of :mod:`core.recommend.factors` (user and item
  factors learned from what was chosen when, with a rating head): the probability that the user
  chooses the item as of ``t`` and likes it, relative to their most likely item;
- ``trend_t``: how much more an item is chosen just before ``t`` than its history up to ``t``
  predicts (:meth:`TimePopularity.trend`), a multiplier.

Every time signal is anchored at the request (serving: now or ``as_of``; evaluation: the cutoff)
and sees only events before it. All hyper-parameters are chosen by :func:`tune_hybrid` on a split
*inside* the training data of the same kind as the evaluation's (by default one time cutoff),
never on held-out data. On the same split :func:`fit_reranker` fits a :class:`Reranker`, a
logistic model that reorders each user's best candidates from :data:`RERANK_FEATURES`; it is
kept only when it beats the blend on users it was not fitted on. :data:`SIGNALS` names what the
ablation (``python -m local evaluate --ablation``) turns off one at a time.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from core.events import EVENT_TYPES
from core.recommend.data import (
    F32,
    F64,
    I32,
    EventArrays,
    Interactions,
    aggregate,
    global_split,
    positives,
    time_split,
)
from core.recommend.factors import FactorConfig, FactorModel, fit_factors

DAY = 86400.0
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
MAX_RANK = 64
"""The largest ``rank`` the collaborative projection may have (one SVD per EASE fit serves all)."""
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
products, the most active lately (:func:`active_items`): EASE's dense products x products matrices
grow with the square (see :func:`ease_bytes`). The other products are reached by content and
popularity. ``RECS_MAX_ITEMS`` sets it for ``local train``."""
ACTIVITY_HALF_LIFE_DAYS = 30.0
"""How fast an event's weight in :func:`active_items` fades (before the data's last event)."""
ROW_CACHE = 64
"""One-row popularity / trend results kept per :class:`TimePopularity` (each is ``items`` floats)."""
TREND_PRIOR_EVENTS = 5.0
"""Pseudo-events that pull an item's trend factor towards 1 (items with few events stay neutral)."""
ITEM_PRIOR_EVENTS = 5.0
"""Pseudo-events that pull an item's mean stars and positive share towards the catalog's."""
RERANK_CANDIDATES = 100
"""How many of the hybrid's best products per user the reranker reorders."""
RERANK_MIN_POSITIVES = 50
"""Fewer positives among the validation candidates than this: no reranker (nothing to learn from)."""
RerankMode = Literal["auto", "always", "off"]
"""``auto``: keep the reranker only when the two-fold check says it beats the blend; ``always``:
keep it whenever it can be fitted (the check is still run and reported); ``off``: never fit one."""

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


def history_matrix(inter: Interactions, alpha: float, half_life: float, rows: I32 | None = None) -> sp.csr_matrix:
    """Users x items matrix of history weights ``strength**alpha * 0.5**(rank/half_life)``."""
    w = history_weights(inter.strength, inter.rank, alpha, half_life)
    m = sp.csr_matrix((w, (inter.user, inter.item)), shape=(inter.n_users, inter.n_items))
    return m if rows is None else m[rows]


def history_weights(strength: F32, rank: I32, alpha: float, half_life: float) -> F32:
    """History weights ``strength**alpha * 0.5**(rank/half_life)`` (``rank`` 0 = most recent)."""
    w = np.power(strength.astype(np.float64), alpha)
    if math.isfinite(half_life):
        w = w * np.power(0.5, rank / half_life)
    out: F32 = w.astype(np.float32)
    return out


def _row_entries(m: sp.csr_matrix, rows: I32) -> tuple[I32, I32, F32]:
    """The stored entries of ``m[rows]`` straight from the CSR arrays: (position in ``rows``,
    column, value) per entry, no scipy matrix built (the one-user query path)."""
    starts = m.indptr[rows]
    lens = m.indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(total)
    return np.repeat(np.arange(len(rows), dtype=np.int32), lens), m.indices[offsets], m.data[offsets]


def weighted_rows(m: sp.csr_matrix, rows: I32, w: F32) -> F32:
    """``sum_r w[r] * m[rows[r]]`` as a dense vector (one user's history applied to ``m``)."""
    pos, cols, vals = _row_entries(m, rows)
    out: F32 = np.bincount(cols, weights=vals * w[pos], minlength=m.shape[1]).astype(np.float32)
    return out


def block(m: sp.csr_matrix, rows: I32, cols: list[int]) -> F32:
    """``m[rows][:, cols]`` as a small dense array (``cols`` distinct)."""
    out: F32 = np.zeros((len(rows), len(cols)), np.float32)
    if not cols:
        return out
    pos, c, v = _row_entries(m, rows)
    where = np.full(m.shape[1], -1, dtype=np.int64)  # column -> its position in `cols`
    where[np.asarray(cols, dtype=np.int64)] = np.arange(len(cols))
    at = where[c]
    keep = at >= 0
    if keep.any():
        np.add.at(out, (pos[keep], at[keep]), v[keep])
    return out


def _max_normalise(v: F32) -> F32:
    mx = float(v.max(initial=0.0))
    return v / mx if mx > 0 else v


def binary_matrix(inter: Interactions) -> sp.csr_matrix:
    ones = np.ones(len(inter.user), dtype=np.float32)
    return sp.csr_matrix((ones, (inter.user, inter.item)), shape=(inter.n_users, inter.n_items))


def fit_ease(x: sp.csr_matrix, lam: float, y: sp.csr_matrix | None = None, rho: float = 0.0) -> F32:
    """EASE (Steck 2019): ``min ||Y - XB||^2 + lam ||B||^2`` subject to ``diag(B) = 0``.

    With ``Y = X`` this is the classic closed form ``B = I - P diagMat(1/diag(P))``,
    ``P = (X'X + lam I)^-1``. With ``rho > 0`` the target mixes in ``y``, the *positive*
    interactions (``Y = (1 - rho) X + rho y``): the input is everything the user did, the output
    what they will like. The general solution is ``B = P X'Y - P diagMat(diag(P X'Y) / diag(P))``.
    """
    return _mix(ease_pair(x, lam, y if rho else None), rho, inplace=True)  # B is linear in the target Y


def ease_pair(x: sp.csr_matrix, lam: float, y: sp.csr_matrix | None) -> tuple[F32, F32 | None]:
    """EASE weights for target ``X`` and (when ``y`` is given) for target ``y``, from one
    inversion. float64 up to 4,000 items, float32 above (memory and time; lam >= 30 keeps the
    system well conditioned). At most three ``items x items`` matrices live at once (the
    inversion is done in place; see :func:`ease_bytes`)."""
    import scipy.linalg

    dtype = np.float64 if x.shape[1] <= 4000 else np.float32
    g: npt.NDArray[np.floating[Any]] = np.asarray((x.T @ x).toarray(), dtype=dtype)
    g[np.diag_indices_from(g)] += lam
    p: npt.NDArray[np.floating[Any]] = scipy.linalg.inv(g, overwrite_a=True, check_finite=False)
    del g
    d = np.diag(p).copy()
    r = None
    if y is not None:
        xty: npt.NDArray[np.floating[Any]] = np.asarray((x.T @ y).toarray(), dtype=dtype)
        r = p @ xty
        del xty
        scale: npt.NDArray[np.floating[Any]] = (np.diag(r) / d).astype(dtype)
        for start in range(0, len(r), 1024):  # r -= p * scale, a block of rows at a time
            r[start : start + 1024] -= p[start : start + 1024] * scale[None, :]
        r[np.diag_indices_from(r)] = 0.0
    p /= -d[None, :]  # B = I - P diagMat(1 / diag(P)), in place of P
    p[np.diag_indices_from(p)] = 0.0
    return p.astype(np.float32, copy=False), None if r is None else r.astype(np.float32, copy=False)


def fit_projection(x: sp.csr_matrix, b: F32, rank: int, *, iterations: int = 4, seed: int = 0) -> F32:
    """The ``rank`` leading right singular vectors (items x rank, orthonormal columns) of the
    fitted scores ``X B``: the item directions that carry most of what the collaborative model
    predicts for the training users. Randomised subspace iteration (Halko, Martinsson & Tropp
    2011) on ``B' (X'X) B``, whose eigenvectors these are: the users x items matrix is never
    formed, and ``X'X`` holds exact co-occurrence counts, so the result does not depend on the
    order in which users' events arrived (the model trained from the API equals the offline one)."""
    n = b.shape[1]
    rank = max(1, min(rank, n, x.shape[0]))
    # One sketch width for every rank up to MAX_RANK, so the first ``rank`` directions are the same
    # whichever rank is asked for (tuning slices one MAX_RANK fit; training asks for the tuned rank).
    width = min(n, max(rank, MAX_RANK) + 10)
    gram = sp.csr_matrix(x.T @ x, dtype=b.dtype)
    gram.sort_indices()  # the same summation order, however the users were ordered

    def orth(m: npt.NDArray[Any]) -> npt.NDArray[Any]:
        q, _r = np.linalg.qr(m)
        return q

    q = orth(np.random.default_rng(seed).standard_normal((n, width)).astype(b.dtype))
    for _ in range(iterations):
        q = orth(b.T @ np.asarray(gram @ (b @ q)))
    bq = b @ q
    small = bq.T @ np.asarray(gram @ bq)  # width x width: q' B' X'X B q
    values, vectors = np.linalg.eigh((small + small.T) / 2)
    out: F32 = (q @ vectors[:, np.argsort(-values)[:rank]]).astype(np.float32)
    return out


def _mix(pair: tuple[F32, F32 | None], rho: float, *, inplace: bool = False) -> F32:
    """The EASE weights for target ``(1 - rho) X + rho Y`` from :func:`ease_pair`'s two
    (``inplace``: overwriting them, no temporary ``items x items`` matrix)."""
    b_all, b_pos = pair
    if b_pos is None or rho == 0:
        return b_all
    if inplace:
        b_all *= 1.0 - rho
        b_pos *= rho
        b_all += b_pos
        return b_all
    out: F32 = (1.0 - rho) * b_all + rho * b_pos
    return out


def restrict_items(ev: EventArrays, keep: I32 | npt.NDArray[np.int64]) -> EventArrays:
    """Only events on items ``keep`` (indices into ``ev.items``), re-coded onto that subset."""
    code = np.full(len(ev.items), -1, dtype=np.int32)
    code[keep] = np.arange(len(keep), dtype=np.int32)
    sub = ev.take(code[ev.item] >= 0)
    return EventArrays(
        sub.users, [ev.items[i] for i in keep], sub.user, code[sub.item], sub.etype, sub.value, sub.ts, sub.seq
    )


def active_items(ev: EventArrays, limit: int) -> npt.NDArray[np.int64]:
    """The ``limit`` items with the most events, each weighted by ``0.5 ** (age / 30 days)`` (age
    before the data's last event): what shoppers touch now, not what they touched years ago.
    Sorted indices into ``ev.items``; all of them when there are no more than ``limit``."""
    n = len(ev.items)
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    age_days = (float(ev.ts.max()) - ev.ts) / DAY if len(ev) else np.zeros(0)
    weight = np.bincount(ev.item, weights=np.power(0.5, age_days / ACTIVITY_HALF_LIFE_DAYS), minlength=n)
    # Ties (items without events) by position: the same data always keeps the same items.
    return np.sort(np.argsort(-weight, kind="stable")[:limit]).astype(np.int64)


def ease_bytes(n_items: int) -> int:
    """Peak memory of :func:`fit_ease` over ``n_items`` products: three dense ``n x n`` matrices
    (float64 up to 4,000 products, float32 above)."""
    return 3 * n_items * n_items * (8 if n_items <= 4000 else 4)


def positive_matrix(ev: EventArrays, min_rating: float, types: Sequence[str]) -> sp.csr_matrix:
    """Users x items, 1 where the user had a positive event (rating >= ``min_rating``, or a
    ``types`` event) with the item."""
    pos = aggregate(positives(ev, min_rating, types))
    return binary_matrix(pos)


def fit_itemknn(x: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Cosine item-item similarity, each item keeping its ``k`` nearest neighbours."""
    xt = sp.csc_matrix(x)
    norms = np.sqrt(np.asarray(xt.multiply(xt).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    sim = (xt.T @ xt).toarray() / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    return prune_rows(sim.astype(np.float32), k)


def prune_rows(dense: F32, k: int, rows_per_block: int = 1024) -> sp.csr_matrix:
    """Keep the ``k`` largest-magnitude entries of each row (sparse ``B`` for serving), a block of
    rows at a time (no temporary as large as ``dense``)."""
    n = dense.shape[0]
    if k >= dense.shape[1]:
        return sp.csr_matrix(dense)
    cols, vals = [], []
    for start in range(0, n, rows_per_block):
        part = dense[start : start + rows_per_block]
        idx = np.argpartition(-np.abs(part), k - 1, axis=1)[:, :k]
        cols.append(idx)
        vals.append(np.take_along_axis(part, idx, axis=1))
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    out = sp.csr_matrix((np.concatenate(vals).ravel(), np.concatenate(cols).ravel(), indptr), shape=dense.shape)
    out.sort_indices()
    return out


class TimePopularity:
    """Daily event counts per item; :meth:`at` is popularity as of given request times: counts of
    the days up to the request's weighted by ``exp(-(day_t - day) / tau_days)``. The kernel is
    one-sided: nothing from after a request time counts for it (to the day), so a model trained
    on the past and asked about "now" sees what a shop would see then."""

    def __init__(self, ev: EventArrays, n_items: int) -> None:
        self.n_items = n_items
        self.global_counts: F32 = np.bincount(ev.item, minlength=n_items).astype(np.float32)
        self.day0 = float(np.floor(ev.ts.min() / DAY)) if len(ev) else 0.0
        day = (np.floor(ev.ts / DAY) - self.day0).astype(np.int64) if len(ev) else np.zeros(0, np.int64)
        self.n_days = int(day.max()) + 1 if len(ev) else 1
        self.latest_ts = float(ev.ts.max()) if len(ev) else math.nan
        # One-row (query path) results per (day, ...): bounded, a busy process sees many days.
        self._rows: dict[tuple[float, ...], F32] = {}
        # items x days, sparse: memory follows the number of events, not days x items.
        self.hist = sp.csr_matrix((np.ones(len(ev), dtype=np.float32), (ev.item, day)), shape=(n_items, self.n_days))
        self.day_totals = np.bincount(day, minlength=self.n_days).astype(np.float64)
        # Per item, for the reranker: first and last day with an event (items without events: the
        # day after the last), mean stars and share of positive events, both pulled towards the
        # catalog's average by ITEM_PRIOR_EVENTS pseudo-events.
        self.first_day = np.full(n_items, self.n_days, np.int64)
        self.last_day = np.full(n_items, self.n_days, np.int64)
        if len(ev):
            np.minimum.at(self.first_day, ev.item, day)
            self.last_day[:] = -1
            np.maximum.at(self.last_day, ev.item, day)
            self.last_day[self.last_day < 0] = self.n_days
        is_rating = (ev.etype == EVENT_TYPES.index("rating")) & ~np.isnan(ev.value)
        stars = np.bincount(ev.item[is_rating], weights=ev.value[is_rating], minlength=n_items)
        n_rated = np.bincount(ev.item[is_rating], minlength=n_items).astype(np.float64)
        mean_stars = float(ev.value[is_rating].mean()) if is_rating.any() else 3.0
        self.mean_stars = ((stars + ITEM_PRIOR_EVENTS * mean_stars) / (n_rated + ITEM_PRIOR_EVENTS)).astype(np.float32)
        good = (ev.etype == EVENT_TYPES.index("purchase")) | (is_rating & (np.nan_to_num(ev.value) >= 4.0))
        share = float(good.mean()) if len(ev) else 0.0
        n_good = np.bincount(ev.item[good], minlength=n_items)
        self.positive_share = ((n_good + ITEM_PRIOR_EVENTS * share) / (self.global_counts + ITEM_PRIOR_EVENTS)).astype(
            np.float32
        )

    def _cached_row(self, key: tuple[float, ...], make: Callable[[], F32]) -> F32:
        if key not in self._rows:
            if len(self._rows) >= ROW_CACHE:
                self._rows.clear()
            self._rows[key] = make()
        return self._rows[key]

    def _kernel(self, days: npt.NDArray[np.int64], tau_days: float) -> F32:
        """``n_days x len(days)`` weights of each data day for requests on ``days``:
        ``exp(-(days[j] - day) / tau_days)`` for the days up to ``days[j]``, 0 after it
        (``tau_days >= 1e5``: 1, every day up to it)."""
        lag = days[None, :] - np.arange(self.n_days)[:, None]
        w = np.ones(lag.shape) if tau_days >= 1e5 else np.exp(-np.maximum(lag, 0) / tau_days)
        out: F32 = np.where(lag >= 0, w, 0.0).astype(np.float32)
        return out

    def _days(self, t: F64) -> npt.NDArray[np.int64]:
        """The day index of each time (days after the data's last day are past ``n_days``)."""
        day = np.where(np.isnan(t), self.n_days - 1, np.floor(np.nan_to_num(t) / DAY) - self.day0)
        out: npt.NDArray[np.int64] = np.maximum(day, -1).astype(np.int64)
        return out

    def trend(self, t: F64, tau_days: float, power: float = 1.0) -> F32:
        """How much more (> 1) or less (< 1) each item is chosen just before times ``t`` than its
        history up to then predicts: ``(pop_t + c) / (expected_t + c)``, where ``pop_t`` is
        :meth:`at`, ``expected_t`` the item's count up to ``t`` times the share of *all* events up
        to ``t`` that fall in the same kernel (busy and quiet periods cancel out), and ``c`` =
        :data:`TREND_PRIOR_EVENTS`. New releases and hyped items rise, ageing ones fade: a
        multiplicative effect on what users choose, which an additive popularity term expresses
        badly. Rows are ``len(t) x items``, raised to ``power``; one row (the query path) is cached
        per day, width and power."""
        if len(t) == 1:
            key = (float(self._days(t)[0]), tau_days, power)
            return self._cached_row(key, lambda: np.power(self._trend(t, tau_days), power, dtype=np.float32))
        out: F32 = np.power(self._trend(t, tau_days), power, dtype=np.float32)
        return out

    def _trend(self, t: F64, tau_days: float) -> F32:
        uniq, inv = np.unique(self._days(t), return_inverse=True)
        kernel = self._kernel(uniq, tau_days)
        upto = self._kernel(uniq, 1e6)
        pop = np.asarray(self.hist @ kernel, dtype=np.float64)  # items x unique days
        counts = np.asarray(self.hist @ upto, dtype=np.float64)
        share = (self.day_totals @ kernel) / np.maximum(self.day_totals @ upto, 1.0)
        expected = counts * share[None, :]
        out: F32 = ((pop + TREND_PRIOR_EVENTS) / (expected + TREND_PRIOR_EVENTS)).astype(np.float32)
        return out.T[inv.ravel()]

    def recent(self, t: F64, days: float) -> F32:
        """Event counts per item in the ``days`` days up to each time ``t`` (the request's day
        included): "popular lately" (len(t) x items)."""
        uniq, inv = np.unique(self._days(t), return_inverse=True)
        lag = uniq[None, :] - np.arange(self.n_days)[:, None]
        window = ((lag >= 0) & (lag < days)).astype(np.float32)
        out: F32 = np.asarray(self.hist @ window, dtype=np.float32).T[inv.ravel()]
        return out

    def at(self, t: F64, tau_days: float) -> F32:
        """Popularity rows (len(t) x items) as of epoch times ``t`` (NaN: the data's last day)."""
        if len(t) == 0:
            return np.zeros((0, self.n_items), np.float32)
        day = self._days(t)
        if len(day) == 1:  # the query path: one row, cached per (day, width)
            return self._cached_row(
                (float(day[0]), tau_days), lambda: np.asarray(self.hist @ self._kernel(day, tau_days), np.float32).T
            )
        uniq, inv = np.unique(day, return_inverse=True)
        per_day = np.asarray(self.hist @ self._kernel(uniq, tau_days), dtype=np.float32)  # items x unique days
        return per_day.T[inv.ravel()]


def _apply(hist: sp.csr_matrix, weights: Any) -> F32:
    """``hist @ weights`` as a dense array (the batch path; one user's query path is
    :func:`weighted_rows`)."""
    prod = hist @ weights
    out: F32 = np.asarray(prod.toarray() if sp.issparse(prod) else prod, dtype=np.float32)
    return out


def _row_max_normalise(m: F32) -> F32:
    mx = m.max(axis=1, keepdims=True)
    mx[mx <= 0] = 1.0
    out: F32 = m / mx
    return out


def boost(total: F32, factor: F32 | None) -> F32:
    """``total`` scaled by a positive per-item ``factor``: multiplied where the score is positive,
    divided where it is negative, so a factor above 1 always moves an item up."""
    if factor is None:
        return total
    out: F32 = np.where(total > 0, total * factor, total / factor).astype(np.float32)
    return out


def content_scores(hist: sp.csr_matrix, vectors: F32) -> F32:
    """Cosine of each item with the user's weighted profile of item embeddings."""
    profile = np.asarray(hist @ vectors, dtype=np.float32)
    norms = np.linalg.norm(profile, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: F32 = (profile / norms) @ vectors.T
    return out


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
    ranks it highly will like it. Fitted by :func:`fit_reranker` on the same split inside the
    training data that tunes the blend; the score it gives is that probability."""

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
    b: Any  # items x items EASE weights: csr (served) or dense (while tuning)
    params: HybridParams
    info: dict[str, Any] = field(default_factory=dict)
    reranker: Reranker | None = None
    v: F32 | None = None  # items x rank: the directions the collaborative scores are shrunk towards
    f: FactorModel | None = None  # the time-aware choice model (users it was trained on x items)

    def project(self, cf: F32) -> F32:
        """Collaborative scores (one row or users x items) with the part outside the model's
        low-rank subspace shrunk by ``params.shrink``: ``(1 - s) cf + s cf V V'``. Estimating a
        user's taste from a few dozen events is noisy; the subspace holds what many users share."""
        if self.v is None or self.params.shrink <= 0:
            return cf
        s = self.params.shrink
        out: F32 = ((1.0 - s) * cf + s * ((cf @ self.v) @ self.v.T)).astype(np.float32)
        return out

    def collaborative_block(self, rows: I32, cols: list[int]) -> F32:
        """Per history item ``rows`` (one row each), its part of the collaborative score of the
        products ``cols``, so that summing over ``rows`` with the history weights gives the
        (unnormalised) collaborative score: what reasons are made from."""
        direct = block(self.b, rows, cols)
        if self.v is None or self.params.shrink <= 0:
            return direct
        s = self.params.shrink
        via = np.asarray(self.b[rows] @ self.v) @ self.v[cols].T
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
        parts = {"collaborative": p.cf * _row_max_normalise(self.project(_apply(hist, self.b)))}
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
        """``eta`` times the choice model's scores for rows ``users`` of :attr:`f` (-1: a user it
        has no row for, zeros) as of the request times ``t_query``; None when the signal is off."""
        f = self.f
        if self.params.eta <= 0 or f is None or pop is None:
            return None
        log_trend = np.log(np.maximum(pop.trend(t_query, f.tau_days), 1e-6)).astype(np.float32)
        out: F32 = (self.params.eta * f.scores(users, log_trend)).astype(np.float32)
        return out

    def trend_factor(self, t_query: F64, pop: TimePopularity | None) -> F32 | None:
        """``TimePopularity.trend ** trend`` for requests at ``t_query`` (rows), or None
        when the trend signal is off: the multiplier :func:`boost` applies to the summed score."""
        p = self.params
        if p.trend <= 0 or pop is None:
            return None
        return pop.trend(t_query, p.trend_tau_days, p.trend)


def top_k(scores: F32, k: int, exclude: sp.csr_matrix | None = None) -> I32:
    """Indices of the ``k`` best items per row, best first, skipping ``exclude``'s nonzeros."""
    s = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None:
        ex = exclude.tocoo()
        s[ex.row, ex.col] = -np.inf
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int32)


@dataclass(frozen=True)
class Metrics:
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


def ranking_metrics(recs: I32, relevant: sp.csr_matrix, n_items: int, k: int = 10) -> Metrics:
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
        return Metrics(0.0, 0.0, cov, 0)
    n_hits = hits.sum(axis=1)[ok]
    return Metrics(
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


def evaluate_scores(split: Split, score: ScoreFn, k: int = 10, batch: int = 2048) -> Metrics:
    """Metrics of a scoring function on ``split`` (train items excluded from the candidates)."""
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
    start: HybridParams = HybridParams(),
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
        b = _mix(pairs[p.lam], p.rho)
        v = None
        if p.shrink > 0:
            if (p.lam, p.rho) not in projections:  # one SVD per EASE fit serves every rank
                projections[(p.lam, p.rho)] = fit_projection(x, b, MAX_RANK)
            v = projections[(p.lam, p.rho)][:, : p.rank]
        return HybridModel(ev.items, b, p, v=v, f=None if factors is None else factors[0])

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
    """Fit a :class:`Reranker` on ``split``: each user's ``candidates`` best products by
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
    of ``ev``; ``rerank`` says when the tuned blend gets a :class:`Reranker` (see
    :data:`RerankMode`); ``off`` names :data:`SIGNALS` left out (to measure what they are worth).
    Over more than ``max_items`` products the model covers the :func:`active_items` only."""
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
    v = fit_projection(x, dense, params.rank) if params.shrink > 0 else None
    b = prune_rows(dense, params.neighbors)
    del dense
    f = None
    if params.eta > 0:
        f, info["factor_seconds"] = factors_for(ev, TimePopularity(ev, len(ev.items)), min_rating)
    info.update(train_seconds=time.perf_counter() - t0, events=len(ev), users=len(ev.users), items=len(ev.items))
    return HybridModel(list(ev.items), b, params, info, reranker, v, f)


def on_items(model: HybridModel, items: Sequence[str], index: Mapping[str, int] | None = None) -> HybridModel:
    """``model`` over the products ``items`` (``index``: each id's position in them, built when not
    given): products it did not cover get no collaborative or choice-model score, and products of
    the model that ``items`` lacks drop out. Query processes map a model onto their catalog
    snapshot with it; offline scoring maps a bounded model (``max_items`` of
    :func:`train_hybrid`) onto the whole catalog."""
    if list(model.items) == list(items):
        return model
    index = {it: k for k, it in enumerate(items)} if index is None else index
    to_new = np.array([index.get(i, -1) for i in model.items], dtype=np.int64)  # the one Python pass
    n = len(items)
    keep = np.flatnonzero(to_new >= 0)
    # model items x new items, 1 where they are the same product: sel.T @ m re-indexes rows.
    sel = sp.csr_matrix((np.ones(len(keep), dtype=np.float32), (keep, to_new[keep])), shape=(len(model.items), n))
    b = (sel.T @ sp.csr_matrix(model.b) @ sel).tocsr()
    v = None if model.v is None else np.asarray(sel.T @ model.v, dtype=np.float32)
    f = None if model.f is None else model.f.reindexed(to_new, n)
    return replace(model, items=list(items), b=b, v=v, f=f)


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
