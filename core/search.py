"""Text search, search by image, and similar products over the catalog.

Scoring. Each product stores a CLIP image vector (absent for text-only products) and a text
vector. A query brings a CLIP-space vector ``q_img`` (CLIP text of the query, CLIP image of a
photo, or the normalised sum of both) and, for text queries, a sentence vector ``q_txt``:

    score(p) = sum_m w_m * cos_m(q, p) / sum_m w_m,   m over modalities both q and p have

With both modalities present this is the contract's ``w_img*cos_img + w_txt*cos_txt`` divided by
``w_img + w_txt`` (= 1 at the 0.7/0.3 defaults). A product without an image is scored on the
evidence it has instead of being given a made-up image similarity.

Candidates come from one filtered vector search per modality (``CANDIDATE_FACTOR * top_k`` each);
their union is re-scored exactly with the stored vectors.

Modes (``SearchQuery.mode``). ``vector`` is the score above. ``hybrid`` adds full-text evidence:
the candidates of a BM25 search over title, description, category and attributes
(:mod:`core.keyword`) join the vector candidates, and every candidate scores

    score(p) = vector_score(p) + keyword_weight * bm25_norm(q, p)

with ``bm25_norm`` in [0, 1], 1.0 for "every query word in the title of a document of average
length" (0 when no word matches, so a query without lexical matches ranks exactly as in
``vector`` mode). Exact product names, brands and SKU codes, which sentence and CLIP vectors
blur, come first; paraphrases still rank by meaning. This is a linear fusion of calibrated
scores, which beats reciprocal rank fusion when one side has a decisive match (an exact title
ranks first in BM25 but may rank 30th on vectors; RRF would add 1/61 + 1/90 and lose to any
near-duplicate ranked well on both). ``keyword`` is BM25 alone (no model runs). Hybrid and
keyword search need the hot catalog; without it hybrid answers as ``vector``.

The matching set. A text or photo search also answers "how many products match, and how are they
spread": the *matching set* is the products passing the filters that match a query word
(typo-tolerant, :mod:`core.keyword`) or are among the ``match_candidates`` (MATCH_CANDIDATES)
best by vector score; in keyword mode, the keyword matches alone. ``total_matches`` is its size
and facets count over it. It is ranked once: the vector candidates and the best
``match_candidates`` keyword matches are scored exactly (as above) and come first, by score; the
other keyword matches follow by keyword score; ties go to the smaller product id. A page
(``offset``, ``top_k``) is a slice of that ranking, so pages never repeat or skip a product while
the catalog does not change. The other orders (``price_asc``, ``price_desc``, ``newest``) sort
the matching set by the field, ties by that ranking, products without the field last.

Merchandising (:mod:`core.merchandising`): boosts rescale the exactly scored pool before it is
ranked; pinned products (that pass the filters) head the ranking in any order and join the
matching set, buried ones close it; excluded and out-of-stock products are filtered out.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from core.analytics import price_stats
from core.catalog import Candidate, Catalog
from core.embedding import Embedder
from core.embedding.batcher import QueryEncoder, TextVectors
from core.errors import InvalidInput, NotFound, ServiceError, Unavailable
from core.hot import (
    HotCatalog,
    HotSnapshot,
    Scored,
    best_positions,
    score_rows,
    top_rows,
    unique_rows,
)
from core.merchandising import NO_MERCHANDISING, Merchandising, arrange, boosted_array
from core.types import Filters, SearchHit, Vector, Weights, attribute_text

CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 50
MAX_QUERY_CHARS = 1000
SEARCH_MODES = ("vector", "hybrid", "keyword")
SORTS = ("relevance", "price_asc", "price_desc", "newest")
MATCH_CANDIDATES = 1000
EXACT_POOL = 200  # per modality and of the keyword matches: scored exactly, ranked first
MAX_OFFSET = 1000
MAX_FACETS = 10
FACET_VALUES = 20  # values per category/attribute facet, the most frequent first
PRICE_BUCKETS = 5  # about this many round-width price buckets


@dataclass(frozen=True)
class SearchQuery:
    """A text and/or image query with filters and weights."""

    text: str | None = None
    image: Image.Image | None = None
    top_k: int = 10
    filters: Filters = Filters()
    weights: Weights | None = None
    mode: str = "vector"
    keyword_weight: float = 0.5
    offset: int = 0
    sort: str = "relevance"
    facets: tuple[str, ...] = ()
    typo_tolerance: bool = True
    merch: Merchandising = NO_MERCHANDISING
    """Pins, boosts and burials (the request's and its saved rules')."""

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}")
        if self.sort not in SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(SORTS)}")
        if len(self.facets) > MAX_FACETS:
            raise InvalidInput(f"at most {MAX_FACETS} facets per request")
        for name in self.facets:
            if name not in ("category", "price") and not (name.startswith("attributes.") and len(name) > 11):
                raise InvalidInput(f"unknown facet {name!r}: use category, price or attributes.<name>")
        if (self.text is None or not self.text.strip()) and self.image is None:
            raise InvalidInput("a query text or an image is required")
        if self.mode not in SEARCH_MODES:
            raise InvalidInput(f"mode must be one of {', '.join(SEARCH_MODES)}")
        if self.mode == "keyword" and (self.text is None or not self.text.strip()):
            raise InvalidInput("keyword search needs a query text")
        if self.mode == "keyword" and self.image is not None:
            raise InvalidInput("keyword search takes no image (use mode hybrid or vector)")
        if not 0.0 <= self.keyword_weight <= 10.0:
            raise InvalidInput("keyword_weight must be between 0 and 10")
        if self.text is not None and len(self.text) > MAX_QUERY_CHARS:
            raise InvalidInput(f"query longer than {MAX_QUERY_CHARS} characters")
        if not 1 <= self.top_k <= 1000:
            raise InvalidInput("top_k must be between 1 and 1000")


@dataclass(frozen=True)
class FacetValue:
    value: str
    count: int


@dataclass(frozen=True)
class PriceBucket:
    """Products with ``min <= price < max``."""

    min: float
    max: float
    count: int


@dataclass(frozen=True)
class SearchPage:
    """One page of a search: its hits, the size of the matching set (None when answered without
    the in-memory catalog, which the matching set needs) and the facets asked for."""

    hits: list[SearchHit]
    total_matches: int | None = None
    facets: dict[str, list[FacetValue] | list[PriceBucket]] = field(default_factory=dict)


class QueryCache:
    """Query text -> (sentence vector, CLIP text vector): a thread-safe LRU. Repeated queries
    (most traffic on a shop's search box) skip both text encoders."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, bool], tuple[Vector, Vector | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bool]) -> tuple[Vector, Vector | None] | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def holds(self, key: tuple[str, bool]) -> bool:
        """Whether ``key`` is cached (not counted as a lookup)."""
        with self._lock:
            return key in self._items

    def put(self, key: tuple[str, bool], value: tuple[Vector, Vector | None]) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Timings:
    """Where one query's time went (seconds), for metrics."""

    inference: float = 0.0
    vector_search: float = 0.0
    cache_hit: bool | None = None


def _cos(a: Vector | None, b: Vector | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.dot(a, b))


def _best_photo(q_img: Vector | None, c: Candidate) -> float | None:
    """A product's image similarity: its best photo's."""
    first = _cos(q_img, c.image_vector)
    if first is None or q_img is None or not c.more_image_vectors:
        return first
    return max(first, *(float(np.dot(q_img, v)) for v in c.more_image_vectors))


def fuse(
    candidates: list[Candidate],
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    top_k: int,
) -> list[SearchHit]:
    """Exact fused scores for ``candidates`` (see module docstring), best first."""
    seen: set[str] = set()
    hits: list[SearchHit] = []
    for c in candidates:
        pid = c.product.product_id
        if pid in seen:
            continue
        seen.add(pid)
        s_img = _best_photo(q_img, c) if weights.image > 0 else None
        s_txt = _cos(q_txt, c.text_vector) if weights.text > 0 else None
        num = den = 0.0
        if s_img is not None:
            num += weights.image * s_img
            den += weights.image
        if s_txt is not None:
            num += weights.text * s_txt
            den += weights.text
        if den == 0:
            continue
        hits.append(SearchHit(c.product, num / den, s_img, s_txt))
    hits.sort(key=lambda h: (-h.score, h.product.product_id))
    return hits[:top_k]


def ranked(
    catalog: Catalog,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    top_k: int,
    filters: Filters = Filters(),
    exclude_id: str | None = None,
) -> list[SearchHit]:
    """Candidate generation per modality + exact fused re-scoring."""
    k = max(top_k * CANDIDATE_FACTOR, MIN_CANDIDATES)
    candidates: list[Candidate] = []
    if q_img is not None and weights.image > 0:
        candidates += catalog.vector_search("image", q_img, k, filters, exclude_id)
    if q_txt is not None and weights.text > 0:
        candidates += catalog.vector_search("text", q_txt, k, filters, exclude_id)
    return fuse(candidates, q_img, q_txt, weights, top_k)


def hot_ranked(
    hot: HotCatalog,
    snap: HotSnapshot,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    top_k: int,
    filters: Filters = Filters(),
    exclude_id: str | None = None,
) -> list[SearchHit]:
    """:func:`ranked` on the in-memory snapshot (similar products): same candidates rule, same
    exact scores."""
    k = max(top_k * CANDIDATE_FACTOR, MIN_CANDIDATES)
    allowed = snap.mask(filters)
    n_allowed = int(allowed.sum())
    drop = snap.index.get(exclude_id, -1) if exclude_id is not None else -1
    if drop >= 0 and allowed[drop]:
        # Ask for one more candidate and drop the anchor afterwards: clearing its bit would make
        # an unfiltered ANN search take the (slower) id-selector path.
        k += 1
    parts = []
    if q_img is not None and weights.image > 0:
        parts.append(hot.candidates(snap, "image", q_img, k, allowed, n_allowed))
    if q_txt is not None and weights.text > 0:
        parts.append(hot.candidates(snap, "text", q_txt, k, allowed, n_allowed))
    rows = unique_rows(parts)
    scored = score_rows(snap, rows[rows != drop], q_img, q_txt, weights.image, weights.text)
    return [scored_hit(snap, scored, i) for i in top_rows(scored, snap, top_k)]


def scored_hit(snap: HotSnapshot, scored: Scored, i: int) -> SearchHit:
    """Position ``i`` of ``scored`` as a hit (a modality neither side has: None)."""
    s_img, s_txt = float(scored.s_img[i]), float(scored.s_txt[i])
    return SearchHit(
        snap.products[int(scored.rows[i])],
        float(scored.score[i]),
        None if np.isnan(s_img) else s_img,
        None if np.isnan(s_txt) else s_txt,
    )


def keyword_ranked(snap: HotSnapshot, text: str, top_k: int, filters: Filters = Filters()) -> list[SearchHit]:
    """BM25 alone: the best ``top_k`` products matching the query's words, ties by product id."""
    query = SearchQuery(text=text, top_k=top_k, filters=filters, mode="keyword")
    return matching_page(None, snap, None, None, Weights(0.0, 1.0), query, text).hits


def _rank(
    catalog: Catalog,
    hot: HotCatalog | None,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    top_k: int,
    filters: Filters = Filters(),
    exclude_id: str | None = None,
    merch: Merchandising = NO_MERCHANDISING,
) -> list[SearchHit]:
    snap = hot.current() if hot is not None else None
    fetch = merch.fetch(top_k)
    if hot is not None and snap is not None:
        hits = hot_ranked(hot, snap, q_img, q_txt, weights, fetch, filters, exclude_id)
    else:
        hits = ranked(catalog, q_img, q_txt, weights, fetch, filters, exclude_id)
    return merchandised(catalog, snap, hits, top_k, merch, filters, q_img, q_txt, weights, exclude_id)


def merchandised(
    catalog: Catalog,
    snap: HotSnapshot | None,
    hits: list[SearchHit],
    top_k: int,
    merch: Merchandising,
    filters: Filters,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    exclude_id: str | None = None,
) -> list[SearchHit]:
    """The ``top_k`` of ranked ``hits`` after ``merch`` (:func:`core.merchandising.arrange`); a
    pinned product that is not among them is scored as they are."""
    if not merch.active:
        return hits[:top_k]
    if exclude_id is not None:
        filters = replace(filters, exclude_ids=filters.exclude_ids | {exclude_id})

    def pinned(pid: str) -> SearchHit | None:
        if snap is not None:
            row = snap.index.get(pid)
            if row is None:
                return None
            scored = score_rows(snap, np.array([row], dtype=np.int64), q_img, q_txt, weights.image, weights.text)
            return scored_hit(snap, scored, 0) if len(scored.rows) else SearchHit(snap.products[row], 0.0, None, None)
        try:
            cand = catalog.get_candidate(pid)
        except NotFound:
            return None
        found = fuse([cand], q_img, q_txt, weights, 1)
        return found[0] if found else SearchHit(cand.product, 0.0, None, None)

    return arrange(hits, top_k, merch, filters, lambda h: h.product, lambda h: h.score, _rescored, pinned)


def _rescored(hit: SearchHit, score: float) -> SearchHit:
    return replace(hit, score=score)


def _text_vectors(
    embedder: Embedder,
    text: str,
    with_clip: bool,
    cache: QueryCache | None,
    timings: Timings,
    encoder: QueryEncoder | None = None,
    encoded: TextVectors | None = None,
) -> tuple[Vector, Vector | None]:
    key = (text, with_clip)
    if encoded is not None:  # encoded by the caller (awaited on its event loop)
        timings.cache_hit = False
        if cache is not None:
            cache.put(key, encoded)
        return encoded
    found = cache.get(key) if cache is not None else None
    if found is not None:
        timings.cache_hit = True
        return found
    started = time.perf_counter()
    if encoder is not None:  # batched with other requests' texts
        q_txt, q_img = encoder.text(text, with_clip)
    else:
        q_txt = embedder.text.embed_texts([text])[0]
        q_img = embedder.clip.embed_texts([text])[0] if with_clip else None
    timings.inference += time.perf_counter() - started
    if cache is not None:
        timings.cache_hit = False
        cache.put(key, (q_txt, q_img))
    return q_txt, q_img


def searches_memory(query: SearchQuery, hot: HotCatalog | None) -> bool:
    """Whether :func:`search` runs ``query`` on the hot catalog alone, once its text vectors
    are at hand: the hot catalog holds this process's writes and the query asks for one page of
    relevance (no photo to decode, no walk over the whole matching set)."""
    if hot is None or not hot.in_memory or query.image is not None:
        return False
    # Facets, other sorts and attribute filters walk the whole matching set (or build an index
    # on first use): off the event loop.
    return not (query.facets or query.sort != "relevance" or query.filters.attributes)


def encode_first(
    query: SearchQuery, default: Weights, hot: HotCatalog | None, encoder: QueryEncoder | None
) -> tuple[str, bool] | None:
    """The (text, with CLIP) a caller may encode itself (:meth:`QueryEncoder.submit_text`) and
    pass to :func:`search` as ``encoded``, where the encode is all that keeps ``query`` from a
    search from memory; None otherwise."""
    if encoder is None or query.mode == "keyword" or not searches_memory(query, hot):
        return None
    text = query.text.strip() if query.text else ""
    return (text, (query.weights or default).image > 0) if text else None


def answers_from_memory(query: SearchQuery, default: Weights, hot: HotCatalog | None, cache: QueryCache | None) -> bool:
    """Whether :func:`search` answers ``query`` from memory alone: :func:`searches_memory` and
    no encoder runs (keyword mode, or its text vectors are cached). Such a search is a
    millisecond of numpy, cheaper run where the request is than handed to a thread."""
    if not searches_memory(query, hot):
        return False
    if query.mode == "keyword":
        return True
    text = query.text.strip() if query.text else ""
    return bool(text) and cache is not None and cache.holds((text, (query.weights or default).image > 0))


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Concurrent identical searches share one run (a popular query during a sale): the first
    caller runs it, callers that arrive while it runs get its answer."""

    def __init__(self) -> None:
        self.shared = 0
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, fn: Callable[[], SearchPage]) -> SearchPage:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                self.shared += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            shared: SearchPage = flight.result
            return shared
        try:
            result = flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return result


def search(
    catalog: Catalog,
    embedder: Embedder,
    query: SearchQuery,
    default: Weights,
    hot: HotCatalog | None = None,
    cache: QueryCache | None = None,
    timings: Timings | None = None,
    encoder: QueryEncoder | None = None,
    flights: SingleFlight | None = None,
    match_candidates: int = MATCH_CANDIDATES,
    encoded: TextVectors | None = None,
) -> SearchPage:
    """Text search, search by image, or both at once (from ``hot`` once it has loaded; query
    text vectors from ``cache`` when it holds them): one page of the matching set's ranking (see
    the module docstring). With ``encoder``, encodes are batched with other requests'; with
    ``flights``, identical concurrent text searches run once. ``encoded``: the query text's
    vectors, when the caller encoded them (:meth:`QueryEncoder.submit_text`)."""
    timings = timings if timings is not None else Timings()
    if flights is not None and query.image is None:
        t = timings
        return flights.run(
            (query, default, match_candidates),
            lambda: _search(catalog, embedder, query, default, hot, cache, t, encoder, match_candidates, encoded),
        )
    return _search(catalog, embedder, query, default, hot, cache, timings, encoder, match_candidates, encoded)


def loaded_snapshot(hot: HotCatalog | None, what: str) -> HotSnapshot:
    """The hot catalog's snapshot, loaded now if this host never started it."""
    if hot is None:
        raise InvalidInput(f"{what} needs the in-memory catalog, which this service runs without (HOT_CATALOG)")
    snap = hot.current()
    if snap is None:
        try:
            hot.refresh()
        except ServiceError:
            raise
        except Exception as exc:  # storage trouble: retryable
            raise Unavailable(f"{what}: the in-memory catalog could not be loaded: {exc}") from exc
        snap = hot.current()
    if snap is None:
        raise Unavailable(f"{what}: the in-memory catalog could not be loaded; retry")
    return snap


