"""The matching set of a search on a planted catalog: totals and facet counts equal brute-force
counts, pages are slices of one ranking in every sort order, typo tolerance (and codes that stay
exact), attribute filters, price buckets."""

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.catalog import Catalog, ProductRecord, filter_sql
from core.embedding import l2_normalize
from core.errors import InvalidInput
from core.hot import HotCatalog, HotSnapshot
from core.keyword import document, query_tokens
from core.search import SORTS, SearchPage, SearchQuery, matching_page, price_buckets
from core.settings import Settings
from core.types import Filters, Product, Weights

NOW = datetime(2026, 12, 1, tzinfo=UTC)
W = Weights(0.0, 1.0)
TITLES = ["leather boots", "canvas sneakers", "wool sweater", "linen shirt", "linen shirts", "silk scarf"]
COLOURS = ["red", "blue", "green"]


def planted(n: int = 48) -> list[Product]:
    out = []
    for i in range(n):
        colour: object = COLOURS[i % 3] if i % 7 else [COLOURS[i % 3], "black"]  # some list attributes
        attrs = {"color": colour, "size": 36 + i % 4}
        if i in (5, 6):
            attrs["sku"] = f"KS-4821{i - 3}"  # KS-48212 and KS-48213
        out.append(
            Product(
                f"p{i:03d}",
                f"{TITLES[i % len(TITLES)]} {i}",
                "",
                ("Shoes", "Tops", "Accessories")[i % 3],
                None if i % 11 == 0 else float(5 + (i * 37) % 190),
                None,
                attrs,
                NOW - timedelta(days=(i * 13) % 40),
                NOW,
            )
        )
    return out


@pytest.fixture(scope="module")
def snapshot(s3_endpoint: str) -> tuple[HotCatalog, HotSnapshot, np.ndarray]:
    from tests.conftest import make_settings, new_bucket

    settings: Settings = make_settings(s3_endpoint, new_bucket(s3_endpoint, "match"))
    cat = Catalog.from_settings(settings, clip_dim=8, text_dim=8, space={"clip": "t", "text": "t"})
    rng = np.random.default_rng(5)
    products = planted()
    vectors = l2_normalize(rng.standard_normal((len(products), 8)).astype(np.float32))
    cat.upsert([ProductRecord(p, None, vectors[i], f"h{i}") for i, p in enumerate(products)])
    hot = HotCatalog(cat)
    hot.refresh()
    assert hot.snapshot is not None
    return hot, hot.snapshot, vectors


def page(hot: HotCatalog, snap: HotSnapshot, q: np.ndarray, candidates: int = 5, **kw: object) -> SearchPage:
    query = SearchQuery(**{"top_k": 100, "mode": "hybrid", **kw})  # type: ignore[arg-type]
    return matching_page(hot, snap, None, q, W, query, query.text, candidates)


