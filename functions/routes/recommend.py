"""``GET /recommendations/{user_id}``, ``POST /recommendations`` (more like these) and
``GET /products/{id}/bought-together``."""

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from core.types import Filters
from functions.routes.deps import (
    QueryMerchandising,
    api_of,
    as_of_seconds,
    id_list,
    in_memory_or_thread,
    query_filters,
    query_merchandising,
    require_read,
)
from functions.schemas import (
    BoughtTogetherResponse,
    MoreLikeRequest,
    MoreLikeResponse,
    Recommendation,
    RecommendationsResponse,
)

router = APIRouter(tags=["recommend"], dependencies=[Depends(require_read)])


@router.get("/recommendations/{user_id}", response_model=RecommendationsResponse)
async def recommendations(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    filters: Annotated[Filters, Depends(query_filters)],
    shop: Annotated[QueryMerchandising, Depends(query_merchandising)],
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
    api = api_of(request)
    rec = api.services.recommender
    at = as_of_seconds(as_of)
    filters = shop.filters(filters)
    merch = api.services.rules.current().merchandising(None, filters, shop.merch)
    result = await in_memory_or_thread(rec.in_memory, rec.recommend, user_id, top_k, filters, exclude_seen, at, merch)
    links = api.links(request)
    return RecommendationsResponse(
        user_id=user_id,
        strategy=result.strategy,
        model=rec.model_key,
        recommendations=[Recommendation.of(r, links) for r in result.items],
        applied_rules=list(merch.rules),
    )


@router.post("/recommendations", response_model=MoreLikeResponse)
async def more_like_these(request: Request, body: MoreLikeRequest) -> MoreLikeResponse:
    """ "More like these, less like those": products similar to `positive` and unlike
    `negative` (content embeddings and co-interaction), optionally leaving out what
    `user_id` has already seen."""
    api = api_of(request)
    rec = api.services.recommender
    filters = body.stock_and_exclusions(body.filters.to_core() if body.filters else Filters())
    merch = api.services.rules.current().merchandising(None, filters, body.merchandising())
    result = await in_memory_or_thread(
        rec.in_memory,
        rec.more_like,
        body.positive,
        body.negative,
        body.user_id,
        body.top_k,
        filters,
        as_of_seconds(None if body.as_of is None else str(body.as_of)),
        merch,
    )
    links = api.links(request)
    return MoreLikeResponse(
        strategy=result.strategy,
        recommendations=[Recommendation.of(r, links) for r in result.items],
        applied_rules=list(merch.rules),
    )


@router.get("/products/{product_id}/bought-together", response_model=BoughtTogetherResponse)
async def bought_together(
    request: Request,
    product_id: Annotated[str, Path(min_length=1, max_length=256)],
    filters: Annotated[Filters, Depends(query_filters)],
    top_k: Annotated[int, Query(ge=1, le=100)] = 10,
    exclude_ids: Annotated[
        str | None, Query(max_length=100_000, description="Comma-separated product ids never to return.")
    ] = None,
    include_out_of_stock: Annotated[bool, Query(description="Also return products that are out of stock.")] = False,
) -> BoughtTogetherResponse:
    """Products shoppers add to the same basket as this one (add-to-carts and purchases within
    BOUGHT_TOGETHER_SESSION_MINUTES of each other), from the events so far: no training needed.
    404 for an unknown product."""
    api = api_of(request)
    rec = api.services.recommender
    excluded = frozenset(id_list(exclude_ids, "exclude_ids", 1000))
    filters = replace(filters, exclude_ids=excluded, include_out_of_stock=include_out_of_stock)
    # In the thread pool: the first call after new events rebuilds the basket counts.
    found = await in_memory_or_thread(False, rec.bought_together, product_id, top_k, filters)
    links = api.links(request)
    return BoughtTogetherResponse(product_id=product_id, products=[Recommendation.of(r, links) for r in found])
