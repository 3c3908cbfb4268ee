"""The app's Prometheus metrics (``GET /metrics``)."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from functions.services import Services


class QueryBatches(Collector):
    """How many query-encode batches of each size ran per encoder, and how many callers shared an
    identical query in flight (read at scrape time from the process's batchers)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily(
            "query_encode_batches", "Query-encode batches run, by encoder and batch size", labels=["encoder", "size"]
        )
        shared = CounterMetricFamily(
            "query_coalesced", "Requests that shared an identical query in flight", labels=["stage"]
        )
        encoder, flights = self.services.encoder, self.services.flights
        if encoder is not None:
            for name, batcher in encoder.batchers().items():
                for size, n in sorted(batcher.batch_sizes.items()):
                    batches.add_metric([name, str(size)], n)
                shared.add_metric([f"encode_{name}"], batcher.shared)
        if flights is not None:
            shared.add_metric(["search"], flights.shared)
        yield batches
        yield shared


class ApiMetrics:
    """Prometheus metrics of one app instance (own registry, so several apps can coexist)."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(QueryBatches(services))
        self.request_duration = Histogram(
            "api_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        products = Gauge("catalog_products", "Products in the catalog", registry=self.registry)
        products.set_function(lambda: float(services.catalog.count()))
        version = Gauge("catalog_dataset_version", "Served dataset version", registry=self.registry)
        version.set_function(lambda: float(services.catalog.version))
        random_init = Gauge(
            "clip_random_init",
            "1 when CLIP runs with random weights (CLIP_PRETRAINED=none)",
            registry=self.registry,
        )
        random_init.set(1.0 if services.embedder.clip.random_init else 0.0)
        self.webhook_refused = Counter(
            "webhook_keys_refused_total",
            "Notified upload keys not queued: missing, too_large, duplicate, over_rate, not_upload, other_bucket",
            ["reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "events_accepted_total", "Events stored via POST /events", ["event_type"], registry=self.registry
        )
        in_memory = Gauge("recommender_events", "Events held by this query process", registry=self.registry)
        in_memory.set_function(lambda: float(len(services.recommender.state)))
        model_age = Gauge(
            "recommender_model_loaded", "1 when a trained recommendation model is served", registry=self.registry
        )
        model_age.set_function(lambda: 0.0 if services.recommender.model is None else 1.0)
        self.inference = self._seconds(
            "model_inference_duration_seconds",
            "Query embedding time (text encoders, or CLIP on a query photo)",
            "kind",
            (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1),
        )
        self.vector_search = self._seconds(
            "vector_search_duration_seconds",
            "Candidate search + exact re-scoring time",
            "route",
            (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        cache = services.query_cache
        self.cache_requests = Counter(
            "query_cache_requests_total", "Query-embedding cache lookups", ["result"], registry=self.registry
        )
        hit_rate = Gauge("cache_hit_rate", "Query-embedding cache hit rate since start", registry=self.registry)
        hit_rate.set_function(lambda: cache.hit_rate)
        size = Gauge("query_cache_entries", "Query texts held by the cache", registry=self.registry)
        size.set_function(lambda: float(len(cache)))
        hot = services.hot
        freshness = Gauge(
            "index_freshness_seconds",
            "Seconds since the served in-memory catalog snapshot was last confirmed current (-1 before its first load)",
            registry=self.registry,
        )
        freshness.set_function(lambda: -1.0 if hot is None or hot.snapshot is None else hot.age_seconds())
        served = Gauge(
            "index_served_version", "Dataset version of the in-memory catalog snapshot", registry=self.registry
        )
        served.set_function(lambda: -1.0 if hot is None or hot.snapshot is None else float(hot.snapshot.version))

    def _seconds(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, [label], registry=self.registry, buckets=buckets)
