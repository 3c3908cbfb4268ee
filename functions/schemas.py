"""Request and response bodies of the HTTP API (the public contract in DESIGN.md)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.merchandising import MAX_BOOSTS, MAX_FACTOR, MAX_PINS, Boost, Merchandising
from core.recommend.online import Recommended
from core.rules import MAX_RULES
from core.search import MAX_FACETS, MAX_OFFSET, PriceBucket, SearchPage
from core.types import MAX_IMAGES, Filters, Product, SearchHit, attribute_text
from functions.security import ImageSigner


@dataclass(frozen=True)
class Links:
    """The URLs an answer carries. ``image`` is what ``url_for("product_image")`` gives, the id
    percent-encoded, without its route search (a noticeable cost per result); signed when reads
    need a key, so that an ``<img>`` tag can load it."""

    base_url: str
    signer: ImageSigner | None = None

    def image(self, p: Product, index: int = 0) -> str | None:
        """The URL of the product's photo number ``index`` (0: the first; None without one)."""
        if index >= len(p.images):
            return None
        url = f"{self.base_url}products/{quote(p.product_id, safe='')}/image"
        query = [f"index={index}"] if index else []
        if self.signer is not None:
            query.append(self.signer.query(p.product_id))
        return f"{url}?{'&'.join(query)}" if query else url


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _card(p: Product, links: Links) -> dict[str, Any]:
    """The fields every product in an answer has."""
    return {
        "product_id": p.product_id,
        "title": p.title,
        "category": p.category,
        "price": p.price,
        "image_url": links.image(p),
        "in_stock": p.in_stock,
    }


