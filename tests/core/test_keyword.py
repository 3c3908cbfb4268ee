"""BM25 keyword index and hybrid search: tokens, scores against a hand computation, segments and
tombstones, and on the S3 server exact names / codes first while meaning-only queries keep the
vector order."""

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from core.catalog import Catalog, ProductRecord
from core.embedding import l2_normalize
from core.errors import InvalidInput
from core.hot import HotCatalog, HotSnapshot
from core.keyword import FULL_MATCH, K1, KeywordIndex, document, tokenize
from core.search import SearchQuery, hot_ranked, keyword_ranked, matching_page
from core.settings import Settings
from core.types import Filters, Product, SearchHit, Weights

NOW = datetime.now(UTC)


def product(pid: str, title: str, description: str = "", category: str | None = None, **attrs: object) -> Product:
    return Product(pid, title, description, category, 10.0, None, dict(attrs), NOW, NOW)


def hybrid(
    hot: HotCatalog, snap: HotSnapshot, q: np.ndarray, w: Weights, k: int, text: str, filters: Filters = Filters()
) -> list[SearchHit]:
    query = SearchQuery(text=text, top_k=k, filters=filters, mode="hybrid", keyword_weight=0.3)
    return matching_page(hot, snap, None, q, w, query, text).hits


def test_tokens_fold_case_and_join_codes() -> None:
    assert tokenize("Trail Runner XR-200, size 42") == ["trail", "runner", "xr", "200", "size", "42", "xr200"]
    assert tokenize("B07.1/A") == ["b07", "1", "a", "b071a"]
    assert tokenize("Ünïcode café") == ["ünïcode", "café"]
    assert tokenize("  ,,, ") == []
    doc = document(product("p", "Red Mug", "ceramic", "Kitchen", sku="MG-7", tags=["gift", 3], flag=True))
    assert doc.count("red") == 2  # the title counts twice
    assert {"ceramic", "kitchen", "mg", "7", "mg7", "gift", "3"} <= set(doc)
    assert "true" not in doc  # booleans are not words


def test_scores_match_a_hand_computed_bm25() -> None:
    docs = [product("a", "red mug"), product("b", "blue mug", "a large mug"), product("c", "green plate")]
    index = KeywordIndex.build(docs)
    alive = np.ones(3, dtype=bool)
    rows, scores = index.scores("red mug", alive)
    assert rows.tolist() == [0, 1]
    lengths = [len(document(p)) for p in docs]
    avgdl = sum(lengths) / 3

    def weight(tf: float, dl: float, df: int) -> float:
        idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf * (K1 + 1) / (tf + K1 * (1 - 0.75 + 0.75 * dl / avgdl))

    idf_total = math.log(1 + 2.5 / 1.5) + math.log(1 + 1.5 / 2.5)  # "red" in 1 doc, "mug" in 2
    expect_a = (weight(2, lengths[0], 1) + weight(2, lengths[0], 2)) / (idf_total * FULL_MATCH)
    expect_b = weight(3, lengths[1], 2) / (idf_total * FULL_MATCH)
    assert scores[0] == pytest.approx(min(expect_a, 1.0)) and scores[1] == pytest.approx(expect_b)
    assert scores[0] > scores[1] > 0
    # Unknown words count in the normaliser (the product lacks them) but match nothing.
    _, with_unknown = index.scores("red mug zzz", alive)
    assert with_unknown[0] < scores[0]
    assert index.scores("zzz", alive)[0].size == 0 and index.scores("", alive)[0].size == 0


def test_segments_tombstones_and_filters() -> None:
    base = KeywordIndex.build([product(f"p{i}", f"item {i} lamp") for i in range(5)])
    grown = base.extend([product("p5", "desk lamp XR-9")])
    assert base.rows == 5 and grown.rows == 6 and len(grown.segments) == 2
    alive = np.ones(6, dtype=bool)
    rows, _ = grown.scores("xr9", alive)
    assert rows.tolist() == [5]
    alive[5] = False  # replaced or deleted
    assert grown.scores("xr9", alive)[0].size == 0
    allowed = alive.copy()
    allowed[:3] = False
    assert grown.scores("lamp", alive, allowed)[0].tolist() == [3, 4]
    # Many small refreshes merge into one segment; answers do not change.
    many = base
    for i in range(12):
        many = many.extend([product(f"n{i}", f"lamp number{i}")])
    assert len(many.segments) <= 8
    full = KeywordIndex.build(
        [product(f"p{i}", f"item {i} lamp") for i in range(5)]
        + [product(f"n{i}", f"lamp number{i}") for i in range(12)]
    )
    every = np.ones(17, dtype=bool)
    r1, s1 = many.scores("lamp number7", every)
    r2, s2 = full.scores("lamp number7", every)
    assert r1.tolist() == r2.tolist() and np.allclose(s1, s2)


