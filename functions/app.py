"""The HTTP app factory: parses requests, calls `core`, maps errors. Nothing else."""

import asyncio
import base64
import binascii
import dataclasses
import functools
import gzip
import hmac
import importlib.resources
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import SecretStr

from core import errors
from core.analytics import QueryLog, RequestLog, catalog_stats
from core.events import parse_events, parse_timestamp
from core.images import decode_image, sniff_content_type
from core.ingest import PendingProduct
from core.models import Filters, Product, ProductInput, SearchHit, Weights
from core.recommend.online import RecommendationResult, Recommended
from core.search import SearchQuery, Timings, search, similar
from core.uploads import is_upload_metadata, parse_notification
from functions.schemas import (
    ActiveUser,
    CatalogStatsOut,
    CategoryCountOut,
    DeleteResponse,
    EventErrorOut,
    EventIn,
    EventsResponse,
    EventStatsOut,
    FiltersIn,
    HealthResponse,
    HistoryEvent,
    HistoryResponse,
    IgnoredKey,
    MoreLikeRequest,
    MoreLikeResponse,
    PriceHistogramOut,
    ProductIn,
    ProductOut,
    Recommendation,
    RecommendationsResponse,
    RollbackRequest,
    RollbackResponse,
    RouteStatsOut,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SimilarProduct,
    SimilarResponse,
    StatsResponse,
    TopQuery,
    TrafficBucketOut,
    TrafficStatsOut,
    TriggerResponse,
    UploadOut,
    UploadsResponse,
    UploadStatsOut,
    VersionOut,
    VersionsResponse,
)
from functions.services import Services
from functions.triggers import UploadWorker

log = logging.getLogger(__name__)

UI_DIR = pathlib.Path(__file__).with_name("ui")
T = TypeVar("T")
# Requests the analytics view does not count as traffic: the dashboard's own assets and polling.
UNTRACKED_ROUTES = frozenset({"/ui", "/stats", "/metrics", "/", "/ui/vendor/plotly.min.js"})


@functools.cache
def plotly_js() -> tuple[bytes, bytes]:
    """plotly.min.js from the installed ``plotly`` wheel (the dashboard uses no CDN), plain
    and gzipped."""
    data = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return data, gzip.compress(data, 6)


# One table maps the core error tree to HTTP. Order matters: subclasses first.
ERROR_STATUS: list[tuple[type[errors.ServiceError], int]] = [
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.InvalidImage, 422),
    (errors.InvalidInput, 422),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.Unavailable, 503),
    (errors.ModelLoadError, 503),
    (errors.ConfigError, 500),
]


# Every error answer: {"detail": message or FastAPI's validation error list}, sometimes with more
# fields (POST /events adds its per-item errors).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}


def status_for(exc: errors.ServiceError) -> int:
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def check_bearer(authorization: str | None, secret: SecretStr | None, name: str) -> None:
    """``Authorization: Bearer <secret>`` when ``secret`` is configured: 401 without credentials,
    403 with wrong ones (constant-time comparison; the secret is never echoed)."""
    if secret is None:
        return
    if not authorization:
        raise errors.Unauthorized(f"this endpoint needs Authorization: Bearer <{name}>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), secret.get_secret_value().encode()
    ):
        raise errors.Forbidden(f"invalid {name}")