IN_STOCK: Any = Field(default=True, description="False: out of stock (only in answers that asked for those).")
APPLIED_RULES: Any = Field(default_factory=list, description="Ids of the saved merchandising rules that fired.")


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | list[str] | None = Field(default=None, description="One category or a list (any of).")
    min_price: float | None = Field(default=None, ge=0)
    max_price: float | None = Field(default=None, ge=0)

    @field_validator("category")
    @classmethod
    def _categories(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and (not v or len(v) > 100):
            raise ValueError("category list must have 1..100 entries")
        return v

    @field_validator("min_price", "max_price")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _range(self) -> FiltersIn:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError("min_price must not be greater than max_price")
        return self

    def to_core(self) -> Filters:
        c = self.category
        return Filters(
            categories=(c,) if isinstance(c, str) else tuple(c) if c else None,
            min_price=self.min_price,
            max_price=self.max_price,
        )


class SearchFiltersIn(FiltersIn):
    attributes: dict[str, str | int | float | bool] | None = Field(
        default=None,
        description='Equality on attributes, all must hold (`{"color": "red"}`); a list attribute matches when one '
        "of its elements equals the value. Values compare as text.",
    )

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not 1 <= len(v) <= 20:
            raise ValueError("attributes filter must name 1..20 attributes")
        if v is not None and any(not k or len(k) > 256 for k in v):
            raise ValueError("attribute names must have 1..256 characters")
        return v

    def to_core(self) -> Filters:
        pairs = tuple(sorted((k, attribute_text(v) or "") for k, v in (self.attributes or {}).items()))
        return replace(super().to_core(), attributes=pairs)


class WeightsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: float = Field(ge=0, le=1000)
    text: float = Field(ge=0, le=1000)

    @model_validator(mode="after")
    def _not_both_zero(self) -> WeightsIn:
        if self.image + self.text <= 0:
            raise ValueError("weights.image and weights.text cannot both be 0")
        return self


class BoostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: SearchFiltersIn = Field(description="Which products the boost concerns.")
    factor: float = Field(gt=0, le=MAX_FACTOR, description="Their score is multiplied by this before ranking.")

    def to_core(self) -> Boost:
        return Boost(self.filters.to_core(), self.factor)


class MerchandisingIn(BaseModel):
    """Merchandising fields of a request body (search, more like these)."""

    pin: list[str] | None = Field(
        default=None,
        max_length=MAX_PINS,
        description="Products to place first, in this order, when they pass the filters (never repeated below).",
    )
    exclude_ids: list[str] | None = Field(default=None, max_length=1000, description="Products never to return.")
    boost: list[BoostIn] | None = Field(
        default=None,
        max_length=MAX_BOOSTS,
        description="Multiply the score of products matching each boost's filters by its factor before ranking.",
    )
    include_out_of_stock: bool = Field(default=False, description="Also return products that are out of stock.")

    def merchandising(self) -> Merchandising:
        return Merchandising(pin=tuple(self.pin or ()), boost=tuple(b.to_core() for b in self.boost or ()))

    def stock_and_exclusions(self, filters: Filters) -> Filters:
        return replace(
            filters, include_out_of_stock=self.include_out_of_stock, exclude_ids=frozenset(self.exclude_ids or ())
        )


class SearchRequest(MerchandisingIn):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(default=None, max_length=1000, description="Text query.")
    image_base64: str | None = Field(default=None, description="Query photo, base64 (data: URLs accepted).")
    top_k: int = Field(default=10, ge=1, le=100)
    filters: SearchFiltersIn | None = None
    weights: WeightsIn | None = None
    offset: int = Field(
        default=0,
        ge=0,
        le=MAX_OFFSET,
        description="Results to skip: `top_k` is the page size and every page is a slice of one ranking.",
    )
    sort: Literal["relevance", "price_asc", "price_desc", "newest"] = Field(
        default="relevance",
        description="relevance, or the matching set by price or created_at; ties by relevance, products without "
        "the field last.",
    )
    facets: list[str] | None = Field(
        default=None,
        max_length=MAX_FACETS,
        description='Counts over the matching set: "category", "price" (round buckets), "attributes.<name>".',
    )
    typo_tolerance: bool = Field(
        default=True,
        description="Keyword matching forgives 1 typo in words of 5+ letters, 2 from 9 (never in codes or numbers).",
    )
    mode: Literal["hybrid", "vector", "keyword"] | None = Field(
        default=None,
        description="hybrid: vector score + keyword_weight x normalised BM25 over title, description, category and "
        "attributes (exact names, brands and codes first); vector: the fused cosine score alone; keyword: BM25 "
        "alone (no model runs). Default: SEARCH_MODE (hybrid).",
    )
    keyword_weight: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Hybrid only: weight of the keyword score (default HYBRID_KEYWORD_WEIGHT).",
    )

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchRequest:
        if (self.query is None or not self.query.strip()) and not self.image_base64:
            raise ValueError("query or image_base64 is required")
        return self


class ProductOut(BaseModel):
    product_id: str
    title: str
    description: str
    category: str | None
    price: float | None
    image: str | None = Field(description="Object key of the first photo in the bucket.")
    image_url: str | None
    in_stock: bool = IN_STOCK
    images: list[str] = Field(description="Object keys of every photo, the first (`image`) first.")
    image_urls: list[str] = Field(description="URLs of every photo, in the order of `images`.")
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, p: Product, links: Links) -> ProductOut:
        return cls(
            **_card(p, links),
            description=p.description,
            image=p.image,
            images=list(p.images),
            image_urls=[u for i in range(len(p.images)) if (u := links.image(p, i)) is not None],
            attributes=p.attributes,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class SearchResult(BaseModel):
    product_id: str
    title: str
    description: str
    category: str | None
    price: float | None
    image_url: str | None
    in_stock: bool = IN_STOCK
    score: float
    image_similarity: float | None = None
    text_similarity: float | None = None
    keyword_score: float | None = Field(
        default=None, description="Normalised BM25 of the query's words in the product's text, 0..1 (hybrid/keyword)."
    )
    attributes: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, h: SearchHit, links: Links) -> SearchResult:
        p = h.product
        return cls(
            **_card(p, links),
            description=p.description,
            score=round(h.score, 6),
            image_similarity=_rounded(h.image_similarity),
            text_similarity=_rounded(h.text_similarity),
            keyword_score=_rounded(h.keyword_score),
            attributes=p.attributes,
        )