def osa(a: str, b: str) -> int:
    """Edit distance with adjacent swaps (the test's own, not the library's)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def word_matches(query_word: str, doc_word: str, typos: bool) -> bool:
    if query_word == doc_word:
        return True
    if not typos or not query_word.isalpha() or not doc_word.isalpha():
        return False
    budget = 2 if len(query_word) >= 9 else 1 if len(query_word) >= 5 else 0
    return osa(query_word, doc_word) <= budget


def brute_force(
    products: list[Product], vectors: np.ndarray, q: np.ndarray, text: str, f: Filters, k: int, mode: str
) -> list[Product]:
    def passes(p: Product) -> bool:
        if f.categories is not None and p.category not in f.categories:
            return False
        for name, value in f.attributes:
            v = p.attributes.get(name)
            if value not in ([str(x) for x in v] if isinstance(v, list) else [str(v)]):
                return False
        return True

    allowed = [i for i, p in enumerate(products) if passes(p)]
    words = query_tokens(text)
    keyword = {i for i in allowed if any(word_matches(w, d, True) for w in words for d in document(products[i]))}
    if mode == "keyword":
        return [products[i] for i in sorted(keyword)]
    scores = vectors[allowed] @ q
    best = {allowed[j] for j in np.argsort(-scores)[:k]}
    return [products[i] for i in sorted(keyword | best)]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_totals_and_facets_equal_brute_force_counts(
    snapshot: tuple[HotCatalog, HotSnapshot, np.ndarray], mode: str
) -> None:
    hot, snap, vectors = snapshot
    products = planted()
    rng = np.random.default_rng(11)
    cases = [
        ("linen shirt", Filters()),
        ("lether bots", Filters()),  # typos: leather (1 edit); "bots" is too short to correct
        ("sweater", Filters(categories=("Tops", "Shoes"))),
        ("scarf", Filters(attributes=(("color", "red"),))),
        ("canvas", Filters(attributes=(("color", "black"), ("size", "37")))),
    ]
    for text, f in cases:
        q = l2_normalize(rng.standard_normal((1, 8)).astype(np.float32))[0]
        got = page(hot, snap, q, 5, text=text, filters=f, mode=mode, facets=("category", "price", "attributes.color"))
        want = brute_force(products, vectors, q, text, f, 5, mode)
        assert got.total_matches == len(want), (text, mode)
        assert {fv.value: fv.count for fv in got.facets["category"]} == Counter(p.category for p in want)
        colours: Counter[str] = Counter()
        for p in want:
            v = p.attributes["color"]
            colours.update(v if isinstance(v, list) else [v])
        assert {fv.value: fv.count for fv in got.facets["attributes.color"]} == colours
        prices = [p.price for p in want if p.price is not None]
        buckets = got.facets["price"]
        assert sum(b.count for b in buckets) == len(prices)
        for b in buckets:  # each bucket holds exactly the prices in its range
            assert b.count == sum(b.min <= x < b.max for x in prices)


@pytest.mark.integration
@pytest.mark.parametrize("sort", SORTS)
def test_pages_are_slices_of_one_ranking(snapshot: tuple[HotCatalog, HotSnapshot, np.ndarray], sort: str) -> None:
    hot, snap, vectors = snapshot
    q = vectors[3]
    everything = page(hot, snap, q, 20, text="linen wool scarf", sort=sort).hits
    assert len(everything) == page(hot, snap, q, 20, text="linen wool scarf").total_matches
    pages = [
        page(hot, snap, q, 20, text="linen wool scarf", sort=sort, top_k=7, offset=o).hits for o in range(0, 60, 7)
    ]
    ids = [h.product.product_id for p in pages for h in p]
    assert ids == [h.product.product_id for h in everything]
    assert len(set(ids)) == len(ids)
    if sort == "relevance":
        # With every match scored exactly (candidates >= matches), the ranking is by score then
        # id; with fewer, keyword matches beyond the candidates follow them (the rule above).
        ranked = page(hot, snap, q, 50, text="linen wool scarf").hits
        keys = [(-h.score, h.product.product_id) for h in ranked]
        assert keys == sorted(keys)
    elif sort == "newest":
        created = [h.product.created_at for h in everything]
        assert created == sorted(created, reverse=True)
    else:
        prices = [h.product.price for h in everything]
        known = [p for p in prices if p is not None]
        assert known == sorted(known, reverse=sort == "price_desc")
        assert prices == known + [None] * (len(prices) - len(known))  # products without a price last


@pytest.mark.integration
def test_typo_tolerance_ranks_exact_first_and_keeps_codes_exact(
    snapshot: tuple[HotCatalog, HotSnapshot, np.ndarray],
) -> None:
    hot, snap, vectors = snapshot
    q = vectors[0]

    def ids(text: str, **kw: object) -> list[str]:
        return [h.product.product_id for h in page(hot, snap, q, 5, text=text, mode="keyword", **kw).hits]

    # "shirts" is a word of 6 letters: it also matches "shirt" (1 edit), below the exact matches.
    found = page(hot, snap, q, text="shirts", mode="keyword").hits
    exact = [h for h in found if "shirts" in h.product.title]
    corrected = [h for h in found if "shirts" not in h.product.title]
    assert exact and corrected and found[: len(exact)] == exact
    assert all("shirt" in h.product.title for h in corrected)
    assert set(ids("sweatre")) == {p.product_id for p in planted() if "sweater" in p.title}  # a swap
    assert ids("sweatre", typo_tolerance=False) == []
    assert set(ids("scarv")) == set(ids("scarf"))
    assert ids("shrt") == []  # 4 letters: no correction
    # Codes and numbers never match a near code.
    assert ids("KS-48213") == ["p006"]
    assert ids("KS-48212") == ["p005"]
    assert ids("KS-48214") == []


@pytest.mark.integration
def test_attribute_filters_need_and_use_the_parsed_attributes(
    snapshot: tuple[HotCatalog, HotSnapshot, np.ndarray],
) -> None:
    hot, snap, vectors = snapshot
    got = page(hot, snap, vectors[1], 100, text="boots", filters=Filters(attributes=(("color", "black"),))).hits
    assert got and all("black" in h.product.attributes["color"] for h in got)
    assert {h.product.product_id for h in got} == {
        p.product_id for p in planted() if isinstance(p.attributes["color"], list)
    }
    with pytest.raises(InvalidInput, match="in-memory catalog"):
        filter_sql(Filters(attributes=(("color", "red"),)))


def test_price_buckets_are_round_and_exact() -> None:
    buckets = price_buckets(np.array([3.0, 12.5, 19.99, 20.0, 47.0, np.nan, 95.0, 100.0]))
    assert [(b.min, b.max, b.count) for b in buckets] == [
        (0.0, 20.0, 3),
        (20.0, 40.0, 1),
        (40.0, 60.0, 1),
        (80.0, 100.0, 1),
        (100.0, 120.0, 1),
    ]
    assert price_buckets(np.array([np.nan])) == []
    assert [(b.min, b.max, b.count) for b in price_buckets(np.array([9.5, 9.5]))] == [(9.0, 10.0, 2)]


def test_query_validation_of_the_new_fields() -> None:
    for bad in (
        {"offset": -1},
        {"offset": 1001},
        {"sort": "cheapest"},
        {"facets": ("colour",)},
        {"facets": ("attributes.",)},
    ):
        with pytest.raises(InvalidInput):
            SearchQuery(text="x", **bad)  # type: ignore[arg-type]


@pytest.mark.integration
def test_suggestions_complete_prefixes_typos_categories_and_past_queries(
    snapshot: tuple[HotCatalog, HotSnapshot, np.ndarray],
) -> None:
    from core.analytics import QueryLog
    from core.suggest import suggest

    _, snap, _ = snapshot
    log = QueryLog()
    for q in ["linen shirt", "linen shirt", "linen trousers", "wool coat"]:
        log.record(q)
    got = suggest(snap, "lin", 6, log.starting_with("lin"))
    assert [(s.text, s.kind) for s in got[:2]] == [("linen shirt", "query"), ("linen trousers", "query")]
    products = [s for s in got if s.kind == "product"]
    assert products and all(s.text.startswith("linen") and s.product_id for s in products)
    # A typo in the prefix (4+ letters): "sweq" is one edit from "swea(ter)".
    assert any(s.text.startswith("wool sweater") for s in suggest(snap, "sweq", 5, []))
    assert suggest(snap, "swe", 5, []) and not suggest(snap, "swq", 5, [])  # 3 letters: as typed
    assert [s.text for s in suggest(snap, "acces", 5, []) if s.kind == "category"] == ["Accessories"]
    # Earlier words are taken as typed (with keyword typo tolerance), the last one completes.
    two = suggest(snap, "silk sc", 4, [])
    assert two and all("silk scarf" in s.text for s in two if s.kind == "product")
    assert suggest(snap, "   ", 5, []) == []
