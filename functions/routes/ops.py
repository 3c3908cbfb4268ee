"""``GET /health``, ``GET /stats`` (the dashboard's analytics) and ``GET /metrics`` (Prometheus)."""

import dataclasses
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.health import check_health
from functions.routes.deps import api_of, require_api_key
from functions.schemas import (
    ActiveUser,
    CatalogStatsOut,
    CategoryCountOut,
    EventStatsOut,
    HealthResponse,
    PriceHistogramOut,
    RouteStatsOut,
    StatsResponse,
    TopQuery,
    TrafficBucketOut,
    TrafficStatsOut,
    UploadStatsOut,
)

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthResponse)
def health(request: Request, response: Response) -> HealthResponse:
    services = api_of(request).services
    h = check_health(services.catalog, services.store, [*services.warnings, *services.problems.values()])
    if h.status == "unhealthy":
        response.status_code = 503
    clip = services.embedder.clip
    return HealthResponse(
        status=h.status,
        version=services.version,
        models_loaded=True,
        database_connected=h.database_connected,
        storage_connected=h.storage_connected,
        product_count=h.product_count,
        dataset_version=h.dataset_version,
        clip_model=clip.name,
        clip_mode="random-init (CLIP_PRETRAINED=none)" if clip.random_init else "pretrained",
        text_model=services.embedder.text.name,
        text_runtime=services.embedder.text_runtimes,
        image_runtime=services.embedder.image_runtime,
        recommendation_model=services.recommender.model_key,
        warnings=h.warnings,
    )


@router.get("/stats", response_model=StatsResponse, dependencies=[Depends(require_api_key)])
def stats(
    request: Request,
    window_minutes: Annotated[float, Query(gt=0, le=24 * 60, description="Traffic window")] = 15,
    top: Annotated[int, Query(ge=1, le=100, description="How many top queries")] = 10,
) -> StatsResponse:
    """Figures for the analytics view: catalog by category and price, events by type,
    ingest status, this process's request latency and traffic over time, top queries. Shopper
    data (user ids, queries): needs `API_KEY` when one is set."""
    api = api_of(request)
    state = api.services.recommender.state
    users, recent = state.users(20)
    by_type = state.type_counts()
    # A process younger than the window has no older traffic: start the timeline at its start.
    uptime = (datetime.now(UTC) - api.started_at).total_seconds()
    t = api.traffic.summary(max(60.0, min(window_minutes * 60, uptime)), buckets=30)
    cat = api.catalog_stats.get()
    p = cat.prices
    return StatsResponse(
        catalog=CatalogStatsOut(
            products=cat.products,
            dataset_version=cat.version,
            categories=[CategoryCountOut(category=c.category, count=c.count) for c in cat.categories],
            prices=PriceHistogramOut(
                edges=p.edges, counts=p.counts, priced=p.priced, min=p.minimum, median=p.median, max=p.maximum
            ),
        ),
        events=EventStatsOut(
            total=sum(by_type.values()),
            by_type=by_type,
            users=users,
            recent_users=[
                ActiveUser(user_id=u, events=n, last_event_at=datetime.fromtimestamp(ts, UTC)) for u, n, ts in recent
            ],
        ),
        uploads=UploadStatsOut(by_status=api.services.uploads.log.counts(), queued=api.uploads.queued),
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
        top_queries=[TopQuery(query=q, count=n) for q, n in api.queries.top(top)],
        searches=api.queries.total,
        started_at=api.started_at,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
)
def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(api_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
