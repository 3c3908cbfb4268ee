"""The query-side recommender: everything a request needs, in memory, refreshed in the background.

A query process keeps three things warm and swaps each one atomically when it changes:

- a :class:`CatalogSnapshot` (ids, titles, categories, prices and fused embeddings of all
  products), re-read when the products table gets a new version;
- an :class:`~core.recommend.history.EventState`, every event held compactly (numpy columns
  and per-user row lists): events posted to this process apply at once, events written by other
  processes are read incrementally from the ``events`` table (by ``received_at``, de-duplicated
  by ``event_id``);
- the newest trained :class:`HybridModel` from the bucket (``models/recommender/latest.json``),
  so a retrain is picked up without a restart.

A request then costs a few sparse/dense vector operations over the catalog (no storage reads).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from core.catalog import Catalog
from core.errors import InvalidInput, NotFound
from core.events import Event, EventLog
from core.hot import (
    B8,
    MATVEC_ROWS,
    CategoryCodes,
    FusedVectors,
    HotCatalog,
    HotSnapshot,
    filter_mask,
    load_faiss,
    stock_column,
)
from core.merchandising import NO_MERCHANDISING, Merchandising, arrange
from core.recommend.artifact import ModelStore
from core.recommend.data import F32, F64
from core.recommend.history import EventState, HistoryItem
from core.recommend.hybrid import HybridModel, HybridParams, on_items, rerank_features
from core.recommend.signals import TimePopularity, _max_normalise, boost, history_weights, weighted_rows
from core.recommend.together import TogetherCache
from core.types import Filters, Product, Weights

log = logging.getLogger(__name__)

TRENDING_TAU_DAYS = 7.0
# Re-read this much before the newest received_at seen: covers other writers whose commit landed
# after a later-stamped one (duplicates are dropped by event_id).
EVENT_OVERLAP = timedelta(seconds=30)
# After this process writes to the catalog, the refresh thread takes the writes up once no other
# commit came for this long (while commits keep coming, the timed refresh takes them up).
WAKE_SETTLE_SECONDS = 0.2
# Catalogs from this size on score content through a PQ index (CatalogSnapshot.content_candidates):
# that many candidates from it, and as many from the other signals.
CONTENT_ANN_MIN_ROWS = 20_000
CONTENT_CANDIDATES = 1000
PRUNE_EVERY_SECONDS = 3600.0  # how often a query process drops the events that left its window
DAY_SECONDS = 86400.0
CONTENT_NPROBE = 24  # lists of the content index scanned per request (of sqrt(products))
# Without a trained model: content + trending only.
UNTRAINED = HybridParams(beta=0.3, gamma=1.0, half_life=20.0, alpha=1.0, tau_days=TRENDING_TAU_DAYS)
_VERB = {
    "view": "viewed",
    "click": "clicked",
    "add_to_cart": "added to your cart",
    "purchase": "bought",
    "rating": "rated",
}


@dataclass(frozen=True)
class CatalogSnapshot:
    """The catalog as arrays; ``vectors`` are unit-norm fused embeddings (rows of zeros when a
    product has none)."""

    version: int
    products: list[Product]
    index: dict[str, int]
    categories: CategoryCodes
    prices: F64
    vectors: F32 | FusedVectors
    """Row ``k`` is product ``k``'s fused vector: an array (read from the dataset), or, in a query
    process, a :class:`~core.hot.FusedVectors` view that computes rows from the hot catalog's
    arrays (the catalog is held once)."""
    created: F64  # created_at, epoch seconds
    vectors_t: F32 | None = None
    """``vectors.T`` stored contiguously, in snapshots that serve queries (:meth:`serving`) without
    a :attr:`content_index`: one user's scores over every product (``vectors @ profile``) run ~2x
    faster in this layout (measured 1.37 -> 0.70 ms at 10k x 896), while gathering a few rows
    keeps the row-major copy. Costs ``n x dim x 4`` bytes, which training and large catalogs
    (scored through the index; 358 MB at 100k x 896) do not pay."""
    in_stock: npt.NDArray[np.bool_] | None = None
    """Whether each product is in stock (None: all are)."""
    content_index: Any = None
    """In serving snapshots of large catalogs: a faiss IVF index with 4-bit PQ fast-scan codes
    over ``vectors`` (ids = rows), a ~56-byte code per product at 896-d; a request scans the
    codes of the lists nearest its profile (:data:`CONTENT_NPROBE` of ``sqrt(n)`` lists, more
    when a filter asks for more candidates) instead of every product's. See
    :meth:`content_candidates`."""

    @classmethod
    def empty(cls) -> CatalogSnapshot:
        return cls(-1, [], {}, CategoryCodes.empty(), np.zeros(0), np.zeros((0, 1), np.float32), np.zeros(0))

    @classmethod
    def load(cls, catalog: Catalog, weights: Weights) -> CatalogSnapshot:
        """Read the whole catalog from the dataset."""
        version, table = catalog.scan()
        products = catalog.products_from(table)
        text = _matrix(table.column("text_vector"), catalog.text_dim)
        image = _matrix(table.column("image_vector"), catalog.clip_dim) if weights.image > 0 else None
        return cls.build(version, products, image, text, weights)

    @classmethod
    def from_hot(cls, hot: HotSnapshot, weights: Weights) -> CatalogSnapshot:
        """The same snapshot from the query process's hot copy (its live rows): no dataset read,
        and no copy of the vectors (a :class:`~core.hot.FusedVectors` view of the hot arrays)."""
        rows = np.flatnonzero(hot.alive).astype(np.int64)
        products = [hot.products[i] for i in rows]
        return cls(
            hot.version,
            products,
            {p.product_id: i for i, p in enumerate(products)},
            CategoryCodes.of([p.category for p in products]),
            hot.prices[rows],
            FusedVectors.of(hot, rows, weights.image, weights.text),
            np.array([p.created_at.timestamp() for p in products], dtype=np.float64),
            in_stock=None if hot.in_stock is None else stock_column(hot.in_stock[rows]),
        )

    def dense_vectors(self) -> F32:
        """:attr:`vectors` as one array (training and evaluation score with the whole matrix)."""
        if isinstance(self.vectors, FusedVectors):
            return self.vectors[np.arange(len(self))]
        return self.vectors

    @classmethod
    def build(
        cls, version: int, products: list[Product], image: F32 | None, text: F32, weights: Weights
    ) -> CatalogSnapshot:
        """Fused unit vectors (:func:`fuse`) and the filter columns."""
        fused = fuse(image, text, weights)
        return cls(
            version,
            products,
            {p.product_id: i for i, p in enumerate(products)},
            CategoryCodes.of([p.category for p in products]),
            np.array([math.nan if p.price is None else float(p.price) for p in products], dtype=np.float64),
            fused,
            np.array([p.created_at.timestamp() for p in products], dtype=np.float64),
            in_stock=stock_column(np.array([p.in_stock for p in products], dtype=bool)),
        )

    def serving(
        self, ann_min_rows: int = CONTENT_ANN_MIN_ROWS, previous: CatalogSnapshot | None = None
    ) -> CatalogSnapshot:
        """This snapshot for the query path: with :attr:`vectors_t` below ``ann_min_rows``
        products, with :attr:`content_index` from there on. The index's lists and codebooks are
        trained once and reused from ``previous`` when its dimensions match; only the encoding
        of every product is redone."""
        index = None
        if len(self) >= max(ann_min_rows, 1):
            faiss = load_faiss()
            dim = self.vectors.shape[1]
            old = previous.content_index if previous is not None else None
            if old is not None and old.d == dim:
                index = faiss.clone_index(old)
                index.reset()
            else:
                nlist = max(16, int(math.sqrt(len(self))))
                index = faiss.IndexIVFPQFastScan(
                    faiss.IndexFlatIP(dim), dim, nlist, max(1, dim // 8), 4, faiss.METRIC_INNER_PRODUCT
                )
                rng = np.random.default_rng(0)
                sample = rng.choice(len(self), min(len(self), max(20_000, 20 * nlist)), replace=False)
                index.train(np.ascontiguousarray(self.vectors[np.sort(sample)]))
            for start in range(0, len(self), MATVEC_ROWS):  # encoded a block of rows at a time
                block = np.arange(start, min(len(self), start + MATVEC_ROWS))
                index.add_with_ids(np.ascontiguousarray(self.vectors[block]), block.astype(np.int64))
        if index is not None:
            return replace(self, content_index=index)
        return replace(self, vectors_t=np.ascontiguousarray(self.dense_vectors().T))

    def __len__(self) -> int:
        return len(self.products)

    def mask(self, filters: Filters) -> np.ndarray[Any, np.dtype[np.bool_]]:
        if filters.attributes:
            raise InvalidInput("recommendations do not filter on attributes")
        return filter_mask(
            np.ones(len(self), dtype=bool), self.categories, self.prices, filters, self.in_stock, self.index
        )

    def exact_content(self, unit: F32) -> F32:
        """Dot products of ``unit`` with every product's vector, one pass over all of them."""
        exact = unit @ self.vectors_t if self.vectors_t is not None else self.vectors @ unit
        return np.asarray(exact, np.float32)

    def content_candidates(
        self,
        unit: F32,
        allowed: B8,
        extra: npt.NDArray[np.int64] | None = None,
        candidates: int = CONTENT_CANDIDATES,
        always: npt.NDArray[np.integer[Any]] | None = None,
    ) -> tuple[F32, npt.NDArray[np.int64] | None]:
        """Dot products of ``unit`` (a profile in the fused space) with every product's vector.

        Without :attr:`content_index` (small catalogs) one exact pass over all vectors. With it,
        that pass (100k x 896 floats, ~360 MB read) becomes a scan of the 4-bit PQ codes for the
        ``candidates`` best allowed products (``candidates / fraction`` best overall when a
        filter leaves a fraction of the catalog), plus ``extra``, the caller's best by the other
        signals (so whatever they rank high gets its true content score); those get exact dot
        products, every other product 0. Under filters that leave less than ``4 * candidates``
        products, every allowed row gets its exact dot product. ``always`` (the user's own
        products, the positives of "more like these") and the ``candidates`` best by the codes
        are scored whatever the filter, so the caller's max-normalisation sees the maximum the
        exact pass sees. bench.query measures the top-10 agreement with the exact pass.

        Returns the scores and the rows that got exact ones (sorted; None after a full pass). A
        product outside them scores by the other signals alone, no more than each product of
        ``extra``; so the top of ``gamma * content + others`` is taken over these rows only
        (exactly so while those candidates' content scores are not negative)."""
        index = self.content_index
        if index is None:
            return self.exact_content(unit), None
        n = len(self)
        n_allowed = int(allowed.sum())
        # Enough codes scanned to expect ``candidates`` allowed ones among them; past a quarter of
        # the catalog (a filter leaving few products) every allowed row is scored instead.
        k = math.ceil(candidates * n / max(n_allowed, 1))
        selective = 4 * k > n
        k = min(k, candidates) if selective else k
        # Enough lists probed to hold about twice the codes asked for.
        nprobe = min(index.nlist, max(CONTENT_NPROBE, math.ceil(2 * k * index.nlist / n)))
        _, ids = index.search(unit.reshape(1, -1), k, params=load_faiss().SearchParametersIVF(nprobe=nprobe))
        hits = ids[0][ids[0] >= 0]
        # The best ``candidates`` overall are scored whatever the filter (the maximum).
        found = [
            hits[:candidates],
            np.flatnonzero(allowed) if selective else hits[candidates:][allowed[hits[candidates:]]],
        ]
        if always is not None:
            found.append(np.asarray(always, dtype=np.int64))
        if extra is not None:
            found.append(np.asarray(extra, dtype=np.int64))
        rows = _distinct(np.concatenate(found).astype(np.int64))
        out = np.zeros(n, dtype=np.float32)
        v = self.vectors
        out[rows] = v.dot_rows(rows, unit) if isinstance(v, FusedVectors) else v[rows] @ unit
        return out, rows


