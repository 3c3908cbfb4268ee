"""``POST /events`` and ``GET /users/{id}/history``."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core import errors
from core.events import parse_events
from functions.routes.deps import api_of, require_api_key, require_event_writer
from functions.schemas import EventErrorOut, EventsResponse, HistoryEvent, HistoryResponse

router = APIRouter(tags=["events"])

ONE_OR_MANY = {
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


@router.post(
    "/events",
    status_code=202,
    response_model=EventsResponse,
    dependencies=[Depends(require_event_writer)],
    responses={422: {"description": "No item was valid; per-item errors in `errors`."}},
    openapi_extra={"requestBody": ONE_OR_MANY},
)
async def post_events(request: Request) -> Any:
    """One event or a list (up to MAX_EVENTS_PER_REQUEST). Good items are stored and count
    at once; each bad item is reported by position with its reason and does not block the
    others. Unknown product ids are accepted (the product may not be indexed yet)."""
    api = api_of(request)
    try:
        payload = await request.json()
    except ValueError:
        raise errors.InvalidInput("body must be JSON: one event object or a list of them") from None
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise errors.InvalidInput("no events in the request")
    limit = api.services.settings.max_events_per_request
    if len(items) > limit:
        raise errors.PayloadTooLarge(f"{len(items)} events in one request; the limit is {limit}")
    good, bad = parse_events(items)
    errs = [EventErrorOut(index=e.index, detail=e.detail) for e in bad]
    if not good:
        body = {
            "detail": f"no valid event among {len(items)} item(s)",
            "accepted": 0,
            "rejected": len(bad),
            "errors": [e.model_dump() for e in errs],
        }
        return JSONResponse(body, status_code=422)
    await run_in_threadpool(api.services.events.append, good)
    api.services.recommender.observe(good)
    for e in good:
        api.metrics.events.labels(e.event_type).inc()
    return EventsResponse(accepted=len(good), rejected=len(bad), errors=errs)


@router.get("/users/{user_id}/history", response_model=HistoryResponse, dependencies=[Depends(require_api_key)])
def user_history(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> HistoryResponse:
    """The user's latest events, newest first (an unknown user has an empty history). Shopper
    data: needs `API_KEY` when one is set."""
    api = api_of(request)
    return HistoryResponse(
        user_id=user_id,
        events=[
            HistoryEvent(
                product_id=e.product_id,
                title=e.title,
                event_type=e.event_type,
                value=e.value,
                timestamp=datetime.fromtimestamp(e.timestamp, UTC),
            )
            for e in api.services.recommender.history(user_id, limit)
        ],
    )
