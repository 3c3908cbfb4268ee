"""Hybrid retrieval on a catalog with planted names: exact titles, model names and SKU codes first,
meaning-only queries unharmed. ``python -m bench.hybrid [--products 5000] [--seed 2]``.

The catalog (on the embedded S3 server, answered from the hot in-memory copy) mixes ordinary
products ("Acme red striped cotton t-shirt") with planted ones that carry an invented model name
and a SKU ("Kestrel Virzan 3 blue running shoes", sku "KS-48213"). Every planted product gets two
*confusers*: same brand, colour, item and model stem, another model number ("Virzan 3" vs
"Virzan 7"), so their sentence vectors are near-identical and only the number tells them
apart. Text vectors are real MiniLM embeddings of each product's embedding text; queries are
embedded by the same model. (CLIP is left out: with random-init weights the default ranking is
text-only anyway.)

Measured per mode (``vector``, ``hybrid`` at several keyword weights, ``keyword``):
- exact-title queries (the planted product's full title): hit@1;
- model-name queries ("Virzan 3 running shoes"): hit@1;
- SKU queries, typed as stored or without the dash ("ks48213"): hit@1;
- meaning-only queries with no title words ("something comfortable for jogging"): precision@10
  and @50 of the intended category, which hybrid must not lose against vector.
The keyword weight is chosen on ``--dev-seed``'s catalog and reported on ``--seed``'s.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.common import report, s3_settings
from core.catalog import Catalog, ProductRecord
from core.embedding.sbert import SentenceEncoder
from core.hot import HotCatalog
from core.search import QueryCache, SearchQuery, search
from core.settings import Settings
from core.types import Product, ProductInput, Weights
from local.sample import BRANDS, COLOURS, ITEMS, MATERIALS, PATTERNS

SYLLABLES = ("vir", "zan", "tor", "kel", "mar", "dus", "qua", "lix", "pho", "ren", "sab", "ov", "ix", "ul", "bre")
# Meaning-only queries: none of their words is in any title (titles are brand, colour, pattern,
# material, item); the category is the answer.
MEANING = {
    "Footwear": ["something comfortable for jogging", "what to wear on my feet for a marathon"],
    "Tops": ["casual clothing for the upper body", "a warm garment for chilly evenings"],
    "Bags": ["something to carry my laptop and books", "luggage for a weekend trip"],
    "Home": ["kitchen items for serving hot drinks", "decor for the dining table"],
    "Accessories": ["something to keep my head warm in winter", "protect my face from the sun"],
    "Electronics": ["gadgets for listening to music", "a device that tracks my fitness"],
}
WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)


def model_name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        name = f"{name} {rng.randint(1, 9)}"
        if name not in used:
            used.add(name)
            return name


def catalog_products(n: int, planted: int, seed: int) -> tuple[list[ProductInput], list[dict[str, str]]]:
    """``n`` products, ``planted`` of them with model names and SKUs (plus 2 confusers each)."""
    rng = random.Random(seed)
    cats = sorted(ITEMS)
    used: set[str] = set()
    products: list[ProductInput] = []
    targets: list[dict[str, str]] = []
    for i in range(planted):
        cat = rng.choice(cats)
        brand, colour, item = rng.choice(BRANDS), rng.choice(sorted(COLOURS)), rng.choice(ITEMS[cat])
        stem = model_name(rng, used).split()[0]
        numbers = rng.sample(range(1, 10), 3)
        for copy in range(3):
            # The confusers share brand, colour, item and model stem: only the number differs
            # ("Virzan 3" / "Virzan 7"), which sentence vectors barely register.
            name = f"{stem} {numbers[copy]}"
            sku = f"{brand[:2].upper()}-{rng.randint(10000, 99999)}"
            title = f"{brand} {name} {colour} {item}"
            pid = f"M{i:04d}{copy}"
            products.append(ProductInput(pid, title, f"The {name} {item} by {brand}.", cat, 50.0, None, {"sku": sku}))
            if copy == 0:
                targets.append({"product_id": pid, "title": title, "name": f"{name} {item}", "sku": sku})
    while len(products) < n:
        i = len(products)
        cat = rng.choice(cats)
        title = (
            f"{rng.choice(BRANDS)} {rng.choice(sorted(COLOURS))} {rng.choice(PATTERNS)} "
            f"{rng.choice(MATERIALS[cat])} {rng.choice(ITEMS[cat])}"
        )
        products.append(ProductInput(f"P{i:05d}", title, "", cat, 30.0, None, {}))
    return products, targets


def build(settings: Settings, text: SentenceEncoder, n: int, planted: int, seed: int) -> tuple[HotCatalog, list[Any]]:
    products, targets = catalog_products(n, planted, seed)
    vectors = text.embed_texts([p.embedding_text() for p in products])
    catalog = Catalog.from_settings(settings, clip_dim=512, text_dim=vectors.shape[1], space={"clip": "-", "text": "-"})
    now = datetime.now(UTC)
    records = [
        ProductRecord(
            Product(p.product_id, p.title, p.description, p.category, p.price, None, p.attributes, now, now),
            None,
            vectors[i],
            f"h{i}",
        )
        for i, p in enumerate(products)
    ]
    for i in range(0, len(records), 2000):
        catalog.upsert(records[i : i + 2000])
    hot = HotCatalog(catalog)
    hot.refresh()
    return hot, targets


class _Embedder:
    """search() needs ``text`` and ``clip``; CLIP is never called (image weight 0)."""

    def __init__(self, text: SentenceEncoder) -> None:
        self.text = text
        self.clip = None


CACHE = QueryCache(100_000)  # each query text is embedded once for all modes and weights


def evaluate(hot: HotCatalog, embedder: Any, targets: list[dict[str, str]], mode: str, weight: float) -> dict[str, Any]:
    w = Weights(0.0, 1.0)

    def top(query: str, k: int = 1) -> list[Any]:
        q = SearchQuery(text=query, top_k=k, mode=mode, keyword_weight=weight)
        return search(hot.catalog, embedder, q, w, hot=hot, cache=CACHE).hits

    def hit_at_1(queries: list[tuple[str, str]]) -> float:
        return float(np.mean([bool(h := top(q)) and h[0].product.product_id == pid for q, pid in queries]))

    if not CACHE.get((targets[0]["title"], False)):  # embed every query once, untimed
        for t in targets:
            for q in (t["title"], t["name"], t["sku"], t["sku"].replace("-", "").lower()):
                search(hot.catalog, embedder, SearchQuery(text=q, mode="vector"), w, hot=hot, cache=CACHE)
        for qs in MEANING.values():
            for q in qs:
                search(hot.catalog, embedder, SearchQuery(text=q, mode="vector"), w, hot=hot, cache=CACHE)
    started = time.perf_counter()
    exact = hit_at_1([(t["title"], t["product_id"]) for t in targets])
    name = hit_at_1([(t["name"], t["product_id"]) for t in targets])
    sku = hit_at_1(
        [(t["sku"], t["product_id"]) for t in targets]
        + [(t["sku"].replace("-", "").lower(), t["product_id"]) for t in targets]
    )
    precision, precision50 = [], []
    for cat, qs in MEANING.items():
        for q in qs:
            hits = top(q, 50)
            precision.append(sum(h.product.category == cat for h in hits[:10]) / 10)
            precision50.append(sum(h.product.category == cat for h in hits) / 50)
    n_queries = 4 * len(targets) + sum(len(v) for v in MEANING.values())
    return {
        "mode": mode,
        "keyword_weight": weight if mode == "hybrid" else None,
        "exact_title_hit@1": round(exact, 4),
        "model_name_hit@1": round(name, 4),
        "sku_hit@1": round(sku, 4),
        "meaning_precision@10": round(float(np.mean(precision)), 4),
        "meaning_precision@50": round(float(np.mean(precision50)), 4),
        "ms_per_query (vectors cached)": round((time.perf_counter() - started) * 1000 / n_queries, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=5000)
    ap.add_argument("--planted", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--dev-seed", type=int, default=1)
    args = ap.parse_args()
    text = SentenceEncoder(Settings(_env_file=None).text_model)  # type: ignore[call-arg]
    embedder = _Embedder(text)
    settings, server = s3_settings(own_process=True)
    t = time.perf_counter()
    dev, dev_targets = build(settings, text, args.products, args.planted, args.dev_seed)
    build_s = time.perf_counter() - t
    dev_rows = [evaluate(dev, embedder, dev_targets, "hybrid", w) for w in WEIGHTS]
    for r in dev_rows:
        print("dev", r)
    chosen = max(
        dev_rows,
        key=lambda r: (r["exact_title_hit@1"] + r["model_name_hit@1"] + r["sku_hit@1"]) / 3 + r["meaning_precision@10"],
    )["keyword_weight"]
    settings2, server2 = s3_settings(own_process=True)
    test, targets = build(settings2, text, args.products, args.planted, args.seed)
    rows = [
        evaluate(test, embedder, targets, "vector", 0.0),
        evaluate(test, embedder, targets, "hybrid", chosen),
        evaluate(test, embedder, targets, "keyword", 0.0),
    ]
    server.stop()
    server2.stop()
    report(
        "hybrid",
        rows,
        {
            "products": args.products,
            "planted": args.planted,
            "seed": args.seed,
            "dev_seed": args.dev_seed,
            "chosen_keyword_weight": chosen,
            "dev_sweep": dev_rows,
            "catalog_build_s": round(build_s, 1),
        },
    )
    print(f"keyword weight {chosen} chosen on the dev catalog (seed {args.dev_seed}); rows above: seed {args.seed}")


if __name__ == "__main__":
    main()
