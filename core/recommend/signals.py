"""The signals recommenders are built from: history weights, EASE, item-kNN, the low-rank
projection, popularity over time and content similarity, plus the helpers that pick products.

Everything here works on the integer codes of :mod:`core.recommend.data`; the hybrid
(:mod:`core.recommend.hybrid`) and the baselines (:mod:`core.recommend.baselines`) combine them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from core.events import EVENT_TYPES
from core.recommend.data import F32, F64, I32, EventArrays, Interactions, aggregate, positives

DAY = 86400.0

MAX_RANK = 64
"""The largest ``rank`` the collaborative projection may have (one SVD per EASE fit serves all)."""

ACTIVITY_HALF_LIFE_DAYS = 30.0
"""How fast an event's weight in :func:`active_items` fades (before the data's last event)."""
ROW_CACHE = 64
"""One-row popularity / trend results kept per :class:`TimePopularity` (each is ``items`` floats)."""
TREND_PRIOR_EVENTS = 5.0
"""Pseudo-events that pull an item's trend factor towards 1 (items with few events stay neutral)."""
ITEM_PRIOR_EVENTS = 5.0
"""Pseudo-events that pull an item's mean stars and positive share towards the catalog's."""


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