def _search(
    catalog: Catalog,
    embedder: Embedder,
    query: SearchQuery,
    default: Weights,
    hot: HotCatalog | None,
    cache: QueryCache | None,
    timings: Timings,
    encoder: QueryEncoder | None,
    match_candidates: int,
    encoded: TextVectors | None = None,
) -> SearchPage:
    weights = query.weights or default
    q_img: Vector | None = None
    q_txt: Vector | None = None
    text = query.text.strip() if query.text else None
    snap = hot.current() if hot is not None else None
    if query.mode == "keyword" or query.sort != "relevance" or query.facets or query.filters.attributes:
        what = "keyword search" if query.mode == "keyword" else "sorting, facets and attribute filters"
        snap = loaded_snapshot(hot, what)
    if query.mode != "keyword":
        if text:
            q_txt, q_img = _text_vectors(embedder, text, weights.image > 0, cache, timings, encoder, encoded)
        if query.image is not None:
            started = time.perf_counter()
            img_vec = encoder.clip_image(query.image) if encoder else embedder.clip.embed_images([query.image])[0]
            timings.inference += time.perf_counter() - started
            if q_img is None:
                q_img = img_vec
            else:
                both = q_img + img_vec
                q_img = (both / max(float(np.linalg.norm(both)), 1e-12)).astype(np.float32)
            if text is None:
                # A photo alone carries no sentence vector: rank on the image side only.
                weights = Weights(image=1.0, text=0.0)
    started = time.perf_counter()
    try:
        if hot is not None and snap is not None:
            return matching_page(hot, snap, q_img, q_txt, weights, query, text, match_candidates)
        # Without the in-memory catalog: the best offset + top_k from LanceDB, no matching set.
        end = query.offset + query.top_k
        hits = ranked(catalog, q_img, q_txt, weights, query.merch.fetch(end), query.filters)
        hits = merchandised(catalog, None, hits, end, query.merch, query.filters, q_img, q_txt, weights)
        return SearchPage(hits[query.offset :])
    finally:
        timings.vector_search += time.perf_counter() - started


