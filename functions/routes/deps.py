"""What the routes share: the app's state (:class:`Api`), the key checks, request parsing."""

import base64
import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar, cast

from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import SecretStr

from core import errors
from core.analytics import CatalogStatsCache, QueryLog, RequestLog
from core.events import parse_timestamp
from core.types import Filters
from functions.metrics import ApiMetrics
from functions.schemas import FiltersIn
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
    traffic: RequestLog = field(default_factory=RequestLog)
    queries: QueryLog = field(default_factory=QueryLog)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def get_api(request: Request) -> Api:
    return cast(Api, request.app.state.api)


ApiDep = Annotated[Api, Depends(get_api)]


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


# The key checks are coroutines: a plain function dependency would cost a thread hand-off each.
async def require_api_key(api: ApiDep, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, api.services.settings.api_key, "API_KEY")


async def require_event_writer(api: ApiDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """``POST /events``: open when ``EVENTS_PUBLIC`` (a storefront posts from the browser)."""
    if not api.services.settings.events_public:
        check_bearer(authorization, api.services.settings.api_key, "API_KEY")


async def require_webhook_token(api: ApiDep, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, api.services.settings.webhook_token, "WEBHOOK_TOKEN")


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
