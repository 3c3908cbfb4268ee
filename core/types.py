"""Typed domain objects shared by ingest, catalog and search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.errors import InvalidInput

Vector = NDArray[np.float32]

CORE_FIELDS = ("product_id", "title", "description", "category", "price", "image", "images", "in_stock")
MAX_ID_LENGTH = 256
MAX_IMAGES = 10
"""Photos per product: a gallery, not an album (each one is embedded and kept in memory)."""
MAX_TEXT_LENGTH = 20_000


def _attribute_text(value: Any) -> str:
    """An attribute as the text encoder reads it: a plain value as is, a list of plain values
    joined with commas (tags, genres, sizes), anything else (nested objects) as nothing."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip())
    return ""


@dataclass(frozen=True)
class ProductInput:
    """A validated product record as it arrives (before embedding)."""

    product_id: str
    title: str
    description: str = ""
    category: str | None = None
    price: float | None = None
    image: str | None = None  # object key in the bucket (the first photo)
    attributes: dict[str, Any] = field(default_factory=dict)
    more_images: tuple[str, ...] = ()  # the other photos' keys, in order
    in_stock: bool = True

    @property
    def images(self) -> tuple[str, ...]:
        """Every photo reference, the first (``image``) first."""
        return (self.image, *self.more_images) if self.image is not None else ()

    def embedding_text(self) -> str:
        """The text the text encoder sees: title, description, category and attributes (plain
        values, and lists of them such as ``"genres": ["Drama", "War"]``; nested objects are
        left out)."""
        parts = [self.title.strip()]
        if self.description.strip():
            parts.append(self.description.strip())
        if self.category:
            parts.append(f"Category: {self.category}")
        attrs = "; ".join(f"{k}: {text}" for k, v in sorted(self.attributes.items()) if (text := _attribute_text(v)))
        if attrs:
            parts.append(attrs)
        return ". ".join(parts)

    @classmethod
    def from_mapping(cls, raw: Any) -> ProductInput:
        """Validate a JSON-like mapping; unknown keys become attributes.

        Raises :class:`InvalidInput` naming the first problem found.
        """
        if not isinstance(raw, dict):
            raise InvalidInput(f"a product must be a JSON object, got {type(raw).__name__}")
        pid = raw.get("product_id")
        if isinstance(pid, int) and not isinstance(pid, bool):
            pid = str(pid)
        if not isinstance(pid, str) or not pid.strip():
            raise InvalidInput("product_id is required and must be a non-empty string")
        pid = pid.strip()
        validate_product_id(pid)
        title = raw.get("title")
        if not isinstance(title, str) or not title.strip():
            raise InvalidInput(f"{pid}: title is required and must be a non-empty string")
        description = raw.get("description") or ""
        if not isinstance(description, str):
            raise InvalidInput(f"{pid}: description must be a string")
        category = raw.get("category")
        if category is not None and not isinstance(category, str):
            raise InvalidInput(f"{pid}: category must be a string")
        category = category.strip() or None if isinstance(category, str) else None
        price = parse_price(raw.get("price"), pid)
        images = parse_images(raw.get("image"), raw.get("images"), pid)
        if len(title) > MAX_TEXT_LENGTH or len(description) > MAX_TEXT_LENGTH:
            raise InvalidInput(f"{pid}: title/description longer than {MAX_TEXT_LENGTH} characters")
        attributes = {k: v for k, v in raw.items() if k not in CORE_FIELDS and k != "attributes"}
        nested = raw.get("attributes")
        if isinstance(nested, dict):
            attributes = {**nested, **attributes}
        elif nested is not None:
            raise InvalidInput(f"{pid}: attributes must be an object")
        return cls(
            product_id=pid,
            title=title.strip(),
            description=description.strip(),
            category=category,
            price=price,
            image=images[0] if images else None,
            attributes=attributes,
            more_images=images[1:],
            in_stock=parse_in_stock(raw.get("in_stock"), pid),
        )


def parse_images(image: Any, images: Any, pid: str) -> tuple[str, ...]:
    """The photo references of a record: ``images`` (a list), ``image`` (one), or both, in which
    case ``image`` comes first and is not repeated. A CSV cell gives ``images`` as one string,
    the keys separated by ``|``. At most :data:`MAX_IMAGES`."""
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise InvalidInput(f"{pid}: image must be an object key (string)")
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [i for i in images.split("|") if i.strip()]
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise InvalidInput(f"{pid}: images must be a list of object keys (non-empty strings)")
    refs = [image.strip()] if isinstance(image, str) else []
    refs += [i.strip() for i in images]
    out = tuple(dict.fromkeys(refs))
    if len(out) > MAX_IMAGES:
        raise InvalidInput(f"{pid}: {len(out)} images; a product has at most {MAX_IMAGES}")
    return out