def matching_page(
    hot: HotCatalog | None,
    snap: HotSnapshot,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    query: SearchQuery,
    text: str | None,
    match_candidates: int = MATCH_CANDIDATES,
) -> SearchPage:
    """The page ``query`` asks for of the matching set's ranking, its size and facets (see the
    module docstring)."""
    allowed = snap.mask(query.filters)
    n_allowed = int(allowed.sum())
    empty = np.zeros(0, dtype=np.int64)
    kw_rows, kw_scores = empty, np.zeros(0, dtype=np.float64)
    if text:  # keyword matches belong to the matching set in every mode
        kw_rows, kw_scores = snap.keywords.scores(text, snap.alive, allowed, typos=query.typo_tolerance)
    lists: list[Any] = []  # per modality, best first
    if query.mode == "keyword":
        pool = Scored(kw_rows, kw_scores, np.full(len(kw_rows), np.nan), np.full(len(kw_rows), np.nan))
        rest = empty
    else:
        assert hot is not None, "vector and hybrid pages need the hot catalog's ANN indexes"
        k = min(match_candidates, n_allowed)
        scored = min(EXACT_POOL, k)
        if k and q_img is not None and weights.image > 0:
            lists.append(hot.candidates(snap, "image", q_img, k, allowed, n_allowed, ordered=True))
        if k and q_txt is not None and weights.text > 0:
            lists.append(hot.candidates(snap, "text", q_txt, k, allowed, n_allowed, ordered=True))
        exact = [ranks[:scored] for ranks in lists]
        hybrid = query.mode == "hybrid" and len(kw_rows) > 0
        if hybrid:  # the best keyword matches are scored exactly too
            best_kw = np.argpartition(-kw_scores, scored - 1)[:scored] if len(kw_rows) > scored else slice(None)
            exact.append(kw_rows[best_kw])
        pool = score_rows(snap, unique_rows(exact), q_img, q_txt, weights.image, weights.text)
        if hybrid:
            pool = replace(pool, score=pool.score + query.keyword_weight * _lookup(kw_rows, kw_scores, pool.rows))
        member = np.zeros(len(snap.products), dtype=bool)
        member[kw_rows] = True
        for ranks in lists:
            member[ranks] = True
        member[pool.rows] = False
        rest = np.flatnonzero(member)
    merch = query.merch
    if merch.boost and len(pool.rows):
        factor = np.ones(len(pool.rows))
        for b in merch.boost:
            factor[snap.mask(b.filters)[pool.rows]] *= b.factor
        pool = replace(pool, score=boosted_array(pool.score, factor))
    end = query.offset + query.top_k
    pinned = [r for pid in merch.pin if (r := snap.index.get(pid)) is not None and allowed[r]]
    buried = np.array([r for pid in merch.bury if (r := snap.index.get(pid)) is not None], dtype=np.int64)
    if pinned or len(buried):
        # The whole ranking, then the pinned products first and the buried ones last.
        rest_order = _rest_order(snap, rest, lists, kw_rows, kw_scores)
        ranking = np.concatenate([pool.rows[np.argsort(-pool.score, kind="stable")], rest[rest_order]])
        ranking = _sorted(snap, ranking, query.sort)
        first = np.array(pinned, dtype=np.int64)
        ranking = ranking[~np.isin(ranking, first)]
        down = np.isin(ranking, buried)
        page = np.concatenate([first, ranking[~down], ranking[down]])[query.offset : end]
        rest = np.union1d(rest, first[~np.isin(first, pool.rows)])
    elif query.sort == "relevance":
        # Only the head of the exactly scored pool is put in order (ties by product id, in Python).
        head = pool.rows[best_positions(snap, pool.rows, pool.score, end)]
        if len(head) < end:
            more = _rest_order(snap, rest, lists, kw_rows, kw_scores)[: end - len(head)]
            head = np.concatenate([head, rest[more]])
        page = head[query.offset :]
    else:
        # The whole matching set by the field, ties by the ranking (equal scores by catalog row).
        rest_order = _rest_order(snap, rest, lists, kw_rows, kw_scores)
        ranking = np.concatenate([pool.rows[np.argsort(-pool.score, kind="stable")], rest[rest_order]])
        page = _sorted(snap, ranking, query.sort)[query.offset : end]
    hits = _hits(snap, page, pool, kw_rows, kw_scores, q_img, q_txt, weights, query)
    members = np.concatenate([pool.rows, rest])
    return SearchPage(hits, len(members), facet_counts(snap, members, query.facets) if query.facets else {})


