"""Recommendations. Without interaction events every user is cold-start."""

from __future__ import annotations

from dataclasses import dataclass

from core.catalog import Catalog
from core.models import Filters, Product


@dataclass(frozen=True)
class RecommendedItem:
    product: Product
    score: float
    reason: str


def cold_start(catalog: Catalog, top_k: int, filters: Filters = Filters()) -> list[RecommendedItem]:
    """The newest products matching ``filters``; score decays with rank (1, 1/2, 1/3, ...)."""
    products = catalog.newest(top_k, filters)
    return [
        RecommendedItem(
            p,
            1.0 / (rank + 1),
            f"New in {p.category}" if p.category else "New in the catalog",
        )
        for rank, p in enumerate(products)
    ]
