"""Python client for the product search & recommendation API.

from sdk import RecommendationClient
client = RecommendationClient("http://localhost:8000")
for hit in client.search("blue running shoes", top_k=5):
    print(hit.title, hit.price, hit.score)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

__all__ = [
    "APIError",
    "AuthError",
    "NotFoundError",
    "Product",
    "Recommendation",
    "RecommendationClient",
    "SearchResult",
    "ServerError",
    "SimilarProduct",
    "ValidationError",
]


class APIError(Exception):
    """An HTTP error answer; ``status`` and the server's ``detail`` are kept."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class NotFoundError(APIError):
    """404: unknown product."""


class ValidationError(APIError):
    """400/413/422: the request was rejected."""


class AuthError(APIError):
    """401/403: missing or wrong API key."""


class ServerError(APIError):
    """5xx, or 429 busy: the service could not answer now (the client already retried)."""


@dataclass(frozen=True)
class SearchResult:
    product_id: str
    title: str
    description: str
    category: str | None
    price: float | None
    image_url: str | None
    score: float
    attributes: dict[str, Any] = field(default_factory=dict)
    keyword_score: float | None = None  # normalised BM25, hybrid and keyword search
    in_stock: bool = True


@dataclass(frozen=True)
class SearchPage:
    """One page of a search (:meth:`RecommendationClient.search_page`): the results, the size of
    the matching set, and facet counts (``{"category": [{"value", "count"}], "price": [{"min",
    "max", "count"}], "attributes.<name>": [...]}``)."""

    results: list[SearchResult]
    total_matches: int | None
    facets: dict[str, list[dict[str, Any]]]
    applied_rules: list[str] = field(default_factory=list)  # saved merchandising rules that fired


@dataclass(frozen=True)
class SimilarProduct:
    product_id: str
    title: str
    category: str | None
    price: float | None
    image_url: str | None
    similarity: float
    in_stock: bool = True


@dataclass(frozen=True)
class Recommendation:
    product_id: str
    title: str
    score: float
    reason: str
    category: str | None = None
    price: float | None = None
    image_url: str | None = None
    in_stock: bool = True


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    description: str
    category: str | None
    price: float | None
    image: str | None
    image_url: str | None
    images: list[str]  # every photo's key, the first (``image``) first
    image_urls: list[str]
    attributes: dict[str, Any]
    created_at: str
    updated_at: str
    in_stock: bool = True


_T = TypeVar("_T")


def _shop(
    pin: list[str] | None,
    exclude_ids: list[str] | None,
    boost: list[dict[str, Any]] | None,
    include_out_of_stock: bool,
    *,
    query_string: bool = False,
) -> dict[str, Any]:
    """Merchandising fields of a request: JSON body fields, or GET query parameters."""
    out: dict[str, Any] = {}
    if pin:
        out["pin"] = ",".join(pin) if query_string else list(pin)
    if exclude_ids:
        out["exclude_ids"] = ",".join(exclude_ids) if query_string else list(exclude_ids)
    if boost:
        out["boost"] = json.dumps(boost) if query_string else boost
    if include_out_of_stock:
        out["include_out_of_stock"] = "true" if query_string else True
    return out


def _pick(cls: type[_T], data: dict[str, Any]) -> _T:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in data.items() if k in names})