def _rest_order(snap: HotSnapshot, rest: Any, lists: Sequence[Any], kw_rows: Any, kw_scores: Any) -> Any:
    """Positions of the members beyond the exactly scored pool in ranking order: by keyword
    score, then by their best place in a modality's vector list, then by row."""
    place = np.full(len(snap.products), np.iinfo(np.int64).max, dtype=np.int64)
    for ranks in lists:
        place[ranks] = np.minimum(place[ranks], np.arange(len(ranks)))
    return np.lexsort((rest, place[rest], -_lookup(kw_rows, kw_scores, rest)))


def _lookup(keys: Any, values: Any, rows: Any) -> Any:
    """``values`` of ``rows`` by the sorted ``keys`` (0 where a row is not among them)."""
    out = np.zeros(len(rows), dtype=np.float64)
    if len(keys) and len(rows):
        at = np.minimum(np.searchsorted(keys, rows), len(keys) - 1)
        found = keys[at] == rows
        out[found] = values[at[found]]
    return out


def _sorted(snap: HotSnapshot, ranking: Any, sort: str) -> Any:
    """``ranking`` (rows, best first) in ``sort`` order; ties keep their ranking order."""
    if sort == "relevance" or len(ranking) <= 1:
        return ranking
    if sort == "newest":
        key = -snap.created[ranking]
    else:
        prices = snap.prices[ranking]
        key = np.where(np.isnan(prices), np.inf, prices if sort == "price_asc" else -prices)
    return ranking[np.lexsort((np.arange(len(ranking)), key))]


