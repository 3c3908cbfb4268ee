"""Numbers behind the dashboard's analytics view: catalog make-up, request traffic over time,
latency percentiles and top search queries.

Traffic and queries are kept per process in bounded memory (a rolling window of requests, a
capped query counter): on a scaled-out deployment each container reports its own share, while
catalog and event figures come from the shared dataset.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from core.catalog import Catalog

NO_CATEGORY = "(none)"


@dataclass(frozen=True)
class CategoryCount:
    category: str
    count: int


@dataclass(frozen=True)
class PriceStats:
    """A histogram over ``edges`` (len(counts) + 1 round-numbered bin edges) and a summary."""

    edges: list[float]
    counts: list[int]
    priced: int
    minimum: float | None
    median: float | None
    maximum: float | None


@dataclass(frozen=True)
class CatalogStats:
    products: int
    version: int
    categories: list[CategoryCount]
    prices: PriceStats


def nice_step(span: float, max_bins: int) -> float:
    """The smallest 1/2/5 × 10^k step that covers ``span`` in at most ``max_bins`` bins."""
    if span <= 0:
        return 1.0
    raw = span / max_bins
    base = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if base * mult >= raw:
            return float(base * mult)
    return float(base * 10)  # pragma: no cover - the loop always returns


def price_stats(prices: Sequence[float] | np.ndarray, max_bins: int = 20) -> PriceStats:
    """Histogram with round bin edges (e.g. 0, 20, 40, ...) over the finite prices."""
    arr = np.asarray(prices, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return PriceStats([], [], 0, None, None, None)
    lo, hi = float(arr.min()), float(arr.max())
    step = nice_step(hi - lo, max_bins)
    start = math.floor(lo / step) * step
    n_bins = max(1, math.floor((hi - start) / step) + 1)
    edges = [round(start + i * step, 10) for i in range(n_bins + 1)]
    counts, _ = np.histogram(arr, bins=np.array(edges))
    return PriceStats(
        edges, [int(c) for c in counts], int(arr.size), round(lo, 2), round(float(np.median(arr)), 2), round(hi, 2)
    )


def catalog_stats(table: pa.Table, version: int) -> CatalogStats:
    """Products per category (largest first; on ties named ones before ``(none)``) and the
    price distribution, from a table with ``category`` and ``price`` columns."""
    cats = Counter(NO_CATEGORY if c is None else str(c) for c in table.column("category").to_pylist())
    categories = [
        CategoryCount(c, n) for c, n in sorted(cats.items(), key=lambda kv: (-kv[1], kv[0] == NO_CATEGORY, kv[0]))
    ]
    prices = [p for p in table.column("price").to_pylist() if p is not None]
    return CatalogStats(table.num_rows, version, categories, price_stats(prices))


class CatalogStatsCache:
    """:func:`catalog_stats` of the catalog's current version, computed once per version (a scan
    of two columns: too slow to repeat on every poll of the dashboard at a large catalog)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._stats: CatalogStats | None = None
        self._lock = threading.Lock()

    def get(self) -> CatalogStats:
        version = self.catalog.version
        with self._lock:
            if self._stats is None or self._stats.version != version:
                version, table = self.catalog.scan(["category", "price"])
                self._stats = catalog_stats(table, version)
            return self._stats


@dataclass(frozen=True)
class RouteStats:
    route: str
    requests: int
    errors: int  # 5xx
    client_errors: int  # 4xx
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class TrafficBucket:
    start: float  # epoch seconds
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class TrafficStats:
    window_s: float
    bucket_s: float
    requests: int
    errors: int
    routes: list[RouteStats]
    timeline: list[TrafficBucket]


def _ms(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000.0, 3)


class RequestLog:
    """The latest ``capacity`` requests (time, route, status, seconds), thread-safe."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._rows: deque[tuple[float, str, int, float]] = deque(maxlen=capacity)

    def record(self, route: str, status: int, seconds: float, at: float | None = None) -> None:
        with self._lock:
            self._rows.append((time.time() if at is None else at, route, status, seconds))

    def summary(self, window_s: float = 900.0, buckets: int = 30, now: float | None = None) -> TrafficStats:
        """Per-route percentiles over the last ``window_s`` seconds and a timeline of
        ``buckets`` equal slices (requests, 5xx errors, p50/p95 per slice), oldest first."""
        now = time.time() if now is None else now
        since = now - window_s
        with self._lock:
            rows = [r for r in self._rows if r[0] >= since]
        bucket_s = window_s / buckets
        if not rows:
            return TrafficStats(window_s, bucket_s, 0, 0, [], [])
        at = np.array([r[0] for r in rows])
        status = np.array([r[2] for r in rows])
        secs = np.array([r[3] for r in rows])
        routes = np.array([r[1] for r in rows], dtype=object)
        per_route = []
        for route in sorted(set(routes.tolist())):
            m = routes == route
            s = secs[m]
            per_route.append(
                RouteStats(
                    route,
                    int(m.sum()),
                    int((status[m] >= 500).sum()),
                    int(((status[m] >= 400) & (status[m] < 500)).sum()),
                    _ms(s, 50),
                    _ms(s, 95),
                    _ms(s, 99),
                )
            )
        per_route.sort(key=lambda r: (-r.requests, r.route))
        slot = np.minimum(((at - since) // bucket_s).astype(np.int64), buckets - 1)
        timeline = []
        for b in range(buckets):
            m = slot == b
            n = int(m.sum())
            timeline.append(
                TrafficBucket(
                    round(since + b * bucket_s, 3),
                    n,
                    int((status[m] >= 500).sum()),
                    _ms(secs[m], 50) if n else None,
                    _ms(secs[m], 95) if n else None,
                )
            )
        return TrafficStats(window_s, bucket_s, len(rows), int((status >= 500).sum()), per_route, timeline)


_SPACES = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """Case- and whitespace-insensitive key for counting queries."""
    return _SPACES.sub(" ", text.strip().lower())


class QueryLog:
    """Counts search queries in bounded memory: past ``max_distinct`` different queries the
    least frequent half is dropped (so rare one-offs never crowd out the popular ones)."""

    def __init__(self, max_distinct: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.max_distinct = max_distinct
        self.total = 0

    def record(self, text: str) -> None:
        key = normalize_query(text)
        if not key:
            return
        with self._lock:
            self._counts[key] += 1
            self.total += 1
            if len(self._counts) > self.max_distinct:
                self._counts = Counter(dict(self._counts.most_common(self.max_distinct // 2)))

    def starting_with(self, prefix: str, n: int = 10) -> list[tuple[str, int]]:
        """The most frequent queries that start with ``prefix`` (normalised as recorded)."""
        key = normalize_query(prefix)
        if not key:
            return []
        with self._lock:
            found = [(q, c) for q, c in self._counts.items() if q.startswith(key)]
        return sorted(found, key=lambda kv: (-kv[1], kv[0]))[:n]

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
