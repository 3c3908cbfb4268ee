"""ASGI middlewares of the HTTP app: body size limit, load shedding, request timing."""

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse


class _BodyTooLarge(Exception):
    pass


class HttpMiddleware(ABC):
    """A plain ASGI middleware (``BaseHTTPMiddleware`` costs a task and a stream per request):
    other traffic (lifespan) passes through, HTTP requests go to :meth:`http`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        else:
            await self.http(scope, receive, send)

    @abstractmethod
    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one HTTP request (each middleware's own work)."""


class BodySizeLimit(HttpMiddleware):
    """Refuses request bodies over ``max_bytes`` with 413: at once when Content-Length says so,
    and while streaming when it is absent (chunked uploads), without buffering the excess."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
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


class ConcurrencyLimit(HttpMiddleware):
    """Load shedding: at most ``limit`` requests in the app at once; a request that finds no free
    slot within ``wait_s`` gets 429 with Retry-After (never a 5xx, never an unbounded queue).
    Health, metrics and the dashboard's files are always served."""

    EXEMPT = ("/health", "/metrics", "/ui")

    def __init__(self, app: Any, limit: int, wait_s: float) -> None:
        super().__init__(app)
        self.limit = limit
        self.wait_s = wait_s
        self._slots: asyncio.Semaphore | None = None
        self.shed = 0

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        if self.limit <= 0 or scope["path"].startswith(self.EXEMPT):
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


class TimeRequests(HttpMiddleware):
    """Request latency per route into Prometheus and the traffic log. The route is the one the
    router matched (``scope["route"]``, set in place, so a mounted app's rewritten path does not
    hide it); requests that match nothing are "unmatched"."""

    def __init__(self, app: Any, observe: Callable[[str, str, int, float], None]) -> None:
        super().__init__(app)
        self.observe = observe

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
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