class FacetValueOut(BaseModel):
    value: str
    count: int


class PriceBucketOut(BaseModel):
    min: float = Field(description="Lower bound (included).")
    max: float = Field(description="Upper bound (excluded).")
    count: int


class SearchResponse(BaseModel):
    results: list[SearchResult]
    total_matches: int | None = Field(
        default=None,
        description="Size of the matching set: products passing the filters that match a query word (typo-tolerant) "
        "or are among the MATCH_CANDIDATES best by vector score. Null only without the in-memory catalog.",
    )
    facets: dict[str, list[FacetValueOut | PriceBucketOut]] | None = Field(
        default=None, description="The facets asked for, counted exactly over the matching set."
    )
    applied_rules: list[str] = APPLIED_RULES
    query_time_ms: float

    @classmethod
    def of(cls, page: SearchPage, links: Links, started: float, rules: tuple[str, ...] = ()) -> SearchResponse:
        facets = {
            name: [
                PriceBucketOut(min=v.min, max=v.max, count=v.count)
                if isinstance(v, PriceBucket)
                else FacetValueOut(value=v.value, count=v.count)
                for v in values
            ]
            for name, values in page.facets.items()
        }
        return cls(
            results=[SearchResult.of(h, links) for h in page.hits],
            total_matches=page.total_matches,
            facets=facets or None,
            applied_rules=list(rules),
            query_time_ms=round((time.perf_counter() - started) * 1000, 2),
        )


class SuggestionOut(BaseModel):
    text: str
    kind: Literal["query", "category", "product"]
    product_id: str | None = None


class SuggestResponse(BaseModel):
    suggestions: list[SuggestionOut]
    query_time_ms: float


class SimilarProduct(BaseModel):
    product_id: str
    title: str
    category: str | None
    price: float | None
    image_url: str | None
    in_stock: bool = IN_STOCK
    similarity: float

    @classmethod
    def of(cls, h: SearchHit, links: Links) -> SimilarProduct:
        return cls(**_card(h.product, links), similarity=round(h.score, 6))


class SimilarResponse(BaseModel):
    product_id: str
    similar_products: list[SimilarProduct]
    applied_rules: list[str] = APPLIED_RULES
    query_time_ms: float


