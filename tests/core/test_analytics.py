"""The analytics view's numbers: price bins, category counts, rolling request log, top queries."""

import numpy as np
import pyarrow as pa
import pytest

from core.analytics import NO_CATEGORY, QueryLog, RequestLog, catalog_stats, nice_step, normalize_query, price_stats


@pytest.mark.parametrize(
    ("span", "bins", "step"),
    [(390.0, 20, 20.0), (100.0, 20, 5.0), (1.0, 10, 0.1), (0.0, 20, 1.0), (7_000.0, 20, 500.0)],
)
def test_nice_step_is_round_and_covers_the_span(span: float, bins: int, step: float) -> None:
    assert nice_step(span, bins) == pytest.approx(step)
    if span > 0:
        assert span / nice_step(span, bins) <= bins


def test_price_histogram_counts_every_finite_price_once() -> None:
    rng = np.random.default_rng(0)
    prices = np.concatenate([rng.uniform(8, 400, 997), [np.nan, np.inf, 12.5]])
    st = price_stats(prices)
    assert st.priced == 998  # nan and inf left out
    assert sum(st.counts) == 998
    assert len(st.edges) == len(st.counts) + 1
    assert st.edges[0] <= st.minimum and st.edges[-1] >= st.maximum  # type: ignore[operator]
    steps = np.diff(st.edges)
    assert np.allclose(steps, steps[0]) and steps[0] in (10.0, 20.0, 25.0, 50.0)
    assert len(st.counts) <= 21
    # bins hold exactly the prices between their edges
    finite = prices[np.isfinite(prices)]
    for i, c in enumerate(st.counts[:-1]):
        assert c == int(((finite >= st.edges[i]) & (finite < st.edges[i + 1])).sum())


def test_price_stats_of_nothing_and_of_one_price() -> None:
    assert price_stats([]).counts == [] and price_stats([]).median is None
    one = price_stats([42.0])
    assert one.counts == [1] and one.minimum == one.maximum == one.median == 42.0


def test_catalog_stats_orders_categories_and_names_missing_ones() -> None:
    table = pa.table(
        {
            "category": ["Bags", "Shoes", None, "Shoes", "Shoes", "Bags", None],
            "price": [10.0, 50.0, None, 70.0, 90.0, 20.0, 5.0],
        }
    )
    st = catalog_stats(table, version=7)
    assert st.products == 7 and st.version == 7
    assert [(c.category, c.count) for c in st.categories] == [("Shoes", 3), ("Bags", 2), (NO_CATEGORY, 2)]
    assert st.prices.priced == 6 and st.prices.median == 35.0


def test_request_log_percentiles_per_route_and_timeline() -> None:
    log = RequestLog()
    now = 10_000.0
    # 100 searches at 10..109 ms in the last minute, 10 slow 5xx product reads 20 min ago (outside)
    for i in range(100):
        log.record("POST /search", 200, (10 + i) / 1000, at=now - 50 + i * 0.1)
    for _ in range(10):
        log.record("GET /products/{product_id}", 503, 2.0, at=now - 1200)
    log.record("GET /products/{product_id}", 404, 0.004, at=now - 5)
    st = log.summary(window_s=900, buckets=30, now=now)
    assert st.requests == 101 and st.errors == 0
    search = next(r for r in st.routes if r.route == "POST /search")
    assert search.requests == 100
    assert search.p50_ms == pytest.approx(59.5, abs=0.01)
    assert search.p95_ms == pytest.approx(104.05, abs=0.01)
    product = next(r for r in st.routes if r.route == "GET /products/{product_id}")
    assert product.client_errors == 1 and product.errors == 0
    assert len(st.timeline) == 30 and st.bucket_s == 30
    assert sum(b.requests for b in st.timeline) == 101
    assert [b.start for b in st.timeline] == sorted(b.start for b in st.timeline)
    assert st.timeline[0].requests == 0 and st.timeline[0].p50_ms is None
    assert st.timeline[-1].requests + st.timeline[-2].requests == 101
    # the old 5xx burst is inside a 30-minute window
    wide = log.summary(window_s=1800, buckets=30, now=now)
    assert wide.errors == 10 and wide.requests == 111


def test_request_log_is_bounded() -> None:
    log = RequestLog(capacity=50)
    for i in range(200):
        log.record("GET /health", 200, 0.001, at=1000.0 + i)
    assert log.summary(window_s=10_000, now=1300.0).requests == 50


def test_empty_request_log() -> None:
    st = RequestLog().summary()
    assert st.requests == 0 and st.routes == [] and st.timeline == []


def test_query_log_counts_normalized_queries_and_stays_bounded() -> None:
    q = QueryLog(max_distinct=10)
    for text in ["Blue  Shoes", "blue shoes ", "BLUE SHOES", "red bag", "red bag", "  "]:
        q.record(text)
    assert normalize_query("  Blue\tShoes ") == "blue shoes"
    assert q.top(2) == [("blue shoes", 3), ("red bag", 2)]
    assert q.total == 5  # the blank query is not counted
    for i in range(30):
        q.record(f"one-off {i}")
    top = dict(q.top(100))
    assert len(top) <= 10
    assert top["blue shoes"] == 3 and top["red bag"] == 2  # popular queries survive pruning
