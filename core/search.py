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
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from core.catalog import Candidate, Catalog
from core.embedding import Embedder
from core.embedding.batcher import QueryEncoder
from core.errors import InvalidInput, ServiceError, Unavailable
from core.hot import HotCatalog, HotSnapshot, score_rows, top_rows, unique_rows
from core.types import Filters, SearchHit, Vector, Weights

CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 50
MAX_QUERY_CHARS = 1000
SEARCH_MODES = ("vector", "hybrid", "keyword")


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

    def __post_init__(self) -> None:
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
        s_img = _cos(q_img, c.image_vector) if weights.image > 0 else None
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
    keywords: str | None = None,
    keyword_weight: float = 0.0,
) -> list[SearchHit]:
    """:func:`ranked` on the in-memory snapshot: same candidates rule, same exact scores; with
    ``keywords``, hybrid (see the module docstring)."""
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
    kw_rows = np.zeros(0, dtype=np.int64)
    kw_scores = np.zeros(0, dtype=np.float64)
    if keywords is not None:
        kw_rows, kw_scores = snap.keywords.scores(keywords, snap.alive, allowed)
        if len(kw_rows) > k:
            best = np.argpartition(-kw_scores, k - 1)[:k]
            parts.append(kw_rows[best])
        else:
            parts.append(kw_rows)
    rows = unique_rows(parts)
    scored = score_rows(snap, rows[rows != drop], q_img, q_txt, weights.image, weights.text)
    kw = None
    if keywords is not None:
        kw = np.zeros(len(scored.rows))
        if len(kw_rows):
            at = np.minimum(np.searchsorted(kw_rows, scored.rows), len(kw_rows) - 1)
            found = kw_rows[at] == scored.rows
            kw[found] = kw_scores[at[found]]
        scored = replace(scored, score=scored.score + keyword_weight * kw)
    hits = []
    for i in top_rows(scored, snap, top_k):
        s_img, s_txt = float(scored.s_img[i]), float(scored.s_txt[i])
        hits.append(
            SearchHit(
                snap.products[int(scored.rows[i])],
                float(scored.score[i]),
                None if np.isnan(s_img) else s_img,
                None if np.isnan(s_txt) else s_txt,
                None if kw is None else float(kw[i]),
            )
        )
    return hits


def keyword_ranked(snap: HotSnapshot, text: str, top_k: int, filters: Filters = Filters()) -> list[SearchHit]:
    """BM25 alone: the best ``top_k`` products matching the query's words, ties by product id."""
    rows, scores = snap.keywords.scores(text, snap.alive, snap.mask(filters))
    if len(rows) > top_k:  # keep the top_k best and everything tied with the last of them
        kth = np.partition(scores, len(scores) - top_k)[len(scores) - top_k]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    order = sorted(range(len(rows)), key=lambda i: (-scores[i], snap.products[rows[i]].product_id))[:top_k]
    return [SearchHit(snap.products[int(rows[i])], float(scores[i]), None, None, float(scores[i])) for i in order]


def _rank(
    catalog: Catalog,
    hot: HotCatalog | None,
    q_img: Vector | None,
    q_txt: Vector | None,
    weights: Weights,
    top_k: int,
    filters: Filters = Filters(),
    exclude_id: str | None = None,
    keywords: str | None = None,
    keyword_weight: float = 0.0,
) -> list[SearchHit]:
    snap = hot.current() if hot is not None else None
    if hot is not None and snap is not None:
        return hot_ranked(hot, snap, q_img, q_txt, weights, top_k, filters, exclude_id, keywords, keyword_weight)
    return ranked(catalog, q_img, q_txt, weights, top_k, filters, exclude_id)


def _text_vectors(
    embedder: Embedder,
    text: str,
    with_clip: bool,
    cache: QueryCache | None,
    timings: Timings,
    encoder: QueryEncoder | None = None,
) -> tuple[Vector, Vector | None]:
    key = (text, with_clip)
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