def fuse(image: F32 | None, text: F32, weights: Weights) -> F32:
    """Unit vectors ``[sqrt(w_image) * image, sqrt(w_text) * text]`` (missing images are zero
    rows; ``image`` None: text only)."""
    parts = [math.sqrt(weights.text) * text]
    if image is not None:
        parts.insert(0, math.sqrt(weights.image) * image)
    fused = np.hstack(parts).astype(np.float32)
    norms = np.linalg.norm(fused, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    fused /= norms
    return fused


def product_vectors(table: pa.Table, catalog: Catalog, weights: Weights) -> F32:
    """Fused vectors of the catalog rows in ``table`` (its ``text_vector`` and ``image_vector``)."""
    text = _matrix(table.column("text_vector"), catalog.text_dim)
    image = _matrix(table.column("image_vector"), catalog.clip_dim) if weights.image > 0 else None
    return fuse(image, text, weights)


def _matrix(col: pa.ChunkedArray, dim: int) -> F32:
    out = np.zeros((len(col), dim), dtype=np.float32)
    arr = col.combine_chunks()
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if valid.any():
        values = arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        out[valid] = values.reshape(-1, dim)
    return out


PINNED_REASON = "Featured by the shop"


@dataclass(frozen=True)
class Recommended:
    product: Product
    score: float
    reason: str


@dataclass(frozen=True)
class RecommendationResult:
    items: list[Recommended]
    strategy: str  # personalized | content | popular | newest


@dataclass(frozen=True)
class PastEvent:
    """One of a shopper's events, as their history shows it (``title`` None: the product is not
    in the catalog, or not yet)."""

    product_id: str
    title: str | None
    event_type: str
    value: float | None
    timestamp: float  # epoch seconds


@dataclass
class _Compiled:
    """The model over the products of one catalog snapshot that it covers, and item popularity
    over the whole snapshot. The model stays in its own item space (``model.items``, at most
    ``RECS_MAX_ITEMS`` products): its collaborative and choice-model scores are computed over
    those only and placed at their snapshot rows (``rows``), not over every product."""

    snapshot_version: int
    source: HybridModel
    model: HybridModel
    rows: npt.NDArray[np.int64]  # snapshot row of each model product
    to_model: npt.NDArray[np.int32]  # per snapshot row: its model product, -1 outside the model
    popularity: TimePopularity
    pop_generation: int
    age_rank: F64 = field(default_factory=lambda: np.zeros(0))  # 0 = the newest product
    factor_rows: dict[str, int] = field(default_factory=dict)  # user id -> row of model.choice
    _cold: tuple[int, tuple[F32, F32, F64]] | None = None  # cold() for one day, the latest asked
    _popular: tuple[tuple[float, ...], tuple[F32, npt.NDArray[np.int64]]] | None = None

    @classmethod
    def of(cls, source: HybridModel, snap: CatalogSnapshot, pop: TimePopularity, generation: int) -> _Compiled:
        present = [i for i in source.items if i in snap.index]
        rows = np.array([snap.index[i] for i in present], dtype=np.int64)
        to_model = np.full(len(snap), -1, dtype=np.int32)
        to_model[rows] = np.arange(len(rows), dtype=np.int32)
        model = on_items(source, present)
        c = cls(
            snap.version,
            source,
            model,
            rows,
            to_model,
            pop,
            generation,
            factor_rows={} if model.choice is None else model.choice.row_of(),
        )
        c.set_popularity(pop, generation, snap)
        return c

    def set_popularity(self, pop: TimePopularity, generation: int, snap: CatalogSnapshot) -> None:
        self.popularity, self.pop_generation = pop, generation
        self.age_rank = np.argsort(np.argsort(-snap.created)) / max(len(snap), 1)
        self._cold = self._popular = None

    def cold(self, now: float) -> tuple[F32, F32, F64]:
        """As of ``now`` (to the day): trending (7-day one-sided kernel), all-time popularity
        (events up to ``now``), each max-normalised, and the cold-start ranking: trending first,
        all-time as tie-breaker and fallback, products nobody touched yet after them, newest
        first."""
        t = np.array([now])
        day = int(self.popularity._days(t)[0])
        if self._cold is None or self._cold[0] != day:
            trend = self.popularity.at(t, TRENDING_TAU_DAYS)[0]
            trend = trend / (float(trend.max(initial=0.0)) or 1.0)
            alltime = self.popularity.at(t, 1e6)[0]
            alltime = alltime / (float(alltime.max(initial=0.0)) or 1.0)
            popular = trend + 0.2 * alltime
            self._cold = day, (trend, alltime, np.where(popular > 0, popular, -self.age_rank))
        return self._cold[1]

    def popular(self, now: float) -> tuple[F32, npt.NDArray[np.int64]]:
        """The model's popularity part as of ``now`` (to the day; ``beta`` times the
        max-normalised popularity, read-only) and the products with any, most popular first."""
        p = self.model.params
        t = np.array([now])
        key = (float(self.popularity._days(t)[0]), p.tau_days, p.beta)
        if self._popular is None or self._popular[0] != key:
            row = self.popularity.at(t, p.tau_days)[0]
            part = (p.beta * _max_normalise(row)).astype(np.float32)
            part.flags.writeable = False
            touched = np.flatnonzero(part > 0)
            order = touched[np.argsort(-part[touched], kind="stable")]
            self._popular = key, (part, order)
        return self._popular[1]

    def user_parts(
        self, snap: CatalogSnapshot, idx: npt.NDArray[np.int32], w_hist: F32, now: float, user: int | None
    ) -> dict[str, F32]:
        """The collaborative, popularity and choice-model parts of one user's score over the
        snapshot: the numbers of :meth:`HybridModel.components` (the batch path) for the model
        re-indexed onto every product, with the first and the last computed over the model's
        products alone."""
        model, p, n = self.model, self.model.params, len(snap)
        parts: dict[str, F32] = {}
        collab = np.zeros(n, dtype=np.float32)
        hm = self.to_model[idx]
        known = hm >= 0
        if known.any():
            collab[self.rows] = p.cf * _max_normalise(
                model.project(weighted_rows(model.ease, hm[known], w_hist[known]))
            )
        parts["collaborative"] = collab
        if p.beta > 0:
            parts["popular"] = self.popular(now)[0]
        if user is not None and user >= 0 and model.choice is not None and p.eta > 0:
            trend = self.popularity.trend(np.array([now]), model.choice.tau_days)[0][self.rows]
            log_trend = np.log(np.maximum(trend, 1e-6)).astype(np.float32)[None, :]
            factors = np.zeros(n, dtype=np.float32)
            factors[self.rows] = p.eta * model.choice.scores(np.array([user], dtype=np.int64), log_trend)[0]
            parts["factors"] = factors
        return parts

    def best_others(self, parts: dict[str, F32], allowed: B8, k: int, now: float) -> npt.NDArray[np.int64] | None:
        """The ``k`` best allowed products by the sum of ``parts`` (None when it is zero
        everywhere), looked for among the model's products and the ``k`` most popular allowed
        ones only: any other product has its popularity alone, no more than those ``k`` have
        (unless their collaborative or choice-model parts are negative)."""
        found = [self.rows]
        if "popular" in parts:
            order = self.popular(now)[1]
            step, start, got = 2 * k, 0, 0
            while got < k and start < len(order):  # the first k allowed, a growing chunk at a time
                chunk = order[start : start + step]
                chunk = chunk[allowed[chunk]]
                found.append(chunk[: k - got])
                got, start, step = got + len(chunk), start + step, 2 * step
        cand = np.concatenate(found)  # a product in both appears twice: harmless among the best
        cand = cand[allowed[cand]]
        total = functools.reduce(np.add, [v[cand] for v in parts.values()]) if parts else np.zeros(0, np.float32)
        if not len(cand) or not total.any():
            return None
        return _top_rows(cand, total, k)

    def model_block(self, rows: npt.NDArray[np.int32], cols: list[int]) -> tuple[F32, F32 | None]:
        """Per history product ``rows`` (snapshot rows) and product ``cols``: their collaborative
        and (when there is a choice model) factor affinities, 0 outside the model."""
        hm, cm = self.to_model[rows], self.to_model[np.asarray(cols, dtype=np.int64)]
        hk, ck = np.flatnonzero(hm >= 0), np.flatnonzero(cm >= 0)
        collab = np.zeros((len(rows), len(cols)), np.float32)
        factors = None if self.model.choice is None else np.zeros((len(rows), len(cols)), np.float32)
        if len(hk) and len(ck):
            sub = self.model.collaborative_block(hm[hk], cm[ck].tolist())
            collab[np.ix_(hk, ck)] = sub
            if factors is not None and self.model.choice is not None:
                q = self.model.choice.q
                factors[np.ix_(hk, ck)] = q[hm[hk]] @ q[cm[ck]].T
        return collab, factors


@dataclass
class Recommender:
    """Answers recommendation queries from memory; :meth:`refresh` keeps it current."""

    catalog: Catalog
    events: EventLog
    model_store: ModelStore
    weights: Weights
    exclude_seen: bool = True
    refresh_seconds: float = 2.0
    hot: HotCatalog | None = None
    """The process's hot copy of the catalog: once it is loaded, new catalog versions are taken
    from it instead of re-reading the whole dataset."""
    ann_min_rows: int = CONTENT_ANN_MIN_ROWS  # catalogs from this size on get a content index
    ann_content: bool = True  # False: always the exact content pass (bench.query compares them)
    event_window_days: float = 0.0
    """Hold only the events of this many days (``RECS_EVENT_WINDOW_DAYS``; 0: all), forgetting
    older ones at most every :data:`PRUNE_EVERY_SECONDS`."""
    basket_gap_seconds: float = 1800.0
    """Bought together: add-to-carts and purchases this close are one basket."""
    state: EventState = field(default_factory=EventState)
    snapshot: CatalogSnapshot = field(default_factory=CatalogSnapshot.empty)
    model: HybridModel | None = None
    model_key: str | None = None
    _compiled: _Compiled | None = None
    _untrained: HybridModel = field(
        default_factory=lambda: HybridModel([], sp.csr_matrix((0, 0), dtype=np.float32), UNTRAINED, {})
    )
    _events_version: int = -1
    _pruned_at: float = 0.0
    _snapshot_at: float = 0.0
    _snapshot_cost: float = 0.0
    _seen_writes: int = -1  # the catalog's local_writes at the last refresh
    _wake_at: float = 0.0  # time.monotonic() when the last wake-up's refresh started
    _wake_cost: float = 0.0  # and how long it took
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)  # set by this process's catalog commits
    _thread: threading.Thread | None = None
    last_refresh: float = 0.0
    together: TogetherCache = field(init=False)

    def __post_init__(self) -> None:
        self.together = TogetherCache(self.basket_gap_seconds, self.refresh_seconds)

    # ---- refreshing ------------------------------------------------------------------------
    def adopt(self, state: EventState, snapshot: CatalogSnapshot | None) -> None:
        """Start from a start-up file's events and serving snapshot (None: built from the hot
        catalog at the first refresh); :meth:`refresh` reads only the events after its watermark."""
        with self._lock:
            self.state = state
            if snapshot is not None:
                self.snapshot = snapshot

    def refresh(self) -> None:
        """Pick up a new catalog version, new events from other writers, and a new model."""
        with self._lock:
            writes = self.catalog.local_writes
            self._refresh_snapshot()
            ev_version = self.events.version()
            if ev_version != self._events_version:
                since = self.state.watermark - EVENT_OVERLAP if self.state.watermark else None
                for batch in self.events.read_batches(since):
                    self.state.add_table(batch)
                self._events_version = ev_version
            if self.event_window_days > 0 and time.time() - self._pruned_at >= PRUNE_EVERY_SECONDS:
                dropped = self.state.prune(time.time() - self.event_window_days * DAY_SECONDS)
                self._pruned_at = time.time()
                if dropped:
                    log.info("event window: %d events older than %g days forgotten", dropped, self.event_window_days)
            loaded = self.model_store.load_if_changed(self.model_key)
            if loaded is not None:
                self.model_key, self.model = loaded
                log.info("recommendation model %s loaded", self.model_key)
            self._compiled_for(self.snapshot)
            self._refresh_popularity()
            self.last_refresh = time.time()
            # Seen even when the rebuild was held back: retrying on every request would add
            # storage reads to each one during a bulk import; the timer picks those writes up.
            self._seen_writes = writes

    def refresh_catalog(self) -> None:
        """Only the catalog part of :meth:`refresh` (no event or model reads): what the background
        thread runs when this process has just written products."""
        with self._lock:
            writes = self.catalog.local_writes
            self._refresh_snapshot()
            self._compiled_for(self.snapshot)
            self._refresh_popularity()
            self._seen_writes = writes

    def _refresh_snapshot(self) -> None:
        hot = self.hot.current() if self.hot is not None else None  # with this process's writes
        version = hot.version if hot is not None else self.catalog.version
        # While a bulk import commits every fraction of a second, rebuilding the snapshot on
        # every version would keep the object store (or a core) busy: wait at least 10x as
        # long as the last build took (new products still arrive within seconds).
        if version != self.snapshot.version and (self._rebuild_wait() == 0 or len(self.snapshot) == 0):
            started = time.monotonic()
            if hot is not None:
                snap = CatalogSnapshot.from_hot(hot, self.weights)
            else:
                snap = CatalogSnapshot.load(self.catalog, self.weights)
            self.snapshot = snap.serving(self.ann_min_rows, self.snapshot)
            self._snapshot_at, self._snapshot_cost = time.monotonic(), time.monotonic() - started

    def _wake_hold(self) -> float:
        """How long a wake-up waits before it refreshes: the catalog refreshes that wake-ups
        trigger (a read of the new rows, then the rebuild) take at most 1/20 of the time, and the
        rebuild's own throttle holds."""
        spacing = self._wake_at + 20 * self._wake_cost - time.monotonic()
        return max(spacing, self._rebuild_wait(), 0.0)

    def _rebuild_wait(self) -> float:
        """Seconds until the snapshot may be rebuilt again (10x the last build's time after it)."""
        return max(0.0, self._snapshot_at + 10 * self._snapshot_cost - time.monotonic())

    def start(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Refresh now (products indexed since this object was built, e.g. a seeded sample, are
        served from the first request), then every ``refresh_seconds`` in a daemon thread. A
        commit this process makes to the catalog wakes the thread, which takes up the catalog alone
        once the commits pause for ``WAKE_SETTLE_SECONDS`` (read-your-writes: a product just
        indexed is recommendable a fraction of a second later, not at the next tick; commits that
        keep coming, a bulk import, are left to the timed refresh)."""
        try:
            self.refresh()
        except Exception as exc:  # storage down at start: the loop keeps trying
            log.warning("recommender refresh failed: %s", exc)
        self.catalog.on_write(self._wake.set)

        def loop() -> None:
            while not self._stop.is_set():
                due_in = self.last_refresh + self.refresh_seconds - time.time()
                woken = self._wake.wait(max(due_in, 0.0))
                if self._stop.is_set():
                    return
                self._wake.clear()
                if woken:
                    due_in = self.last_refresh + self.refresh_seconds - time.time()
                    # Take this process's writes up once they pause. A bulk import does not pause:
                    # the timed refresh takes its products up, and the import is not slowed.
                    if self._stop.wait(min(WAKE_SETTLE_SECONDS, max(due_in, 0.0))):
                        return
                    if self._wake.is_set() and time.time() - self.last_refresh < self.refresh_seconds:
                        continue
                try:
                    if time.time() - self.last_refresh >= self.refresh_seconds:
                        self.refresh()
                    elif woken:
                        hold, due_in = self._wake_hold(), self.last_refresh + self.refresh_seconds - time.time()
                        if self._stop.wait(max(min(hold, due_in), 0.0)):
                            return
                        if due_in <= hold:  # the timed refresh comes first and covers the catalog too
                            self.refresh()
                        else:
                            started = time.monotonic()
                            self.refresh_catalog()
                            self._wake_at, self._wake_cost = started, time.monotonic() - started
                except Exception as exc:  # keep serving the last good state
                    log.warning("recommender refresh failed: %s", exc)
                    if on_error:
                        on_error(exc)
                    if self._stop.wait(self.refresh_seconds):  # no tight loop while storage is down
                        return

        self._thread = threading.Thread(target=loop, name="recommender-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def in_memory(self) -> bool:
        """Whether :meth:`recommend` and :meth:`more_like` answer from memory alone (the background
        refresh runs), so callers may run them without a worker thread."""
        return self._thread is not None and self._thread.is_alive()

    def ensure_fresh(self) -> None:
        """Without the background thread (a host that never started it), refresh inline when
        the state is older than ``refresh_seconds`` or this process wrote to the catalog since
        the last refresh (read-your-writes, as for search: products it just indexed count)."""
        running = self._thread is not None and self._thread.is_alive()
        if running:
            return
        if time.time() - self.last_refresh > self.refresh_seconds or self.catalog.local_writes != self._seen_writes:
            self.refresh()

    def observe(self, events: Sequence[Event]) -> None:
        """Events this process just stored: they count at once."""
        self.state.add(events)

    # ---- scoring ---------------------------------------------------------------------------
    def _compiled_for(self, snap: CatalogSnapshot) -> _Compiled:
        """The model over this snapshot's items (built once per model and catalog version)."""
        model = self.model if self.model is not None else self._untrained
        c = self._compiled
        if c is None or c.snapshot_version != snap.version or c.source is not model:
            gen = self.state.generation
            c = _Compiled.of(model, snap, TimePopularity(self.state.arrays(snap.index), len(snap)), gen)
            self._compiled = c
        return c

    def _refresh_popularity(self) -> None:
        c = self._compiled
        if c is not None and c.pop_generation != self.state.generation:
            gen = self.state.generation
            snap = self.snapshot
            c.set_popularity(TimePopularity(self.state.arrays(snap.index), len(snap)), gen, snap)

    def recommend(
        self,
        user_id: str,
        top_k: int = 10,
        filters: Filters = Filters(),
        exclude_seen: bool | None = None,
        as_of: float | None = None,
        merch: Merchandising = NO_MERCHANDISING,
    ) -> RecommendationResult:
        """The user's ``top_k`` products as of ``as_of`` (epoch seconds; default now): every
        time signal is computed as of that moment, and only the user's events before it count.
        ``merch``: pins, boosts and burials (:mod:`core.merchandising`)."""
        result = self._recommend(user_id, merch.fetch(top_k), filters, exclude_seen, as_of)
        return self._arranged(result, top_k, merch, filters)

    def _arranged(
        self, result: RecommendationResult, top_k: int, merch: Merchandising, filters: Filters
    ) -> RecommendationResult:
        """``result`` after ``merch``: a pinned product the model did not rank has score 0 and
        says it is the shop's choice."""
        if not merch.active:
            return result
        snap = self.snapshot

        def pinned(pid: str) -> Recommended | None:
            row = snap.index.get(pid)
            return None if row is None else Recommended(snap.products[row], 0.0, PINNED_REASON)

        items = arrange(
            result.items,
            top_k,
            merch,
            filters,
            lambda r: r.product,
            lambda r: r.score,
            lambda r, s: replace(r, score=s),
            pinned,
        )
        return replace(result, items=items)

    def _recommend(
        self,
        user_id: str,
        top_k: int,
        filters: Filters,
        exclude_seen: bool | None,
        as_of: float | None,
    ) -> RecommendationResult:
        self.ensure_fresh()
        snap = self.snapshot
        if len(snap) == 0:
            return RecommendationResult([], "empty")
        now = time.time() if as_of is None else float(as_of)
        history = [h for h in self.state.history(user_id, before=as_of) if h.product_id in snap.index]
        exclude = self.exclude_seen if exclude_seen is None else exclude_seen
        allowed = snap.mask(filters)
        if exclude:
            for h in history:
                allowed[snap.index[h.product_id]] = False
        if not history:
            return self._popular(snap, top_k, allowed, now)
        compiled = self._compiled_for(snap)
        model = compiled.model
        p = model.params
        idx = np.array([snap.index[h.product_id] for h in history], dtype=np.int32)
        strength = np.array([h.strength for h in history], np.float32)
        rank = np.arange(len(history), dtype=np.int32)  # history is most recent first
        w_hist = history_weights(strength, rank, p.alpha, p.half_life)
        t_query = np.array([now])
        parts = compiled.user_parts(snap, idx, w_hist, now, compiled.factor_rows.get(user_id))
        scored: list[npt.NDArray[np.int64]] = []  # the content candidates, when there are some
        if p.gamma > 0:
            profile = w_hist @ snap.vectors[idx]
            unit = (profile / (float(np.linalg.norm(profile)) or 1.0)).astype(np.float32)
            if self.ann_content and snap.content_index is not None:
                extra = compiled.best_others(parts, allowed, CONTENT_CANDIDATES, now)
                scores, rows = snap.content_candidates(unit, allowed, extra, always=idx)
                if rows is not None:
                    scored.append(rows)
            else:
                scores = snap.exact_content(unit)
            parts["content"] = p.gamma * _max_normalise(scores)
        # The trend multiplies the summed score; content candidates are picked before it (a
        # multiplier near 1 moves few products across the 1,000-candidate line).
        factor = model.trend_factor(t_query, compiled.popularity)
        if scored:  # the best are among the candidates (see content_candidates): rank only those
            rows = scored[0]
            total = functools.reduce(np.add, [v[rows] for v in parts.values()])
            total = boost(total, None if factor is None else factor[0, rows])
        else:
            rows = np.arange(len(snap), dtype=np.int64)
            total = boost(functools.reduce(np.add, parts.values()), None if factor is None else factor[0])
        rr = model.reranker
        ranked = np.array(
            _best(np.where(allowed[rows], total, -np.inf), top_k if rr is None else max(top_k, rr.candidates)),
            dtype=np.int64,
        )
        if rr is not None and len(ranked):
            # The reranker reorders the blend's best (HybridModel.score does the same in batch).
            cand = rows[ranked].astype(np.int32)
            content_part = parts.get("content")
            x = rerank_features(
                total[ranked],
                parts["collaborative"][cand],
                None if content_part is None else content_part[cand],
                cand,
                now,
                compiled.popularity,
            )
            logit = rr.logits(x)
            prob = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
            order = np.argsort(-logit, kind="stable")[:top_k]
            score_of = {int(cand[j]): float(prob[j]) for j in order}
        else:
            score_of = {int(rows[j]): float(total[j]) for j in ranked}
        top = list(score_of)  # best first
        strategy = "personalized" if self.model is not None else "content"
        # Who contributed what to each recommended product, for its reason (one slice per signal).
        collab_block, factor_block = compiled.model_block(idx, top)
        contrib = {
            "collaborative": w_hist[:, None] * collab_block,
            "content": w_hist[:, None] * (snap.vectors[idx] @ snap.vectors[top].T),
        }
        if factor_block is not None:  # the history items whose factors are closest to the product's
            contrib["factors"] = w_hist[:, None] * factor_block
        trend, alltime, _cold = compiled.cold(now)
        items = []
        for col, i in enumerate(top):
            best = max(parts, key=lambda k: float(parts[k][i]))
            product = snap.products[i]
            lately = bool(trend[i] >= 0.05)
            if float(parts[best][i]) > 0:
                reason = _history_reason(best, contrib.get(best), col, history, snap, idx, product, lately)
            elif alltime[i] > 0:  # nothing in the history speaks for it: say only what is true
                reason = _popular_reason(product, lately)
            else:
                reason = f"New in {product.category or 'the catalog'}"
            items.append(Recommended(snap.products[i], score_of[i], reason))
        return RecommendationResult(items, strategy)

    def _popular(
        self, snap: CatalogSnapshot, top_k: int, allowed: np.ndarray[Any, np.dtype[np.bool_]], now: float
    ) -> RecommendationResult:
        compiled = self._compiled_for(snap)
        pop = compiled.popularity
        if len(self.state) == 0 or not math.isfinite(pop.latest_ts):
            top = _best(np.where(allowed, snap.created, -np.inf), top_k)
            items = [
                Recommended(snap.products[i], 1.0 / (r + 1), f"New in {snap.products[i].category or 'the catalog'}")
                for r, i in enumerate(top)
            ]
            return RecommendationResult(items, "newest")
        trend, alltime, cold = compiled.cold(now)
        scores = np.where(allowed, cold, -np.inf)
        items = []
        for i in _best(scores, top_k):
            p = snap.products[i]
            where = p.category or "the catalog"
            if trend[i] >= 0.05:
                reason = _popular_reason(p, lately=True)
            elif alltime[i] > 0:
                reason = f"Popular in {where}"
            else:
                reason = f"New in {where}"
            items.append(Recommended(p, float(scores[i]), reason))
        return RecommendationResult(items, "popular")

    def more_like(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        user_id: str | None = None,
        top_k: int = 10,
        filters: Filters = Filters(),
        as_of: float | None = None,
        merch: Merchandising = NO_MERCHANDISING,
    ) -> RecommendationResult:
        """ "More like these, less like those": content and collaborative similarity to the
        positives minus similarity to the negatives; the products ``user_id`` had before
        ``as_of`` (default: ever) are left out."""
        if merch.active:
            found = self.more_like(positive, negative, user_id, merch.fetch(top_k), filters, as_of)
            # The products asked about are never answered, pinned or not.
            asked = replace(filters, exclude_ids=filters.exclude_ids | set(positive) | set(negative))
            return self._arranged(found, top_k, merch, asked)
        self.ensure_fresh()
        snap = self.snapshot
        if not positive:
            raise InvalidInput("positive must name at least one product")
        missing = [p for p in [*positive, *negative] if p not in snap.index]
        if missing:
            raise NotFound(f"unknown product ids: {', '.join(missing[:10])}")
        pos = np.array([snap.index[p] for p in positive], dtype=np.int32)
        neg = np.array([snap.index[p] for p in negative], dtype=np.int32)
        compiled = self._compiled_for(snap)
        allowed = snap.mask(filters)
        allowed[pos] = False
        if len(neg):
            allowed[neg] = False
        if user_id:
            history = [h for h in self.state.history(user_id, before=as_of) if h.product_id in snap.index]
            if self.exclude_seen:
                for h in history:
                    allowed[snap.index[h.product_id]] = False
        cf = np.zeros(len(snap), dtype=np.float32)
        given = compiled.to_model[np.concatenate([pos, neg])]
        signs = np.concatenate([np.ones(len(pos), np.float32), -np.ones(len(neg), np.float32)])
        if (given >= 0).any():
            m = compiled.model
            part = m.project(weighted_rows(m.ease, given[given >= 0], signs[given >= 0]))
            cf[compiled.rows] = part / (float(np.abs(part).max()) or 1.0)
        # mean(pos) . v - 0.5 mean(neg) . v for every product v (one pass, or ANN candidates)
        query = snap.vectors[pos].mean(axis=0)
        if len(neg):
            query = query - 0.5 * snap.vectors[neg].mean(axis=0)
        query = query.astype(np.float32)
        if self.ann_content:
            mine = compiled.rows[allowed[compiled.rows]]
            extra = _top_rows(mine, cf[mine], CONTENT_CANDIDATES) if cf.any() else None
            content, _ = snap.content_candidates(query, allowed, extra, always=pos)
        else:
            content = snap.exact_content(query)
        total = content + 0.5 * cf
        scores = np.where(allowed, total, -np.inf)
        items = []
        for i in _best(scores, top_k):
            j = int(pos[np.argmax(snap.vectors[pos] @ snap.vectors[i])])
            items.append(Recommended(snap.products[i], float(scores[i]), f"Like {snap.products[j].title}"))
        return RecommendationResult(items, "more_like_these")

    def bought_together(self, product_id: str, top_k: int = 10, filters: Filters = Filters()) -> list[Recommended]:
        """Products bought in the same baskets as ``product_id`` (:mod:`core.recommend.together`),
        passing ``filters``; :class:`NotFound` for an unknown product."""
        self.ensure_fresh()
        snap = self.snapshot
        row = snap.index.get(product_id)
        if row is None:
            raise NotFound(f"product {product_id!r} not found")
        allowed = snap.mask(replace(filters, exclude_ids=filters.exclude_ids | {product_id}))

        def ok(pid: str) -> bool:
            i = snap.index.get(pid)
            return i is not None and bool(allowed[i])

        reason = f"Often bought together with {snap.products[row].title}"
        found = self.together.current(self.state).together(product_id, top_k, ok)
        return [Recommended(snap.products[snap.index[t.product_id]], t.score, reason) for t in found]

    def history(self, user_id: str, limit: int = 50) -> list[PastEvent]:
        """The user's latest events, newest first (an unknown user has none)."""
        snap = self.snapshot
        return [
            PastEvent(pid, snap.products[snap.index[pid]].title if pid in snap.index else None, et, v, ts)
            for ts, pid, et, v in self.state.recent(user_id, limit)
        ]


def _history_reason(
    signal: str,
    contrib: F32 | None,
    col: int,
    history: list[HistoryItem],
    snap: CatalogSnapshot,
    idx: np.ndarray[Any, np.dtype[np.int32]],
    product: Product,
    lately: bool,
) -> str:
    """The reason for one product: the history item that contributed most to its dominant signal
    (so it is always something the user really did), or its popularity (``lately``: it had events
    in the week before the request)."""
    if signal == "popular" or contrib is None:
        return _popular_reason(product, lately)
    j = int(np.argmax(contrib[:, col]))
    h = history[j]
    title = snap.products[idx[j]].title
    if signal == "factors":
        return f"Matches your taste for {title}, which you {_VERB[h.event_type]}"
    if signal == "collaborative":
        if h.event_type in ("purchase", "add_to_cart"):
            return f"Often bought with {title}"
        if h.event_type == "rating":
            return f"Because you rated {title}"
        return f"Because you viewed {title}"
    return f"Similar to {title}, which you {_VERB[h.event_type]}"


def _popular_reason(product: Product, lately: bool) -> str:
    where = product.category or "the catalog"
    if lately:
        return f"Popular in {where} this week"
    return f"Popular in {where}"


def _distinct(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``rows`` sorted, each once (a sort: cheaper than ``np.unique``'s hashing for a few
    thousand rows)."""
    rows = np.sort(rows)
    out: npt.NDArray[np.int64] = rows[np.concatenate(([True], rows[1:] != rows[:-1]))] if len(rows) else rows
    return out


def _top_rows(rows: npt.NDArray[np.int64], values: F32, k: int) -> npt.NDArray[np.int64]:
    """The ``k`` of ``rows`` with the largest ``values`` (in no particular order)."""
    if len(rows) <= k:
        return rows
    return rows[np.argpartition(-values, k - 1)[:k]]


def _best(scores: F32 | F64, k: int) -> list[int]:
    """Positions of the ``k`` best finite ``scores``, best first (-inf marks the excluded)."""
    k = min(k, len(scores))
    if k == 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    part = part[np.isfinite(scores[part])]
    return [int(i) for i in part[np.argsort(-scores[part], kind="stable")]]