def _decode_b64(data: str) -> bytes:
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidImage("image_base64 is not valid base64") from None


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413: at once when Content-Length says so,
    and while streaming when it is absent (chunked uploads), without buffering the excess."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(scope, receive, send)
                return
            if too_big:
                await self._refuse(scope, receive, send)
                return
        seen = 0
        exceeded = False
        started = False

        async def counted() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded(message: Any) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a truncated body is replaced by the 413 below
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise  # a real failure, not the truncated body (any wrapping of _BodyTooLarge is ours)
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        body = {"detail": f"request body over {self.max_bytes} bytes (MAX_REQUEST_BYTES)"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


class ConcurrencyLimit:
    """Load shedding: at most ``limit`` requests in the app at once; a request that finds no free
    slot within ``wait_s`` gets 429 with Retry-After (never a 5xx, never an unbounded queue).
    Health, metrics and the dashboard's files are always served."""

    EXEMPT = ("/health", "/metrics", "/ui")

    def __init__(self, app: Any, limit: int, wait_s: float) -> None:
        self.app = app
        self.limit = limit
        self.wait_s = wait_s
        self._slots: asyncio.Semaphore | None = None
        self.shed = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            if self._slots.locked():  # no free slot now: wait for one, a bounded time
                await asyncio.wait_for(self._slots.acquire(), self.wait_s)
            else:
                await self._slots.acquire()  # free: returns at once (wait_for(..., 0) would not)
        except TimeoutError:
            self.shed += 1
            busy = {"detail": f"server busy ({self.limit} requests in progress); retry after 1 s"}
            await JSONResponse(busy, status_code=429, headers={"Retry-After": "1"})(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


class TimeRequests:
    """Request latency per route into Prometheus and the traffic log (a plain ASGI middleware:
    ``BaseHTTPMiddleware`` costs a task and a stream per request). The route is the one the
    router matched (``scope["route"]``, set in place, so a mounted app's rewritten path does not
    hide it); requests that match nothing are "unmatched"."""

    def __init__(self, app: Any, observe: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response started ends as a 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.observe(scope["method"], route, status, time.perf_counter() - started)


class Metrics:
    """Prometheus metrics of one app instance (own registry, so several apps can coexist)."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry()
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
        self.events = Counter(
            "events_accepted_total", "Events stored via POST /events", ["event_type"], registry=self.registry
        )
        in_memory = Gauge("recommender_events", "Events held by this query process", registry=self.registry)
        in_memory.set_function(lambda: float(len(services.recommender.state)))
        model_age = Gauge(
            "recommender_model_loaded", "1 when a trained recommendation model is served", registry=self.registry
        )
        model_age.set_function(lambda: 0.0 if services.recommender.model is None else 1.0)
        self.inference = Histogram(
            "model_inference_duration_seconds",
            "Query embedding time (text encoders, or CLIP on a query photo)",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1),
        )
        self.vector_search = Histogram(
            "vector_search_duration_seconds",
            "Candidate search + exact re-scoring time",
            ["route"],
            registry=self.registry,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
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


def as_of_seconds(raw: str | None) -> float | None:
    """The ``as_of`` parameter of recommendation requests as epoch seconds (None: now)."""
    if raw is None or raw == "":
        return None
    try:
        return parse_timestamp(raw, datetime.now(UTC)).timestamp()
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(f"as_of: {exc}") from exc


def create_app(services: Services, worker: UploadWorker | None = None) -> FastAPI:
    """Build the HTTP app around already-loaded services (models, catalog, bucket).

    ``worker`` processes upload notifications; by default one is made here (sweeping every
    ``UPLOAD_SWEEP_SECONDS`` when that is set) and started with the app.
    """
    settings = services.settings
    uploads = worker or UploadWorker(services.uploads, sweep_seconds=settings.upload_sweep_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving catalog %s (%d products)", services.catalog.uri, services.catalog.count())
        uploads.start()
        if services.hot is not None:
            services.load_startup_file()
            services.hot.start()
        services.recommender.start()
        yield
        services.recommender.stop()
        if services.hot is not None:
            services.hot.stop()
        uploads.stop()

    app = FastAPI(
        title="Multimodal product search & recommendations",
        version=services.version,
        description="Text and image search, similar products and recommendations over a "
        "LanceDB catalog on S3-compatible storage.",
        lifespan=lifespan,
    )
    if settings.cors_origin_list:
        # Closed by default: only origins named in CORS_ORIGINS may call the API from a browser on another site.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.state.services = services
    app.state.uploads = uploads
    metrics = Metrics(services)
    app.state.metrics = metrics
    traffic = RequestLog()
    queries = QueryLog()
    started_at = datetime.now(UTC)
    stats_cache: dict[int, CatalogStatsOut] = {}
    weights_default = services.default_weights

    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        code = status_for(exc)
        if code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    def require_api_key(authorization: Annotated[str | None, Header()] = None) -> None:
        check_bearer(authorization, settings.api_key, "API_KEY")

    def require_webhook_token(authorization: Annotated[str | None, Header()] = None) -> None:
        check_bearer(authorization, settings.webhook_token, "WEBHOOK_TOKEN")

    def image_url(request: Request, p: Product) -> str | None:
        # What url_for("product_image") gives, with the id percent-encoded, without its route
        # search (a tenth of a millisecond per result on these cores).
        return f"{request.base_url}products/{quote(p.product_id, safe='')}/image" if p.image else None

    def product_out(request: Request, p: Product) -> ProductOut:
        return ProductOut(
            product_id=p.product_id,
            title=p.title,
            description=p.description,
            category=p.category,
            price=p.price,
            image=p.image,
            image_url=image_url(request, p),
            attributes=p.attributes,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )

    def filters_from(f: FiltersIn | None) -> Filters:
        if f is None:
            return Filters()
        cats = (f.category,) if isinstance(f.category, str) else tuple(f.category) if f.category else None
        return Filters(categories=cats, min_price=f.min_price, max_price=f.max_price)

    async def query_filters(
        category: Annotated[list[str] | None, Query(description="Category (repeat for any-of).")] = None,
        min_price: Annotated[float | None, Query(ge=0)] = None,
        max_price: Annotated[float | None, Query(ge=0)] = None,
    ) -> Filters:
        try:
            return filters_from(FiltersIn(category=category, min_price=min_price, max_price=max_price))
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None

    def result(request: Request, h: SearchHit) -> SearchResult:
        p = h.product
        return SearchResult(
            product_id=p.product_id,
            title=p.title,
            description=p.description,
            category=p.category,
            price=p.price,
            image_url=image_url(request, p),
            score=round(h.score, 6),
            image_similarity=None if h.image_similarity is None else round(h.image_similarity, 6),
            text_similarity=None if h.text_similarity is None else round(h.text_similarity, 6),
            keyword_score=None if h.keyword_score is None else round(h.keyword_score, 6),
            attributes=p.attributes,
        )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    def search_products(body: SearchRequest, request: Request) -> SearchResponse:
        """Text search, search by photo (`image_base64`), or both; with filters and weights."""
        started = time.perf_counter()
        image = None
        if body.image_base64:
            image = decode_image(
                _decode_b64(body.image_base64),
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                min_side=getattr(services.embedder.clip, "image_size", None),
            )
        q = SearchQuery(
            text=body.query,
            image=image,
            top_k=body.top_k,
            filters=filters_from(body.filters),
            weights=Weights(body.weights.image, body.weights.text) if body.weights else None,
            mode=body.mode or settings.search_mode,
            keyword_weight=settings.hybrid_keyword_weight if body.keyword_weight is None else body.keyword_weight,
        )
        timings = Timings()
        hits = search(
            services.catalog,
            services.embedder,
            q,
            weights_default,
            hot=services.hot,
            cache=services.query_cache,
            timings=timings,
        )
        kind = "image" if image is not None else "text"
        if timings.inference:
            metrics.inference.labels(kind).observe(timings.inference)
        if timings.cache_hit is not None:
            metrics.cache_requests.labels("hit" if timings.cache_hit else "miss").inc()
        metrics.vector_search.labels("/search").observe(timings.vector_search)
        if body.query and body.query.strip():
            queries.record(body.query)
        elif image is not None:
            queries.record("(search by photo)")
        return SearchResponse(
            results=[result(request, h) for h in hits],
            query_time_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def in_memory_or_thread(in_memory: bool, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` right here when it only reads memory (a few milliseconds of numpy: a worker
        thread hand-off would cost ~0.4 ms of it), else in the thread pool (it may do I/O)."""
        if in_memory:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    @app.get("/similar/{product_id}", response_model=SimilarResponse, tags=["search"])
    async def similar_products(
        request: Request,
        product_id: Annotated[str, Path(max_length=256)],
        filters: Annotated[Filters, Depends(query_filters)],
        top_k: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> SimilarResponse:
        """Products most like this one (never itself). 404 for an unknown product."""
        started = time.perf_counter()
        hot = services.hot
        fast = hot is not None and hot.in_memory and hot.snapshot is not None and product_id in hot.snapshot.index
        hits = await in_memory_or_thread(
            fast, similar, services.catalog, product_id, top_k, weights_default, filters, hot
        )
        metrics.vector_search.labels("/similar").observe(time.perf_counter() - started)
        return SimilarResponse(
            product_id=product_id,
            similar_products=[
                SimilarProduct(
                    product_id=h.product.product_id,
                    title=h.product.title,
                    category=h.product.category,
                    price=h.product.price,
                    image_url=image_url(request, h.product),
                    similarity=round(h.score, 6),
                )
                for h in hits
            ],
            query_time_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def recommendation_out(request: Request, r: Recommended) -> Recommendation:
        return Recommendation(
            product_id=r.product.product_id,
            title=r.product.title,
            category=r.product.category,
            price=r.product.price,
            image_url=image_url(request, r.product),
            score=round(r.score, 6),
            reason=r.reason,
        )

    def recommendations_out(request: Request, user_id: str, result: RecommendationResult) -> RecommendationsResponse:
        return RecommendationsResponse(
            user_id=user_id,
            strategy=result.strategy,
            model=services.recommender.model_key,
            recommendations=[recommendation_out(request, r) for r in result.items],
        )

    @app.get("/recommendations/{user_id}", response_model=RecommendationsResponse, tags=["recommend"])
    async def recommendations(
        request: Request,
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        filters: Annotated[Filters, Depends(query_filters)],
        top_k: Annotated[int, Query(ge=1, le=100)] = 10,
        exclude_seen: Annotated[
            bool | None, Query(description="Leave out products the user interacted with (default RECS_EXCLUDE_SEEN).")
        ] = None,
        as_of: Annotated[
            str | None,
            Query(
                description="Recommend as of this moment (ISO-8601 or epoch seconds; default now): every time "
                "signal is computed as of it, and only the user's events before it count (replays, evaluation)."
            ),
        ] = None,
    ) -> RecommendationsResponse:
        """Personalized recommendations, each with a reason. Users without history (or unknown
        users) get what is popular now; with no events at all, the newest products."""
        rec = services.recommender
        at = as_of_seconds(as_of)
        result = await in_memory_or_thread(rec.in_memory, rec.recommend, user_id, top_k, filters, exclude_seen, at)
        return recommendations_out(request, user_id, result)

    @app.post("/recommendations", response_model=MoreLikeResponse, tags=["recommend"])
    async def more_like_these(request: Request, body: MoreLikeRequest) -> MoreLikeResponse:
        """ "More like these, less like those": products similar to `positive` and unlike
        `negative` (content embeddings and co-interaction), optionally leaving out what
        `user_id` has already seen."""
        rec = services.recommender
        result = await in_memory_or_thread(
            rec.in_memory,
            rec.more_like,
            body.positive,
            body.negative,
            body.user_id,
            body.top_k,
            filters_from(body.filters) if body.filters else Filters(),
            as_of_seconds(None if body.as_of is None else str(body.as_of)),
        )
        return MoreLikeResponse(
            strategy=result.strategy, recommendations=[recommendation_out(request, r) for r in result.items]
        )

    events_auth = [] if settings.events_public else [Depends(require_api_key)]

    @app.post(
        "/events",
        status_code=202,
        response_model=EventsResponse,
        tags=["events"],
        dependencies=events_auth,
        responses={422: {"description": "No item was valid; per-item errors in `errors`."}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/EventIn"},
                                {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(request: Request) -> Any:
        """One event or a list (up to MAX_EVENTS_PER_REQUEST). Good items are stored and count
        at once; each bad item is reported by position with its reason and does not block the
        others. Unknown product ids are accepted (the product may not be indexed yet)."""
        try:
            payload = await request.json()
        except ValueError:
            raise errors.InvalidInput("body must be JSON: one event object or a list of them") from None
        items = payload if isinstance(payload, list) else [payload]
        if not items:
            raise errors.InvalidInput("no events in the request")
        if len(items) > settings.max_events_per_request:
            raise errors.PayloadTooLarge(
                f"{len(items)} events in one request; the limit is {settings.max_events_per_request}"
            )
        good, bad = parse_events(items)
        errs = [EventErrorOut(index=e.index, detail=e.detail) for e in bad]
        if not good:
            return JSONResponse(
                {
                    "detail": f"no valid event among {len(items)} item(s)",
                    "accepted": 0,
                    "rejected": len(bad),
                    "errors": [e.model_dump() for e in errs],
                },
                status_code=422,
            )
        await run_in_threadpool(services.events.append, good)
        services.recommender.observe(good)
        for e in good:
            metrics.events.labels(e.event_type).inc()
        return EventsResponse(accepted=len(good), rejected=len(bad), errors=errs)

    @app.get("/users/{user_id}/history", response_model=HistoryResponse, tags=["events"])
    def user_history(
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> HistoryResponse:
        """The user's latest events, newest first (an unknown user has an empty history)."""
        rec = services.recommender
        snap = rec.snapshot
        return HistoryResponse(
            user_id=user_id,
            events=[
                HistoryEvent(
                    product_id=pid,
                    title=snap.products[snap.index[pid]].title if pid in snap.index else None,
                    event_type=et,
                    value=v,
                    timestamp=datetime.fromtimestamp(ts, UTC),
                )
                for ts, pid, et, v in rec.state.recent(user_id, limit)
            ],
        )

    @app.get("/products/{product_id}", response_model=ProductOut, tags=["products"])
    def get_product(request: Request, product_id: Annotated[str, Path(max_length=256)]) -> ProductOut:
        return product_out(request, services.catalog.get(product_id))

    @app.put(
        "/products/{product_id}",
        response_model=ProductOut,
        tags=["products"],
        dependencies=[Depends(require_api_key)],
    )
    def put_product(request: Request, product_id: Annotated[str, Path(max_length=256)], body: ProductIn) -> ProductOut:
        """Create or replace a product (PUT replaces: fields left out are cleared, the image too).
        The image comes as `image_base64` (stored in the bucket) or `image` (an existing key)."""
        if body.product_id is not None and body.product_id != product_id:
            raise errors.InvalidInput("product_id in the body does not match the path")
        raw: dict[str, Any] = body.model_dump(exclude={"image_base64", "product_id"}, exclude_none=True)
        raw["product_id"] = product_id
        product = ProductInput.from_mapping(raw)
        data = _decode_b64(body.image_base64) if body.image_base64 else None
        pending = PendingProduct(product, source="api", image_bytes=data, image_key=product.image)
        report = services.indexer.index([pending], keep_stored=True)
        if report.failed:
            failure = report.failed[0]
            raise (errors.PayloadTooLarge if failure.too_large else errors.InvalidInput)(failure.reason)
        # What was just written is what a read would return; an unchanged product is read back.
        stored = (report.stored or {}).get(product_id) or services.catalog.get(product_id)
        return product_out(request, stored)

    @app.delete(
        "/products/{product_id}",
        response_model=DeleteResponse,
        tags=["products"],
        dependencies=[Depends(require_api_key)],
    )
    def delete_product(product_id: Annotated[str, Path(max_length=256)]) -> DeleteResponse:
        services.catalog.delete(product_id)
        return DeleteResponse(product_id=product_id, deleted=True)

    @app.get(
        "/products/{product_id}/image",
        name="product_image",
        tags=["products"],
        response_class=Response,
        responses={200: {"description": "The image bytes", "content": {"image/*": {}}}},
    )
    def product_image(product_id: Annotated[str, Path(max_length=256)]) -> Response:
        """The product's image bytes (404 if the product has none)."""
        p = services.catalog.get(product_id)
        if p.image is None:
            raise errors.NotFound(f"product {product_id!r} has no image")
        data = services.store.get_bytes(p.image, max_bytes=settings.max_image_bytes)
        return Response(
            data,
            media_type=sniff_content_type(data),
            headers={"Cache-Control": "public, max-age=300"},
        )

    @app.post(
        "/triggers/s3",
        status_code=202,
        response_model=TriggerResponse,
        tags=["uploads"],
        dependencies=[Depends(require_webhook_token)],
    )
    def s3_trigger(payload: Annotated[Any, Body()]) -> TriggerResponse:
        """S3 event notifications (AWS `Records`, MinIO webhook, EventBridge `detail`). Metadata
        files under `uploads/` are queued for indexing and the call returns at once."""
        events = parse_notification(payload)
        queue: list[str] = []
        ignored: list[IgnoredKey] = []
        for ev in events:
            if ev.bucket is not None and ev.bucket != services.store.bucket:
                ignored.append(IgnoredKey(key=ev.key, reason=f"bucket {ev.bucket!r} is not served here"))
            elif not is_upload_metadata(ev.key):
                ignored.append(IgnoredKey(key=ev.key, reason="not a .json/.jsonl/.csv file under uploads/"))
            else:
                queue.append(ev.key)
        uploads.start()
        uploads.submit(queue)
        return TriggerResponse(accepted=len(queue), keys=queue, ignored=ignored)

    @app.get("/uploads", response_model=UploadsResponse, tags=["uploads"])
    def list_uploads(
        status: Annotated[Literal["pending", "indexed", "partial", "failed"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> UploadsResponse:
        """Ingest records of upload objects, newest first."""
        records, total = services.uploads.log.list(status, limit, offset)
        return UploadsResponse(
            uploads=[UploadOut(**dataclasses.asdict(r)) for r in records],
            total=total,
            limit=limit,
            offset=offset,
            queued=uploads.queued,
        )

    @app.get("/health", response_model=HealthResponse, tags=["ops"])
    def health(response: Response) -> HealthResponse:
        db_ok = services.catalog.ping()
        s3_ok = services.store.ping()
        count = version = None
        if db_ok:
            try:
                count, version = services.catalog.count(), services.catalog.version
            except errors.Unavailable:
                db_ok = False
        clip = services.embedder.clip
        status = "healthy"
        warnings = [*services.warnings, *services.problems.values()]
        if not s3_ok:
            warnings.append("object storage unreachable: answering from cached data where possible")
        if warnings:
            status = "degraded"
        if not db_ok:
            status = "unhealthy"
            response.status_code = 503
        return HealthResponse(
            status=status,
            version=services.version,
            models_loaded=True,
            database_connected=db_ok,
            storage_connected=s3_ok,
            product_count=count,
            dataset_version=version,
            clip_model=clip.name,
            clip_mode="random-init (CLIP_PRETRAINED=none)" if clip.random_init else "pretrained",
            text_model=services.embedder.text.name,
            text_runtime=services.embedder.text_runtimes,
            image_runtime=services.embedder.image_runtime,
            recommendation_model=services.recommender.model_key,
            warnings=warnings,
        )

    def catalog_figures() -> CatalogStatsOut:
        version = services.catalog.version
        cached = stats_cache.get(version)
        if cached is None:
            _, table = services.catalog.scan(["category", "price"])
            st = catalog_stats(table, version)
            p = st.prices
            cached = CatalogStatsOut(
                products=st.products,
                dataset_version=version,
                categories=[CategoryCountOut(category=c.category, count=c.count) for c in st.categories],
                prices=PriceHistogramOut(
                    edges=p.edges, counts=p.counts, priced=p.priced, min=p.minimum, median=p.median, max=p.maximum
                ),
            )
            stats_cache.clear()
            stats_cache[version] = cached
        return cached

    @app.get("/stats", response_model=StatsResponse, tags=["ops"])
    def stats(
        window_minutes: Annotated[float, Query(gt=0, le=24 * 60, description="Traffic window")] = 15,
        top: Annotated[int, Query(ge=1, le=100, description="How many top queries")] = 10,
    ) -> StatsResponse:
        """Figures for the analytics view: catalog by category and price, events by type,
        ingest status, this process's request latency and traffic over time, top queries."""
        state = services.recommender.state
        users, recent = state.users(20)
        by_type = state.type_counts()
        # A process younger than the window has no older traffic: start the timeline at its start.
        uptime = (datetime.now(UTC) - started_at).total_seconds()
        t = traffic.summary(max(60.0, min(window_minutes * 60, uptime)), buckets=30)
        return StatsResponse(
            catalog=catalog_figures(),
            events=EventStatsOut(
                total=sum(by_type.values()),
                by_type=by_type,
                users=users,
                recent_users=[
                    ActiveUser(user_id=u, events=n, last_event_at=datetime.fromtimestamp(ts, UTC))
                    for u, n, ts in recent
                ],
            ),
            uploads=UploadStatsOut(by_status=services.uploads.log.counts(), queued=uploads.queued),
            traffic=TrafficStatsOut(
                window_s=t.window_s,
                bucket_s=t.bucket_s,
                requests=t.requests,
                errors=t.errors,
                routes=[RouteStatsOut(**dataclasses.asdict(r)) for r in t.routes],
                timeline=[
                    TrafficBucketOut(
                        start=datetime.fromtimestamp(b.start, UTC),
                        requests=b.requests,
                        errors=b.errors,
                        p50_ms=b.p50_ms,
                        p95_ms=b.p95_ms,
                    )
                    for b in t.timeline
                ],
            ),
            top_queries=[TopQuery(query=q, count=n) for q, n in queries.top(top)],
            searches=queries.total,
            started_at=started_at,
        )

    @app.get(
        "/admin/versions", response_model=VersionsResponse, tags=["admin"], dependencies=[Depends(require_api_key)]
    )
    def catalog_versions(limit: Annotated[int, Query(ge=1, le=200)] = 20) -> VersionsResponse:
        """Stored versions of the products table, newest first, with their product counts."""
        return VersionsResponse(
            current=services.catalog.version,
            retention_hours=settings.version_retention_hours,
            versions=[
                VersionOut(version=v.version, timestamp=v.timestamp, products=v.products)
                for v in services.catalog.versions(limit)
            ],
        )

    @app.post(
        "/admin/rollback", response_model=RollbackResponse, tags=["admin"], dependencies=[Depends(require_api_key)]
    )
    def rollback(body: RollbackRequest) -> RollbackResponse:
        """Make a stored catalog version current again (committed as a new version, so it can be
        undone). Other query processes pick it up within CATALOG_REFRESH_SECONDS. 404 if the
        version does not exist or was cleaned up."""
        previous = services.catalog.version
        new = services.catalog.restore(body.version)
        services.recommender.refresh()
        return RollbackResponse(
            restored=body.version, version=new, previous=previous, products=services.catalog.count()
        )

    @app.get("/ui/vendor/plotly.min.js", include_in_schema=False)
    def plotly(request: Request) -> Response:
        plain, packed = plotly_js()
        headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(packed, media_type="text/javascript", headers=headers)
        return Response(plain, media_type="text/javascript", headers=headers)

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def observe(method: str, route: str, status: int, elapsed: float) -> None:
        metrics.request_duration.labels(method, route, str(status)).observe(elapsed)
        if route not in UNTRACKED_ROUTES:
            traffic.record(f"{method} {route}", status, elapsed)

    app.add_middleware(TimeRequests, observe=observe)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests, wait_s=settings.queue_wait_seconds)
    # Outermost: bodies over MAX_REQUEST_BYTES are refused before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    default_openapi = app.openapi

    def openapi_with_errors() -> dict[str, Any]:
        """The generated schema plus what FastAPI cannot infer: POST /events' body (validated item
        by item) and the error answers every operation may give (`{"detail": ...}`: a message,
        or FastAPI's list of validation errors)."""
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["EventIn"] = EventIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components["ErrorResponse"] = ERROR_SCHEMA
            error = {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    old = responses.get("422", {})
                    responses["422"] = {**error, "description": old.get("description", "Invalid input")}
                    responses.setdefault(
                        "4XX", {**error, "description": "Bad request: unauthorized, forbidden, not found, too large"}
                    )
                    responses.setdefault("503", {**error, "description": "Storage or model unavailable; retry"})
        return app.openapi_schema or default_openapi()

    app.openapi = openapi_with_errors  # type: ignore[method-assign]
    return app