class RecommendationClient:
    """Synchronous client. ``api_key`` is sent as a Bearer token (needed for writes when the
    server has ``API_KEY`` set).

    Answers that say "try again" (429 busy, 502/503/504 storage or gateway trouble) and failed
    connections are retried up to ``retries`` times with exponential backoff (``backoff`` s,
    doubling, honouring ``Retry-After``). Events get an ``event_id`` before they are sent, so a
    retried batch is never stored twice."""

    RETRY_STATUS = (429, 502, 503, 504)

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                if last:
                    raise ServerError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
            else:
                if resp.status_code not in self.RETRY_STATUS or last:
                    return resp
                after = resp.headers.get("Retry-After", "")
                if after.isdigit():
                    delay = max(delay, min(float(after), 30.0))
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._checked(self._send(method, path, **kwargs)).json()

    @staticmethod
    def _checked(resp: httpx.Response) -> httpx.Response:
        """``resp``, or the :class:`APIError` its status means."""
        if resp.status_code >= 400:
            try:
                body = resp.json()
                detail = body.get("detail", body) if isinstance(body, dict) else body
            except ValueError:
                detail = resp.text
            code = resp.status_code
            cls = (
                NotFoundError
                if code == 404
                else AuthError
                if code in (401, 403)
                else ValidationError
                if code < 500 and code != 429
                else ServerError
            )
            raise cls(code, detail)
        return resp

    @staticmethod
    def _filters(
        category: str | list[str] | None, min_price: float | None, max_price: float | None
    ) -> dict[str, Any] | None:
        f = {
            k: v
            for k, v in {"category": category, "min_price": min_price, "max_price": max_price}.items()
            if v is not None
        }
        return f or None

    def search(
        self,
        query: str,
        top_k: int = 10,
        *,
        category: str | list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        weights: tuple[float, float] | None = None,
        mode: str | None = None,
        keyword_weight: float | None = None,
        pin: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        boost: list[dict[str, Any]] | None = None,
        include_out_of_stock: bool = False,
    ) -> list[SearchResult]:
        """Text search. ``weights`` is ``(image, text)``; ``mode`` is ``hybrid`` (the server's
        default), ``vector`` or ``keyword``; ``keyword_weight`` tunes hybrid's BM25 share.
        Merchandising: ``pin`` (placed first, in order), ``exclude_ids``, ``boost`` (``[{"filters":
        {...}, "factor": 2}]``), ``include_out_of_stock``."""
        body: dict[str, Any] = {"query": query, **_shop(pin, exclude_ids, boost, include_out_of_stock)}
        if mode is not None:
            body["mode"] = mode
        if keyword_weight is not None:
            body["keyword_weight"] = keyword_weight
        return self._search(body, top_k, category, min_price, max_price, weights)

    def search_page(
        self,
        query: str,
        top_k: int = 10,
        *,
        offset: int = 0,
        sort: str = "relevance",
        facets: list[str] | None = None,
        attributes: dict[str, str | int | float | bool] | None = None,
        typo_tolerance: bool = True,
        category: str | list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        mode: str | None = None,
        pin: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        boost: list[dict[str, Any]] | None = None,
        include_out_of_stock: bool = False,
    ) -> SearchPage:
        """A page of a text search with its total and facets: ``offset`` (0..1000) pages through
        one ranking, ``sort`` is ``relevance``, ``price_asc``, ``price_desc`` or ``newest``,
        ``facets`` names ``category``, ``price`` and ``attributes.<name>``, ``attributes``
        filters by equality; merchandising as in :meth:`search`."""
        body: dict[str, Any] = {"query": query, "top_k": top_k, "offset": offset, "sort": sort}
        body.update(_shop(pin, exclude_ids, boost, include_out_of_stock))
        body["typo_tolerance"] = typo_tolerance
        if facets:
            body["facets"] = facets
        if mode is not None:
            body["mode"] = mode
        filters = self._filters(category, min_price, max_price) or {}
        if attributes:
            filters["attributes"] = attributes
        if filters:
            body["filters"] = filters
        data = self._call("POST", "/search", json=body)
        return SearchPage(
            [_pick(SearchResult, r) for r in data["results"]],
            data.get("total_matches"),
            data.get("facets") or {},
            data.get("applied_rules") or [],
        )

    def search_image(
        self,
        image: bytes | str | Path,
        top_k: int = 10,
        *,
        query: str | None = None,
        category: str | list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
    ) -> list[SearchResult]:
        """Search by photo (bytes or a file path), optionally with a text query too."""
        data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
        body: dict[str, Any] = {"image_base64": base64.b64encode(data).decode()}
        if query:
            body["query"] = query
        return self._search(body, top_k, category, min_price, max_price, None)

    def _search(
        self,
        body: dict[str, Any],
        top_k: int,
        category: str | list[str] | None,
        min_price: float | None,
        max_price: float | None,
        weights: tuple[float, float] | None,
    ) -> list[SearchResult]:
        body["top_k"] = top_k
        filters = self._filters(category, min_price, max_price)
        if filters:
            body["filters"] = filters
        if weights:
            body["weights"] = {"image": weights[0], "text": weights[1]}
        data = self._call("POST", "/search", json=body)
        return [_pick(SearchResult, r) for r in data["results"]]

    def find_similar(
        self,
        product_id: str,
        top_k: int = 10,
        *,
        pin: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        boost: list[dict[str, Any]] | None = None,
        include_out_of_stock: bool = False,
    ) -> list[SimilarProduct]:
        """Products most like this one; merchandising as in :meth:`search`."""
        params = {"top_k": top_k, **_shop(pin, exclude_ids, boost, include_out_of_stock, query_string=True)}
        data = self._call("GET", f"/similar/{product_id}", params=params)
        return [_pick(SimilarProduct, r) for r in data["similar_products"]]

    def bought_together(self, product_id: str, top_k: int = 10) -> list[Recommendation]:
        """Products shoppers put in the same basket as this one, each with its reason."""
        data = self._call("GET", f"/products/{product_id}/bought-together", params={"top_k": top_k})
        return [_pick(Recommendation, r) for r in data["products"]]

    def get_rules(self) -> dict[str, Any]:
        """The saved merchandising rules: ``{"version", "updated_at", "rules": [...]}``."""
        return dict(self._call("GET", "/rules"))

    def put_rules(self, rules: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace the saved rules (``[{"id", "when": {"query"} | {"category"}, "pin", "bury",
        "boost", "active_from", "active_until"}]``); returns the saved version."""
        return dict(self._call("PUT", "/rules", json={"rules": rules}))

    def get_recommendations(
        self,
        user_id: str,
        top_k: int = 10,
        *,
        category: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        as_of: str | float | None = None,
        pin: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        boost: list[dict[str, Any]] | None = None,
        include_out_of_stock: bool = False,
    ) -> list[Recommendation]:
        """``as_of`` (ISO-8601 or epoch seconds; default now): recommend as of that moment;
        merchandising as in :meth:`search`."""
        params: dict[str, Any] = {"top_k": top_k, **(self._filters(category, min_price, max_price) or {})}
        params.update(_shop(pin, exclude_ids, boost, include_out_of_stock, query_string=True))
        if as_of is not None:
            params["as_of"] = as_of
        data = self._call("GET", f"/recommendations/{user_id}", params=params)
        return [_pick(Recommendation, r) for r in data["recommendations"]]

    def more_like_these(
        self,
        positive: list[str],
        negative: list[str] | None = None,
        *,
        user_id: str | None = None,
        top_k: int = 10,
        pin: list[str] | None = None,
        exclude_ids: list[str] | None = None,
        boost: list[dict[str, Any]] | None = None,
        include_out_of_stock: bool = False,
    ) -> list[Recommendation]:
        """ "More like these, less like those"; merchandising as in :meth:`search`."""
        body = {"positive": positive, "negative": negative or [], "user_id": user_id, "top_k": top_k}
        body.update(_shop(pin, exclude_ids, boost, include_out_of_stock))
        data = self._call("POST", "/recommendations", json=body)
        return [_pick(Recommendation, r) for r in data["recommendations"]]

    def send_events(self, events: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
        """Send one event or a batch; returns ``{"accepted", "rejected", "errors"}`` (bad items are
        reported per position; the good ones are stored)."""
        items = [events] if isinstance(events, dict) else events
        # An id per event makes retries idempotent: the server skips event_ids it already stored.
        keyed = [e if e.get("event_id") else {**e, "event_id": uuid.uuid4().hex} for e in items]
        result: dict[str, Any] = self._call("POST", "/events", json=keyed[0] if isinstance(events, dict) else keyed)
        return result

    def track(self, user_id: str, product_id: str, event_type: str, value: float | None = None) -> None:
        """Send a single event happening now."""
        self.send_events({"user_id": user_id, "product_id": product_id, "event_type": event_type, "value": value})

    def get_product(self, product_id: str) -> Product:
        return _pick(Product, self._call("GET", f"/products/{product_id}"))

    def put_product(
        self,
        product_id: str,
        title: str,
        *,
        description: str = "",
        category: str | None = None,
        price: float | None = None,
        image: bytes | str | Path | None = None,
        image_key: str | None = None,
        images: Sequence[bytes | str | Path] = (),
        image_keys: Sequence[str] = (),
        in_stock: bool = True,
        **attributes: Any,
    ) -> Product:
        """Create or replace a product. ``image`` is bytes or a local file; ``image_key`` names an
        object already in the bucket; ``images`` and ``image_keys`` give several photos the same
        ways (after ``image``/``image_key``; at most 10 in all, and not both kinds). Extra
        keyword arguments are stored as attributes."""
        body: dict[str, Any] = {"title": title, "description": description, "in_stock": in_stock, **attributes}
        if category is not None:
            body["category"] = category
        if price is not None:
            body["price"] = price
        if image is not None:
            data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
            body["image_base64"] = base64.b64encode(data).decode()
        if image_key is not None:
            body["image"] = image_key
        if images:
            body["images_base64"] = [
                base64.b64encode(Path(i).read_bytes() if isinstance(i, (str, Path)) else i).decode() for i in images
            ]
        if image_keys:
            body["images"] = list(image_keys)
        return _pick(Product, self._call("PUT", f"/products/{product_id}", json=body))

    def get_image(self, product_id: str, index: int = 0) -> bytes:
        """The bytes of the product's photo number ``index`` (0: the first)."""
        return self._checked(self._send("GET", f"/products/{product_id}/image", params={"index": index})).content

    def delete_product(self, product_id: str) -> None:
        self._call("DELETE", f"/products/{product_id}")

    def health(self) -> dict[str, Any]:
        """The health document; also returned (not raised) when the server answers 503."""
        try:
            return dict(self._call("GET", "/health"))
        except ServerError as exc:
            if isinstance(exc.detail, dict):
                return exc.detail
            raise