class ProductIn(BaseModel):
    """Product fields for PUT. Unknown fields are kept as attributes."""

    model_config = ConfigDict(extra="allow")

    product_id: str | None = Field(default=None, description="Optional; must match the path.")
    title: str = Field(min_length=1, max_length=20_000)
    description: str = Field(default="", max_length=20_000)
    category: str | None = Field(default=None, max_length=200)
    price: float | None = Field(default=None, ge=0)
    image_base64: str | None = Field(default=None, description="Image bytes, base64.")
    image: str | None = Field(default=None, description="Key of an image object in the bucket.")
    images_base64: list[str] | None = Field(
        default=None,
        max_length=MAX_IMAGES,
        description="Several photos' bytes, base64, in order (after `image_base64` if both are given).",
    )
    images: list[str] | None = Field(
        default=None,
        max_length=MAX_IMAGES,
        description="Keys of several image objects in the bucket, in order (after `image` if both are given).",
    )
    in_stock: bool = Field(
        default=True, description="False: kept, but left out of search, similar and recommendations."
    )
    attributes: dict[str, Any] | None = None

    @field_validator("price")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("price must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_image(self) -> ProductIn:
        if (self.image_base64 or self.images_base64) and (self.image or self.images):
            raise ValueError("give photos either as bytes (image_base64, images_base64) or as keys (image, images)")
        return self

    def photo_data(self) -> list[str]:
        """The base64 photos, in order."""
        return ([self.image_base64] if self.image_base64 else []) + (self.images_base64 or [])


class DeleteResponse(BaseModel):
    product_id: str
    deleted: bool


class Recommendation(BaseModel):
    product_id: str
    title: str
    category: str | None
    price: float | None
    image_url: str | None
    in_stock: bool = IN_STOCK
    score: float
    reason: str

    @classmethod
    def of(cls, r: Recommended, links: Links) -> Recommendation:
        return cls(**_card(r.product, links), score=round(r.score, 6), reason=r.reason)


class RecommendationsResponse(BaseModel):
    user_id: str
    recommendations: list[Recommendation]
    strategy: str = Field(
        description="personalized (trained model), content (history, no model yet), popular (cold start), "
        "newest (no events at all), empty (no products)"
    )
    model: str | None = Field(default=None, description="Key of the trained model in the bucket, if any.")
    applied_rules: list[str] = APPLIED_RULES


class MoreLikeRequest(MerchandisingIn):
    model_config = ConfigDict(extra="forbid")

    positive: list[str] = Field(min_length=1, max_length=100, description="Products to find more of.")
    negative: list[str] = Field(default_factory=list, max_length=100, description="Products to steer away from.")
    user_id: str | None = Field(default=None, max_length=256, description="Also leave out what this user has seen.")
    top_k: int = Field(default=10, ge=1, le=100)
    filters: FiltersIn | None = None
    as_of: str | float | None = Field(
        default=None,
        description="As of this moment (ISO-8601 or epoch seconds; default now): only the user's events before it "
        "are left out.",
    )


class BoughtTogetherResponse(BaseModel):
    product_id: str
    products: list[Recommendation] = Field(
        description="Products in the same baskets more often than by chance, by lift shrunk for rare pairs."
    )


class MoreLikeResponse(BaseModel):
    recommendations: list[Recommendation]
    strategy: str
    applied_rules: list[str] = APPLIED_RULES


class EventIn(BaseModel):
    """One event (documentation: the endpoint validates items one by one and reports each bad one)."""

    user_id: str
    product_id: str
    event_type: Literal["view", "click", "add_to_cart", "purchase", "rating"]
    value: float | None = Field(default=None, description="Required for rating: 1..5.")
    timestamp: str | float | None = Field(default=None, description="ISO-8601 or epoch seconds; default now.")
    event_id: str | None = Field(default=None, description="Idempotency key: an event_id seen before is skipped.")


class EventErrorOut(BaseModel):
    index: int = Field(description="Position of the bad item in the request (0 for a single object).")
    detail: str


class EventsResponse(BaseModel):
    accepted: int
    rejected: int
    errors: list[EventErrorOut]


class HistoryEvent(BaseModel):
    product_id: str
    title: str | None
    event_type: str
    value: float | None
    timestamp: datetime


class HistoryResponse(BaseModel):
    user_id: str
    events: list[HistoryEvent]


class HealthResponse(BaseModel):
    status: str
    version: str
    models_loaded: bool
    database_connected: bool
    storage_connected: bool
    product_count: int | None
    dataset_version: int | None
    clip_model: str
    clip_mode: str
    text_model: str
    text_runtime: dict[str, str] = Field(
        default_factory=dict,
        description="What runs each text tower for queries: `onnx` (ONNX Runtime) or `torch` (TEXT_RUNTIME).",
    )
    image_runtime: str = Field(
        default="torch",
        description="What runs the CLIP image tower on CPU: `int8` or `onnx` (ONNX Runtime) or `torch` "
        "(IMAGE_RUNTIME).",
    )
    recommendation_model: str | None = Field(
        default=None,
        description="Bucket key of the recommendation model this process serves (null before the first "
        "training); changes within RECS_REFRESH_SECONDS of a new one being saved.",
    )
    warnings: list[str]


class IgnoredKey(BaseModel):
    key: str
    reason: str


class TriggerResponse(BaseModel):
    accepted: int = Field(description="Upload keys queued for indexing.")
    keys: list[str]
    ignored: list[IgnoredKey]


class UploadFailure(BaseModel):
    line: int | None
    product_id: str | None
    reason: str


class UploadOut(BaseModel):
    key: str
    etag: str
    status: str = Field(description="pending, indexed, partial (some records failed) or failed")
    reason: str
    product_ids: list[str]
    failures: list[UploadFailure]
    records_total: int
    records_indexed: int
    records_failed: int
    attempts: int
    size: int
    first_seen_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class UploadsResponse(BaseModel):
    uploads: list[UploadOut]
    total: int
    limit: int
    offset: int
    queued: int = Field(description="Keys waiting in this process's upload queue.")


class CategoryCountOut(BaseModel):
    category: str = Field(description='"(none)" for products without a category')
    count: int


class PriceHistogramOut(BaseModel):
    edges: list[float] = Field(description="Bin edges (one more than counts), round numbers")
    counts: list[int]
    priced: int = Field(description="Products with a price")
    min: float | None
    median: float | None
    max: float | None


class CatalogStatsOut(BaseModel):
    products: int
    dataset_version: int
    categories: list[CategoryCountOut] = Field(description="Largest first")
    prices: PriceHistogramOut


class ActiveUser(BaseModel):
    user_id: str
    events: int
    last_event_at: datetime


class EventStatsOut(BaseModel):
    total: int
    by_type: dict[str, int]
    users: int
    recent_users: list[ActiveUser] = Field(description="Most recently active first")


class UploadStatsOut(BaseModel):
    by_status: dict[str, int]
    queued: int


class RouteStatsOut(BaseModel):
    route: str
    requests: int
    errors: int = Field(description="5xx answers")
    client_errors: int = Field(description="4xx answers")
    p50_ms: float
    p95_ms: float
    p99_ms: float


class TrafficBucketOut(BaseModel):
    start: datetime
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None


class TrafficStatsOut(BaseModel):
    window_s: float
    bucket_s: float
    requests: int
    errors: int
    routes: list[RouteStatsOut] = Field(description="Busiest first")
    timeline: list[TrafficBucketOut] = Field(description="Oldest first")


class TopQuery(BaseModel):
    query: str
    count: int


class StatsResponse(BaseModel):
    """Figures for the analytics view. Catalog, events and uploads come from the dataset;
    traffic and top queries are this process's own (the dashboard's calls are not counted)."""

    catalog: CatalogStatsOut
    events: EventStatsOut
    uploads: UploadStatsOut
    traffic: TrafficStatsOut
    top_queries: list[TopQuery]
    searches: int = Field(description="Searches answered by this process since it started")
    started_at: datetime


class VersionOut(BaseModel):
    version: int
    timestamp: datetime
    products: int


class VersionsResponse(BaseModel):
    current: int
    retention_hours: float = Field(description="Versions older than this are cleaned up (VERSION_RETENTION_HOURS)")
    versions: list[VersionOut] = Field(description="Newest first")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="A stored catalog version (see GET /admin/versions)")