def _hits(
    snap: HotSnapshot,
    page: Any,
    pool: Scored,
    kw_rows: Any,
    kw_scores: Any,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    query: SearchQuery,
) -> list[SearchHit]:
    """The page's rows as hits; rows from outside the exactly scored pool get their scores now."""
    by_row = np.argsort(pool.rows)
    at = np.minimum(np.searchsorted(pool.rows, page, sorter=by_row), max(len(pool.rows) - 1, 0))
    inside = by_row[at] if len(pool.rows) else np.zeros(0, dtype=np.int64)
    found = pool.rows[inside] == page if len(pool.rows) else np.zeros(len(page), dtype=bool)
    score = np.zeros(len(page))
    s_img = np.full(len(page), np.nan)
    s_txt = np.full(len(page), np.nan)
    score[found], s_img[found], s_txt[found] = (
        pool.score[inside[found]],
        pool.s_img[inside[found]],
        pool.s_txt[inside[found]],
    )
    for i in np.flatnonzero(~found):  # members from beyond the exactly scored pool
        more = score_rows(snap, page[i : i + 1], q_img, q_txt, weights.image, weights.text)
        if len(more.rows):  # else no modality of the query scores this product
            score[i], s_img[i], s_txt[i] = more.score[0], more.s_img[0], more.s_txt[0]
    kw = _lookup(kw_rows, kw_scores, page)
    if query.mode == "hybrid":
        score[~found] += query.keyword_weight * kw[~found]
    return [
        SearchHit(
            snap.products[int(row)],
            float(score[i]),
            None if math.isnan(s_img[i]) else float(s_img[i]),
            None if math.isnan(s_txt[i]) else float(s_txt[i]),
            float(kw[i]) if query.text and query.mode != "vector" else None,
        )
        for i, row in enumerate(page)
    ]