def answers_from_memory(query: SearchQuery, default: Weights, hot: HotCatalog | None, cache: QueryCache | None) -> bool:
    """Whether :func:`search` answers ``query`` from memory alone: no encoder runs (keyword mode,
    or its text vectors are cached) and the hot catalog holds this process's writes. Such a
    search is a millisecond of numpy, cheaper run where the request is than handed to a thread."""
    if hot is None or not hot.in_memory or query.image is not None:
        return False
    if query.mode == "keyword":
        return True
    text = query.text.strip() if query.text else ""
    return bool(text) and cache is not None and cache.holds((text, (query.weights or default).image > 0))


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[SearchHit] = []
        self.error: BaseException | None = None


class SingleFlight:
    """Concurrent identical searches share one run (a popular query during a sale): the first
    caller runs it, callers that arrive while it runs get its answer."""

    def __init__(self) -> None:
        self.shared = 0
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, fn: Callable[[], list[SearchHit]]) -> list[SearchHit]:
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
            return flight.result
        try:
            flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result


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
) -> list[SearchHit]:
    """Text search, search by image, or both at once (from ``hot`` once it has loaded; query
    text vectors from ``cache`` when it holds them). With ``encoder``, encodes are batched with
    other requests'; with ``flights``, identical concurrent text searches run once."""
    timings = timings if timings is not None else Timings()
    if flights is not None and query.image is None:
        t = timings
        return flights.run((query, default), lambda: _search(catalog, embedder, query, default, hot, cache, t, encoder))
    return _search(catalog, embedder, query, default, hot, cache, timings, encoder)


def _search(
    catalog: Catalog,
    embedder: Embedder,
    query: SearchQuery,
    default: Weights,
    hot: HotCatalog | None,
    cache: QueryCache | None,
    timings: Timings,
    encoder: QueryEncoder | None,
) -> list[SearchHit]:
    weights = query.weights or default
    q_img: Vector | None = None
    q_txt: Vector | None = None
    text = query.text.strip() if query.text else None
    if query.mode == "keyword":
        if hot is None:
            raise InvalidInput(
                "keyword search needs the in-memory catalog, which this service runs without (HOT_CATALOG)"
            )
        snap = hot.current()
        if snap is None:  # a host that never started the hot catalog: load it now
            try:
                hot.refresh()
            except ServiceError:
                raise
            except Exception as exc:  # storage trouble: retryable
                raise Unavailable(f"keyword search: the in-memory catalog could not be loaded: {exc}") from exc
            snap = hot.current()
        if snap is None:
            raise Unavailable("keyword search: the in-memory catalog could not be loaded; retry")
        started = time.perf_counter()
        hits = keyword_ranked(snap, text or "", query.top_k, query.filters)
        timings.vector_search += time.perf_counter() - started
        return hits
    if text:
        q_txt, q_img = _text_vectors(embedder, text, weights.image > 0, cache, timings, encoder)
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
    hybrid = query.mode == "hybrid" and text is not None
    keywords = text if hybrid else None
    hits = _rank(catalog, hot, q_img, q_txt, weights, query.top_k, query.filters, None, keywords, query.keyword_weight)
    timings.vector_search += time.perf_counter() - started
    return hits


def similar(
    catalog: Catalog,
    product_id: str,
    top_k: int,
    default: Weights,
    filters: Filters = Filters(),
    hot: HotCatalog | None = None,
) -> list[SearchHit]:
    """Products nearest to a stored product (image-to-image and text-to-text), never itself."""
    snap = hot.current() if hot is not None else None
    if snap is not None and product_id in snap.index:
        row = snap.index[product_id]
        q_img = snap.image[row].astype(np.float32) if snap.has_image[row] else None
        q_txt = snap.text[row].astype(np.float32)
        return _rank(catalog, hot, q_img, q_txt, default, top_k, filters, exclude_id=product_id)
    anchor = catalog.get_candidate(product_id)
    return _rank(catalog, hot, anchor.image_vector, anchor.text_vector, default, top_k, filters, product_id)