class RollbackResponse(BaseModel):
    restored: int = Field(description="The version whose data is current again")
    version: int = Field(description="The new version that holds it (undo: roll back to `previous`)")
    previous: int
    products: int


class RuleWhenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(
        default=None, max_length=1000, description="Fires for this query text (case and punctuation aside)."
    )
    category: str | None = Field(
        default=None, max_length=200, description="Fires for requests filtered to this category."
    )

    @model_validator(mode="after")
    def _one(self) -> RuleWhenIn:
        if (self.query is None) == (self.category is None):
            raise ValueError('give exactly one of "query" and "category"')
        return self


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    when: RuleWhenIn
    pin: list[str] = Field(default_factory=list, max_length=MAX_PINS, description="Products placed first, in order.")
    bury: list[str] = Field(default_factory=list, max_length=1000, description="Products placed after all others.")
    boost: list[BoostIn] = Field(default_factory=list, max_length=MAX_BOOSTS)
    active_from: datetime | None = Field(default=None, description="ISO-8601; the rule fires from this moment.")
    active_until: datetime | None = Field(default=None, description="ISO-8601; the rule fires until this moment.")


class RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleIn] = Field(max_length=MAX_RULES, description="The whole set: it replaces the saved one.")


class RulesOut(RulesIn):
    version: int = Field(description="The saved version (0: none saved yet); each save adds one.")
    updated_at: datetime | None