def facet_counts(snap: HotSnapshot, rows: Any, names: Sequence[str]) -> dict[str, list[FacetValue] | list[PriceBucket]]:
    """Exact counts of ``names`` over the products at ``rows``."""
    out: dict[str, list[FacetValue] | list[PriceBucket]] = {}
    for name in names:
        if name == "price":
            out[name] = price_buckets(snap.prices[rows])
        elif name == "category":
            labels = {code: label for label, code in snap.categories.names.items()}
            counts = np.bincount(snap.categories.codes[rows], minlength=len(labels))
            out[name] = _top_values((label, int(counts[code])) for code, label in labels.items() if label is not None)
        else:
            attr = name.removeprefix("attributes.")
            values = snap.attribute_rows.get(attr, {})
            if len(values) <= len(rows):  # few distinct values: count each in the set
                member = np.zeros(len(snap.products), dtype=bool)
                member[rows] = True
                out[name] = _top_values((v, int(np.count_nonzero(member[r]))) for v, r in values.items())
            else:  # many distinct values (ids, free text): walk the set instead
                tally: Counter[str] = Counter()
                for row in rows.tolist():
                    value = snap.products[row].attributes.get(attr)
                    for v in value if isinstance(value, list) else (value,):
                        t = attribute_text(v)
                        if t is not None:
                            tally[t] += 1
                out[name] = _top_values(tally.items())
    return out


