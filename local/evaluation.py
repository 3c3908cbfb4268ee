"""Data sources for ``python -m local evaluate``: synthetic dev data, event files, the catalog."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidInput
from core.events import iter_event_file, parse_event, to_arrow
from core.recommend.data import F32, EventArrays
from core.settings import Settings
from core.types import ProductInput


def _embed(products: Sequence[ProductInput]) -> F32:
    from core.embedding.sbert import SentenceEncoder

    enc = SentenceEncoder(Settings().text_model, device="cpu", batch_size=64)
    return enc.embed_texts([p.embedding_text() for p in products])


def _arrays(raw_events: Sequence[Any], items: list[str] | None) -> EventArrays:
    good, bad = [], 0
    for item in raw_events:
        try:
            good.append(parse_event(item))
        except InvalidInput:
            bad += 1
    if bad:
        print(f"skipped {bad} invalid events")
    return EventArrays.from_arrow(to_arrow(good), items)


def synthetic(users: int, items: int, seed: int, *, content: bool = True) -> tuple[EventArrays, F32 | None, str]:
    from local.synth_ratings import SynthConfig, generate

    products, events = generate(SynthConfig(n_users=users, n_items=items, seed=seed))
    inputs = [ProductInput.from_mapping(p) for p in products]
    ev = _arrays(events, [p.product_id for p in inputs])
    return ev, _embed(inputs) if content else None, f"synthetic (seed {seed})"


def from_files(events: Path, products: Path | None, *, content: bool = True) -> tuple[EventArrays, F32 | None, str]:
    fmt: Literal["jsonl", "csv"] = "csv" if events.suffix.lower() == ".csv" else "jsonl"
    with events.open(encoding="utf-8") as fh:
        raw = [item for _n, item in iter_event_file(fh, fmt) if not isinstance(item, InvalidInput)]
    if products is None:
        return _arrays(raw, None), None, str(events)
    with products.open(encoding="utf-8") as fh:
        inputs = [ProductInput.from_mapping(json.loads(line)) for line in fh if line.strip()]
    ev = _arrays(raw, [p.product_id for p in inputs])
    return ev, _embed(inputs) if content else None, str(events)


def from_catalog(settings: Settings) -> tuple[EventArrays, F32 | None, str]:
    from core.recommend.online import CatalogSnapshot
    from functions.jobs import open_recommender_store

    catalog, events, _models = open_recommender_store(settings)
    snap = CatalogSnapshot.load(catalog, settings.default_weights(catalog.clip_random_init))
    ev = EventArrays.from_arrow(events.read(), [p.product_id for p in snap.products])
    return ev, snap.dense_vectors(), f"catalog {catalog.uri}"
