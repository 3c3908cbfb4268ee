"""What the routes share: the app's state (:class:`Api`), the access checks as dependencies
(rules in :mod:`functions.security`), rate limits, request parsing."""

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar, cast

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter, ValidationError

from core import errors
from core.analytics import CatalogStatsCache, QueryLog, RequestLog
from core.events import parse_timestamp
from core.merchandising import MAX_PINS, Merchandising
from core.ratelimit import RateLimiter
from core.types import Filters
from core.uploads import UploadGate
from functions.metrics import ApiMetrics
from functions.schemas import BoostIn, FiltersIn, Links
from functions.security import ImageSigner, authorize, check_bearer, trusted
from functions.services import Services

T = TypeVar("T")


class UploadQueue(Protocol):
    """Where ``POST /triggers/s3`` puts upload keys: the in-process worker
    (:class:`functions.upload_worker.UploadWorker`), or on Modal a spawn onto the GPU indexer."""

    def submit(self, keys: list[str]) -> int: ...
    def start(self) -> Any: ...
    def stop(self, timeout: float = ...) -> None: ...
    @property
    def queued(self) -> int: ...


@dataclass
class Api:
    """One app's state: the process's services and the app's own bookkeeping."""

    services: Services
    uploads: UploadQueue
    metrics: ApiMetrics
    catalog_stats: CatalogStatsCache
    gate: UploadGate
    write_limits: RateLimiter | None = None
    image_search_limits: RateLimiter | None = None
    signer: ImageSigner | None = None
    traffic: RequestLog = field(default_factory=RequestLog)
    queries: QueryLog = field(default_factory=QueryLog)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def links(self, request: Request) -> Links:
        return Links(str(request.base_url), self.signer)


def api_of(request: Request) -> Api:
    """The app's :class:`Api` (routes take the request and read it here: a dependency would be
    resolved on every request)."""
    return cast(Api, request.app.state.api)


def _authorization(request: Request) -> str | None:
    return request.headers.get("authorization")


# The access checks are coroutines taking only the request: a plain function dependency would
# cost a thread hand-off each, a header parameter its validation.
async def require_read(request: Request) -> None:
    """Reads: open unless ``READ_API_KEY`` is set; then either key."""
    authorize(api_of(request).services.settings, _authorization(request), "read")


async def require_api_key(request: Request) -> None:
    """Writes, shopper data and admin: ``API_KEY`` when it is set."""
    authorize(api_of(request).services.settings, _authorization(request), "write")


async def require_webhook_token(request: Request) -> None:
    check_bearer(_authorization(request), api_of(request).services.settings.webhook_token, "WEBHOOK_TOKEN")


def client_of(request: Request) -> str:
    """The client a rate limit counts: its address (behind a proxy, run the server with its
    proxy-header options so that this is the shopper's, not the proxy's)."""
    return request.client.host if request.client else "unknown"


def rate_limit(limiter: RateLimiter | None, request: Request, what: str) -> None:
    """429 with Retry-After when the client is over ``limiter``'s rate; requests with
    ``API_KEY`` (the shop's own backend) are not limited."""
    if limiter is None or trusted(api_of(request).services.settings, _authorization(request)):
        return
    wait = limiter.take(client_of(request))
    if wait > 0:
        raise errors.RateLimited(f"too many {what} from this client; retry in {wait:.1f} s", wait)


async def require_writer(request: Request) -> None:
    """A write: ``API_KEY`` when set, then the per-client write rate."""
    api = api_of(request)
    authorize(api.services.settings, _authorization(request), "write")
    rate_limit(api.write_limits, request, "writes")


async def require_event_writer(request: Request) -> None:
    """``POST /events``: open when ``EVENTS_PUBLIC`` (a storefront posts from the browser), else
    ``API_KEY``; the per-client write rate either way."""
    api = api_of(request)
    if not api.services.settings.events_public:
        authorize(api.services.settings, _authorization(request), "write")
    rate_limit(api.write_limits, request, "writes")


async def query_filters(
    category: Annotated[list[str] | None, Query(description="Category (repeat for any-of).")] = None,
    min_price: Annotated[float | None, Query(ge=0)] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
) -> Filters:
    """The filters of a GET request's query string."""
    try:
        return FiltersIn(category=category, min_price=min_price, max_price=max_price).to_core()
    except ValueError as exc:
        raise errors.InvalidInput(str(exc)) from None


@dataclass(frozen=True)
class QueryMerchandising:
    """The merchandising parameters of a GET request's query string."""

    merch: Merchandising
    exclude_ids: frozenset[str]
    include_out_of_stock: bool

    def filters(self, filters: Filters) -> Filters:
        return replace(filters, exclude_ids=self.exclude_ids, include_out_of_stock=self.include_out_of_stock)


_BOOSTS: TypeAdapter[list[BoostIn]] = TypeAdapter(list[BoostIn])


def id_list(raw: str | None, name: str, limit: int) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(i.strip() for i in (raw or "").split(",") if i.strip()))
    if len(ids) > limit:
        raise errors.InvalidInput(f"{name}: at most {limit} product ids")
    return ids


async def query_merchandising(
    pin: Annotated[
        str | None, Query(max_length=20_000, description="Comma-separated product ids to place first, in order.")
    ] = None,
    exclude_ids: Annotated[
        str | None, Query(max_length=100_000, description="Comma-separated product ids never to return.")
    ] = None,
    boost: Annotated[
        str | None,
        Query(max_length=20_000, description='JSON list of boosts: [{"filters": {"category": "Bags"}, "factor": 2}]'),
    ] = None,
    include_out_of_stock: Annotated[bool, Query(description="Also return products that are out of stock.")] = False,
) -> QueryMerchandising:
    """Pins, exclusions, boosts and the stock switch of a GET request."""
    boosts: list[BoostIn] = []
    if boost:
        try:
            boosts = _BOOSTS.validate_json(boost)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise errors.InvalidInput(f"boost: {first['msg']}" + (f" at {where}" if where else "")) from None
    return QueryMerchandising(
        Merchandising(pin=id_list(pin, "pin", MAX_PINS), boost=tuple(b.to_core() for b in boosts)),
        frozenset(id_list(exclude_ids, "exclude_ids", 1000)),
        include_out_of_stock,
    )


def decode_base64(data: str, field_name: str = "image_base64") -> bytes:
    """Base64 or a ``data:`` URL; 422 otherwise."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidImage(f"{field_name} is not valid base64") from None


def as_of_seconds(raw: str | None) -> float | None:
    """The ``as_of`` parameter of recommendation requests as epoch seconds (None: now)."""
    if raw is None or raw == "":
        return None
    try:
        return parse_timestamp(raw, datetime.now(UTC)).timestamp()
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(f"as_of: {exc}") from exc


async def in_memory_or_thread(in_memory: bool, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` right here when it only reads memory (a few milliseconds of numpy: a worker
    thread hand-off would cost a good part of it), else in the thread pool (it may do I/O)."""
    if in_memory:
        return fn(*args)
    return await run_in_threadpool(fn, *args)
