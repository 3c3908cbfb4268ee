"""``POST /search``, ``GET /suggest`` and ``GET /similar/{id}``."""

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from PIL import Image

from core.embedding.batcher import TextVectors
from core.images import decode_image
from core.search import (
    SearchPage,
    SearchQuery,
    Timings,
    answers_from_memory,
    encode_first,
    loaded_snapshot,
    search,
    searches_memory,
    similar,
)
from core.suggest import MAX_PREFIX_CHARS, Suggestion, suggest
from core.types import Filters, Weights
from functions.routes.deps import (
    QueryMerchandising,
    api_of,
    decode_base64,
    in_memory_or_thread,
    query_filters,
    query_merchandising,
    rate_limit,
    require_read,
)
from functions.schemas import (
    SearchRequest,
    SearchResponse,
    SimilarProduct,
    SimilarResponse,
    SuggestionOut,
    SuggestResponse,
)

router = APIRouter(tags=["search"], dependencies=[Depends(require_read)])


@router.post("/search", response_model=SearchResponse)
async def search_products(body: SearchRequest, request: Request) -> SearchResponse:
    """Text search, search by photo (`image_base64`), or both; with filters and weights."""
    started = time.perf_counter()
    api = api_of(request)
    services, settings, metrics = api.services, api.services.settings, api.metrics
    if body.image_base64:
        rate_limit(api.image_search_limits, request, "searches by photo")
    filters = body.stock_and_exclusions(body.filters.to_core() if body.filters else Filters())
    merch = services.rules.current().merchandising(body.query, filters, body.merchandising())

    def query(image: Image.Image | None) -> SearchQuery:
        return SearchQuery(
            text=body.query,
            image=image,
            top_k=body.top_k,
            filters=filters,
            merch=merch,
            weights=Weights(body.weights.image, body.weights.text) if body.weights else None,
            mode=body.mode or settings.search_mode,
            keyword_weight=settings.hybrid_keyword_weight if body.keyword_weight is None else body.keyword_weight,
            offset=body.offset,
            sort=body.sort,
            facets=tuple(dict.fromkeys(body.facets or ())),
            typo_tolerance=body.typo_tolerance,
        )

    text_query = None if body.image_base64 else query(None)
    in_memory = text_query is not None and answers_from_memory(
        text_query, services.default_weights, services.hot, services.query_cache
    )
    encoded: TextVectors | None = None
    inference = 0.0
    first = None
    if text_query is not None and not in_memory:
        first = encode_first(text_query, services.default_weights, services.hot, services.encoder)
    if text_query is not None and first is not None and services.encoder is not None:
        # Only the encode stands between this query and a search from memory: await it here
        # instead of blocking a worker thread on it (under load, dozens of blocked threads
        # woke at once to contend with the encoder's own threads for the GIL).
        t0 = time.perf_counter()
        encoded = await asyncio.wrap_future(services.encoder.submit_text(*first))
        inference = time.perf_counter() - t0
        # A write by this process meanwhile makes the next search refresh (I/O): then a thread.
        in_memory = searches_memory(text_query, services.hot)

    def run(q: SearchQuery | None) -> tuple[SearchQuery, SearchPage, Timings]:
        if q is None:  # a photo: decoded here, off the event loop
            image = decode_image(
                decode_base64(body.image_base64 or ""),
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                min_side=getattr(services.embedder.clip, "image_size", None),
            )
            q = query(image)
        t = Timings()
        page = search(
            services.catalog,
            services.embedder,
            q,
            services.default_weights,
            hot=services.hot,
            cache=services.query_cache,
            timings=t,
            encoder=services.encoder,
            # A search from memory takes a millisecond: no point waiting on another's (which
            # would also hold up the event loop it runs on).
            flights=None if in_memory else services.flights,
            match_candidates=settings.match_candidates,
            encoded=encoded,
        )
        return q, page, t

    q, page, timings = await in_memory_or_thread(in_memory, run, text_query)
    timings.inference += inference
    if timings.inference:
        metrics.inference.labels("image" if q.image is not None else "text").observe(timings.inference)
    if timings.cache_hit is not None:
        metrics.cache_requests.labels("hit" if timings.cache_hit else "miss").inc()
    metrics.vector_search.labels("/search").observe(timings.vector_search)
    if body.query and body.query.strip():
        api.queries.record(body.query)
    elif q.image is not None:
        api.queries.record("(search by photo)")
    return SearchResponse.of(page, api.links(request), started, merch.rules)


@router.get("/suggest", response_model=SuggestResponse)
async def suggest_queries(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=MAX_PREFIX_CHARS, description="What was typed so far.")],
    limit: Annotated[int, Query(ge=1, le=20)] = 10,
) -> SuggestResponse:
    """Completions for a search box: popular past queries, categories and products (their
    titles) that start like the typed text, typo-tolerant from 4 letters."""
    started = time.perf_counter()
    api = api_of(request)
    hot = api.services.hot

    def run() -> list[Suggestion]:
        snap = loaded_snapshot(hot, "suggestions")
        return suggest(snap, q, limit, api.queries.starting_with(q, limit))

    # In the thread pool: the first suggestion after a catalog change sorts the vocabulary.
    found = await in_memory_or_thread(False, run)
    return SuggestResponse(
        suggestions=[SuggestionOut(text=s.text, kind=s.kind, product_id=s.product_id) for s in found],
        query_time_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.get("/similar/{product_id}", response_model=SimilarResponse)
async def similar_products(
    request: Request,
    product_id: Annotated[str, Path(max_length=256)],
    filters: Annotated[Filters, Depends(query_filters)],
    shop: Annotated[QueryMerchandising, Depends(query_merchandising)],
    top_k: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SimilarResponse:
    """Products most like this one (never itself). 404 for an unknown product."""
    started = time.perf_counter()
    api = api_of(request)
    services = api.services
    hot = services.hot
    filters = shop.filters(filters)
    merch = services.rules.current().merchandising(None, filters, shop.merch)
    hits = await in_memory_or_thread(
        hot is not None and hot.holds(product_id),
        similar,
        services.catalog,
        product_id,
        top_k,
        services.default_weights,
        filters,
        hot,
        merch,
    )
    api.metrics.vector_search.labels("/similar").observe(time.perf_counter() - started)
    links = api.links(request)
    return SimilarResponse(
        product_id=product_id,
        similar_products=[SimilarProduct.of(h, links) for h in hits],
        applied_rules=list(merch.rules),
        query_time_ms=round((time.perf_counter() - started) * 1000, 2),
    )
