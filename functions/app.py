"""The HTTP app factory: wires the routers (:mod:`functions.routes`), the middlewares and the
error map around already-loaded services."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from core.analytics import CatalogStatsCache
from core.ratelimit import RateLimiter
from core.uploads import UploadGate
from functions import errors
from functions.metrics import ApiMetrics
from functions.middleware import BodySizeLimit, ConcurrencyLimit, TimeRequests
from functions.routes import admin, events, ops, products, recommend, rules, search, ui, uploads
from functions.routes.deps import Api, UploadQueue
from functions.schemas import EventIn
from functions.security import ImageSigner, check_deployment
from functions.services import Services
from functions.upload_worker import UploadWorker

log = logging.getLogger(__name__)

# Requests the analytics view does not count as traffic: the dashboard's own assets and polling.
UNTRACKED_ROUTES = frozenset({"/ui", "/stats", "/metrics", "/", ui.PLOTLY_PATH})


def create_app(services: Services, worker: UploadQueue | None = None) -> FastAPI:
    """Build the HTTP app around already-loaded services (models, catalog, bucket). In
    production (``DEPLOYMENT``) it refuses to run without its secrets (:func:`check_deployment`).

    ``worker`` takes upload notifications; by default an :class:`UploadWorker` is made here
    (sweeping every ``UPLOAD_SWEEP_SECONDS`` when that is set) and started with the app.
    """
    settings = services.settings
    check_deployment(settings)
    api = Api(
        services=services,
        uploads=worker or UploadWorker(services.uploads, sweep_seconds=settings.upload_sweep_seconds),
        metrics=ApiMetrics(services),
        catalog_stats=CatalogStatsCache(services.catalog),
        gate=UploadGate(services.store, settings.max_upload_bytes, settings.webhook_keys_per_minute),
        write_limits=RateLimiter(settings.write_rate_limit) if settings.write_rate_limit else None,
        image_search_limits=RateLimiter(settings.image_search_rate_limit) if settings.image_search_rate_limit else None,
        signer=ImageSigner(settings.read_api_key, settings.image_url_ttl_seconds) if settings.read_api_key else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving catalog %s (%d products)", services.catalog.uri, services.catalog.count())
        api.uploads.start()
        if services.hot is not None:
            services.load_startup_file()
            services.hot.start()
        services.recommender.start()
        services.rules.current()  # read before the first request (never raises; the thread retries)
        services.rules.start()
        yield
        services.rules.stop()
        services.recommender.stop()
        if services.hot is not None:
            services.hot.stop()
        api.uploads.stop()

    app = FastAPI(
        title="Multimodal product search & recommendations",
        version=services.version,
        description="Text and image search, similar products and recommendations over a "
        "LanceDB catalog on S3-compatible storage.",
        lifespan=lifespan,
    )
    app.state.api = api
    app.state.services = services
    for module in (search, recommend, events, products, rules, uploads, ops, admin, ui):
        app.include_router(module.router)
    app.mount("/ui", StaticFiles(directory=ui.UI_DIR, html=True), name="ui")
    errors.install(app, {"EventIn": EventIn})

    def observe(method: str, route: str, status: int, elapsed: float) -> None:
        api.metrics.request_duration.labels(method, route, str(status)).observe(elapsed)
        if route not in UNTRACKED_ROUTES:
            api.traffic.record(f"{method} {route}", status, elapsed)

    if settings.cors_origin_list:
        # Closed by default: only origins named in CORS_ORIGINS may call the API from a browser on another site.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(TimeRequests, observe=observe)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests, wait_s=settings.queue_wait_seconds)
    # Outermost: bodies over MAX_REQUEST_BYTES are refused before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app