def _top_values(pairs: Any) -> list[FacetValue]:
    found = sorted(((-n, v) for v, n in pairs if n > 0))[:FACET_VALUES]
    return [FacetValue(v, -n) for n, v in found]


def price_buckets(prices: Any) -> list[PriceBucket]:
    """Counts of ``prices`` (NaN: no price, not counted) in at most :data:`PRICE_BUCKETS` + 1
    buckets of a round width (the dashboard's price histogram, :func:`price_stats`); empty
    buckets are left out."""
    stats = price_stats(np.asarray(prices, dtype=np.float64), PRICE_BUCKETS)
    edges = stats.edges
    return [PriceBucket(edges[i], edges[i + 1], n) for i, n in enumerate(stats.counts) if n]


def similar(
    catalog: Catalog,
    product_id: str,
    top_k: int,
    default: Weights,
    filters: Filters = Filters(),
    hot: HotCatalog | None = None,
    merch: Merchandising = NO_MERCHANDISING,
) -> list[SearchHit]:
    """Products nearest to a stored product (image-to-image and text-to-text), never itself."""
    snap = hot.current() if hot is not None else None
    if snap is not None and product_id in snap.index:
        row = snap.index[product_id]
        q_img = snap.image[row].astype(np.float32) if snap.has_image[row] else None
        q_txt = snap.text[row].astype(np.float32)
        return _rank(catalog, hot, q_img, q_txt, default, top_k, filters, product_id, merch)
    anchor = catalog.get_candidate(product_id)
    return _rank(catalog, hot, anchor.image_vector, anchor.text_vector, default, top_k, filters, product_id, merch)