def parse_in_stock(value: Any, pid: str) -> bool:
    """``in_stock``: absent means in stock; a boolean, 0/1, or (CSV) true/false/yes/no/1/0."""
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise InvalidInput(f"{pid}: in_stock must be true or false, got {value!r}")


def validate_product_id(pid: str) -> None:
    """Product ids are printable, at most 256 characters, with no slashes or control chars."""
    if len(pid) > MAX_ID_LENGTH:
        raise InvalidInput(f"product_id longer than {MAX_ID_LENGTH} characters")
    if any(ch in pid for ch in "/\\") or not pid.isprintable():
        raise InvalidInput("product_id may not contain slashes or control characters")


def parse_price(value: Any, pid: str = "") -> float | None:
    """Price: absent, or a finite non-negative number (numeric strings accepted)."""
    prefix = f"{pid}: " if pid else ""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{prefix}price must be a number")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{prefix}price must be a number, got {value!r}") from None
    if not math.isfinite(price) or price < 0:
        raise InvalidInput(f"{prefix}price must be a finite non-negative number, got {value!r}")
    return price


@dataclass(frozen=True)
class Product:
    """A product as stored in the catalog (vectors left out)."""

    product_id: str
    title: str
    description: str
    category: str | None
    price: float | None
    image: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    more_images: tuple[str, ...] = ()  # keys of the photos after the first
    in_stock: bool = True

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def images(self) -> tuple[str, ...]:
        """Every photo's key, the first (``image``) first."""
        return (self.image, *self.more_images) if self.image is not None else ()


@dataclass(frozen=True)
class Filters:
    """Pre-filters applied before ranking. Every hit satisfies all of them."""

    categories: tuple[str, ...] | None = None
    min_price: float | None = None
    max_price: float | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    """Equality on attributes, all must hold: ``(name, value)`` pairs; a list attribute matches
    when one of its elements equals the value. Values compare as text (``42`` equals ``"42"``)."""
    include_out_of_stock: bool = False
    """Out-of-stock products are left out unless this is set (they stay in the catalog)."""
    exclude_ids: frozenset[str] = frozenset()
    """Products never to return (a merchant's or a shopper's "not these")."""

    def __post_init__(self) -> None:
        for name in ("min_price", "max_price"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise InvalidInput(f"{name} must be a finite non-negative number")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise InvalidInput("min_price must not be greater than max_price")
        if self.categories is not None and len(self.categories) == 0:
            raise InvalidInput("category filter must name at least one category")

    def matches(self, p: Product) -> bool:
        """Whether one product passes (the array masks of the in-memory catalogs do the same for
        every row at once)."""
        if self.categories is not None and p.category not in self.categories:
            return False
        if self.min_price is not None and (p.price is None or p.price < self.min_price):
            return False
        if self.max_price is not None and (p.price is None or p.price > self.max_price):
            return False
        if not self.include_out_of_stock and not p.in_stock:
            return False
        if p.product_id in self.exclude_ids:
            return False
        return all(attribute_matches(p.attributes.get(name), value) for name, value in self.attributes)


@dataclass(frozen=True)
class Weights:
    """Weights of the two modalities in a fused score."""

    image: float
    text: float

    def __post_init__(self) -> None:
        for v in (self.image, self.text):
            if not math.isfinite(v) or v < 0:
                raise InvalidInput("weights must be finite and non-negative")
        if self.image + self.text <= 0:
            raise InvalidInput("weights.image and weights.text cannot both be 0")


@dataclass(frozen=True)
class SearchHit:
    """One ranked product with its fused score and the per-modality similarities behind it."""

    product: Product
    score: float
    image_similarity: float | None
    text_similarity: float | None
    keyword_score: float | None = None  # normalised BM25 (hybrid and keyword search)


def default_weights(image_weight: float, text_weight: float, clip_random_init: bool) -> Weights:
    """IMAGE_WEIGHT / TEXT_WEIGHT; with random-init CLIP the image side is noise, so the default
    ranks on text alone (a search request's own weights still apply)."""
    if clip_random_init:
        return Weights(image=0.0, text=1.0)
    return Weights(image=image_weight, text=text_weight)


def attribute_text(value: Any) -> str | None:
    """An attribute value as filters and facets compare it (None: not a plain value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def attribute_matches(value: Any, wanted: str) -> bool:
    """Whether an attribute value equals ``wanted`` as filters compare it (a list: one element)."""
    return any(attribute_text(v) == wanted for v in (value if isinstance(value, list) else (value,)))