def test_query_validation() -> None:
    with pytest.raises(InvalidInput, match="mode"):
        SearchQuery(text="x", mode="fuzzy")
    with pytest.raises(InvalidInput, match="keyword search"):
        SearchQuery(image=object(), mode="keyword")  # type: ignore[arg-type]


@pytest.mark.integration
def test_hybrid_puts_exact_names_first_and_keeps_meaning_order(s3_settings: Settings) -> None:
    """On the S3 server: products whose vectors say little about their names (as sentence and
    CLIP vectors blur brand names and codes) are found by name in hybrid mode; a query with no
    matching word ranks exactly as vector search; filters hold; removed products vanish."""
    rng = np.random.default_rng(0)
    cat = Catalog.from_settings(s3_settings, clip_dim=8, text_dim=8, space={"clip": "t", "text": "t"})
    # Text vectors that cannot tell the shoes apart (one direction plus a little noise), as
    # sentence vectors of "Zephyr10 Trail Runner" and "Zephyr20 Trail Runner" barely differ.
    centre = rng.standard_normal((1, 8)).astype(np.float32)
    txt = l2_normalize(centre + 0.05 * rng.standard_normal((60, 8)).astype(np.float32))
    recs = []
    for i in range(60):
        name = f"Zephyr{i} Trail Runner" if i % 10 == 0 else f"Everyday shoe {i}"
        p = Product(
            f"p{i:03d}",
            name,
            "comfortable",
            "shoes" if i % 2 == 0 else "boots",
            50.0,
            None,
            {"sku": f"ZX-{1000 + i}"},
            NOW,
            NOW,
        )
        recs.append(ProductRecord(p, None, txt[i], f"h{i}"))
    cat.upsert(recs)
    hot = HotCatalog(cat)
    hot.refresh()
    snap = hot.snapshot
    assert snap is not None
    w = Weights(0.0, 1.0)
    q = l2_normalize(centre + 0.05 * rng.standard_normal((1, 8)).astype(np.float32))[0]
    for i in range(0, 60, 10):
        vector = hot_ranked(hot, snap, None, q, w, 5)
        found = hybrid(hot, snap, q, w, 5, f"Zephyr{i} Trail Runner")
        assert found[0].product.product_id == f"p{i:03d}"
        assert found[0].keyword_score == pytest.approx(1.0)
        assert vector[0].keyword_score is None
        # the score is the vector score plus the weighted keyword score, and results are sorted by it
        assert found[0].score == pytest.approx(found[0].text_similarity + 0.3 * found[0].keyword_score)
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        by_sku = keyword_ranked(snap, f"zx{1000 + i}", 3)
        assert [h.product.product_id for h in by_sku] == [f"p{i:03d}"]
    plain = hot_ranked(hot, snap, None, q, w, 10)
    nothing = hybrid(hot, snap, q, w, 10, "velvet armchair")
    assert [h.product.product_id for h in nothing] == [h.product.product_id for h in plain]
    assert [h.score for h in nothing] == pytest.approx([h.score for h in plain])
    boots = hybrid(hot, snap, q, w, 10, "Zephyr10 Trail Runner", Filters(categories=("boots",)))
    assert boots and all(h.product.category == "boots" for h in boots)  # p010 is shoes: filtered out
    cat.delete("p020")
    hot.refresh()
    snap2 = hot.snapshot
    assert snap2 is not None and snap2.version > snap.version
    after = hybrid(hot, snap2, q, w, 5, "Zephyr20 Trail Runner")
    assert "p020" not in [h.product.product_id for h in after]
    assert keyword_ranked(snap2, "zephyr20", 5) == []
    # top_k cut: the same head as the full ranking (score, then product id), ties included
    everything = keyword_ranked(snap2, "comfortable zephyr10", 100)
    assert len(everything) == 59  # every live product says "comfortable"
    assert [(-h.score, h.product.product_id) for h in everything] == sorted(
        (-h.score, h.product.product_id) for h in everything
    )
    assert keyword_ranked(snap2, "comfortable zephyr10", 4) == everything[:4]
