"""The hot copy of the catalog that queries are answered from: vectors and filter columns in
memory, an ANN index per modality, refreshed from the dataset on S3 when a new version appears.

Reading LanceDB over an object store costs hundreds of milliseconds per query; this copy answers
in milliseconds while the dataset on S3 stays the one source of truth.

- **Snapshots are immutable.** A query takes the current :class:`HotSnapshot` and uses only it;
  a refresh builds a new one and swaps the reference.
- **Refresh is incremental.** A new dataset version is compared by ``(product_id, content_hash)``
  (two small columns); only new or changed rows are read in full. Their rows are appended, the
  rows they replace and deleted products become tombstones, and the ANN indexes are cloned and
  patched (``remove_ids`` + ``add_with_ids``). When tombstones pass a third of the rows, or the
  embedding space changes, the next refresh rebuilds from a full scan.
- **ANN.** Below ``ann_min_rows`` live rows every query is exact (one matrix-vector product).
  Above, a faiss IVF index with 8-bit scalar quantisation per modality proposes candidates, which
  are re-scored exactly with the float32 vectors. Filters are applied inside the ANN scan (an id
  bitmap); a filter that keeps fewer than ``EXACT_FILTER_FRACTION`` of the rows is answered by an
  exact scan of just those rows.
- **Several photos.** A product's first photo is its ``image`` row; the others are rows of a
  second matrix (``more_image``) with their owner's row. A product's image similarity is its best
  photo's: image candidates come from both matrices, and exact scores take the maximum.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from core.keyword import KeywordIndex
from core.types import Filters, Product, attribute_text

if TYPE_CHECKING:
    from core.catalog import Catalog

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
B8 = npt.NDArray[np.bool_]

EXACT_FILTER_FRACTION = 0.02
# Exact scans copy out the allowed rows only when fewer than 1/GATHER_FRACTION of them are allowed
# (a row copy costs ~13x its dot product); otherwise they score every row and mask.
GATHER_FRACTION = 10
REBUILD_TOMBSTONE_FRACTION = 1 / 3
DELTA_CHUNK = 500  # product ids per "IN (...)" read of changed rows


def load_faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)  # one query per request thread; no OpenMP oversubscription
    return faiss


def build_ann(vectors: F32, rows: I64, *, seed: int = 0) -> Any:
    """An IVF index (inner product, 8-bit scalar quantiser) over ``vectors[rows]``, ids = rows.

    ``2 * sqrt(n)`` lists: at equal recall@10 a query scans fewer codes than with ``sqrt(n)``
    (smaller lists, the same ``ANN_NPROBE``), for a few seconds more training; four times more
    lists gained nothing further (bench/results/issue30-ann-lists-100k-20261207.txt)."""
    faiss = load_faiss()
    n, d = len(rows), vectors.shape[1]
    nlist = max(8, int(2 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    rng = np.random.default_rng(seed)
    sample = rows if n <= 40 * nlist else rng.choice(rows, 40 * nlist, replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    for start in range(0, n, MATVEC_ROWS):  # float32 a block at a time (the matrix may be float16)
        part = rows[start : start + MATVEC_ROWS].astype(np.int64)
        index.add_with_ids(np.ascontiguousarray(vectors[part], dtype=np.float32), part)
    return index


@dataclass(frozen=True)
class CategoryCodes:
    """Each row's category as a small integer code, so a category filter is one table lookup per
    row instead of comparing Python strings (``np.isin`` on an object array, an order of
    magnitude slower). ``names`` maps category (None: none) to code; snapshots that extend a
    column share the older codes."""

    codes: npt.NDArray[np.int32]
    names: dict[str | None, int]

    @classmethod
    def of(cls, categories: Sequence[str | None]) -> CategoryCodes:
        return cls.empty().extend(categories)

    @classmethod
    def empty(cls) -> CategoryCodes:
        return cls(np.zeros(0, dtype=np.int32), {})

    def extend(self, more: Sequence[str | None]) -> CategoryCodes:
        """This column followed by ``more`` (the names table is copied only when it grows)."""
        names = self.names
        if any(c not in names for c in more):
            names = dict(names)
        add = np.fromiter((names.setdefault(c, len(names)) for c in more), dtype=np.int32, count=len(more))
        return CategoryCodes(np.concatenate([self.codes, add]), names)

    def labels(self) -> list[str | None]:
        by_code = {code: name for name, code in self.names.items()}
        return [by_code[int(c)] for c in self.codes]

    def __len__(self) -> int:
        return len(self.codes)

    def isin(self, wanted: Iterable[str]) -> B8:
        table = np.zeros(len(self.names) + 1, dtype=bool)
        for name in wanted:
            code = self.names.get(name)
            if code is not None:
                table[code] = True
        out: B8 = table[self.codes]
        return out


def filter_mask(
    ok: B8,
    categories: CategoryCodes,
    prices: npt.NDArray[np.float64],
    filters: Filters,
    in_stock: B8 | None,
    index: dict[str, int],
) -> B8:
    """``ok`` narrowed (in place) to the rows that satisfy ``filters`` (attributes aside); NaN
    prices fail price bounds; ``in_stock`` None: every row is in stock."""
    if filters.categories is not None:
        ok &= categories.isin(filters.categories)
    if filters.min_price is not None:
        ok &= prices >= filters.min_price
    if filters.max_price is not None:
        ok &= prices <= filters.max_price
    if in_stock is not None and not filters.include_out_of_stock:
        ok &= in_stock
    for pid in filters.exclude_ids:
        row = index.get(pid)
        if row is not None:
            ok[row] = False
    return ok


@dataclass(frozen=True)
class HotSnapshot:
    """One dataset version in memory. Row ``i`` is a product slot; ``alive[i]`` is False for
    tombstones (replaced or deleted rows)."""

    version: int
    products: list[Product]
    index: dict[str, int]  # product_id -> live row
    hashes: dict[str, str]  # product_id -> content_hash of the live row
    alive: B8
    categories: CategoryCodes
    prices: npt.NDArray[np.float64]  # NaN when absent
    image: F32  # rows of zeros where a product has no image
    has_image: B8
    text: F32
    keywords: KeywordIndex = field(default_factory=KeywordIndex.empty)  # BM25 over the same rows
    ann_image: Any = None
    ann_text: Any = None
    loaded_at: float = field(default_factory=time.time)
    more_image: F32 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    """The vectors of products' photos after the first, in row order (``more_owner``: whose)."""
    more_owner: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The row each ``more_image`` vector belongs to; never decreasing (rows and their photos are
    appended together), so a row's photos are one slice found by binary search."""
    ann_more_image: Any = None
    in_stock: B8 | None = None
    """Whether each row is in stock (None: all are)."""

    @property
    def live(self) -> int:
        return len(self.index)

    def mask(self, filters: Filters) -> B8:
        ok = filter_mask(self.alive.copy(), self.categories, self.prices, filters, self.in_stock, self.index)
        for name, value in filters.attributes:
            rows = self.attribute_rows.get(name, {}).get(value)
            keep = np.zeros(len(ok), dtype=bool)
            if rows is not None:
                keep[rows] = True
            ok &= keep
        return ok

    @cached_property
    def attribute_rows(self) -> dict[str, dict[str, I64]]:
        """attribute name -> value (as text) -> the live rows that have it (a list attribute
        under each of its elements): what attribute filters and facets read. Built on first use
        per snapshot (one pass over the live products)."""
        found: dict[str, dict[str, list[int]]] = {}
        for row in self.index.values():
            for name, value in self.products[row].attributes.items():
                for v in value if isinstance(value, list) else (value,):
                    text = attribute_text(v)
                    if text is not None:
                        found.setdefault(name, {}).setdefault(text, []).append(row)
        return {n: {v: np.asarray(r, dtype=np.int64) for v, r in vals.items()} for n, vals in found.items()}

    @cached_property
    def created(self) -> npt.NDArray[np.float64]:
        """Each row's ``created_at`` (epoch seconds), for "newest first"; built on first use."""
        return np.fromiter((p.created_at.timestamp() for p in self.products), np.float64, len(self.products))


MATVEC_ROWS = 65_536
"""Rows per block of :func:`matvec`: a float16 block is widened to float32 before its product."""


def matvec(m: npt.NDArray[Any], q: F32) -> F32:
    """``m @ q`` as float32 for a float32 or float16 ``m``, a block of rows at a time (numpy would
    widen the whole of a float16 matrix first)."""
    if m.dtype == np.float32:
        out: F32 = np.asarray(m @ q, dtype=np.float32)
        return out
    res = np.empty(len(m), dtype=np.float32)
    for start in range(0, len(m), MATVEC_ROWS):
        res[start : start + MATVEC_ROWS] = m[start : start + MATVEC_ROWS].astype(np.float32) @ q
    return res


@dataclass(frozen=True)
class FusedVectors:
    """The unit-norm fused vectors ``[sqrt(w_image) * image, sqrt(w_text) * text] / norm`` of the
    products at rows ``rows`` of a :class:`HotSnapshot`, computed when asked from the snapshot's own
    arrays (shared, not copied): what the recommender's content signal scores with, without a
    second copy of the catalog. Row ``k`` (``self[k]``) is the product at ``rows[k]``."""

    image: npt.NDArray[Any] | None  # None: the image weight is 0 (text only)
    text: npt.NDArray[Any]
    rows: I64
    w_image: float  # sqrt of the weights
    w_text: float
    inv_norm: F32  # 1 / norm per position (1 for all-zero rows)

    @classmethod
    def of(cls, snap: HotSnapshot, rows: I64, image_weight: float, text_weight: float) -> FusedVectors:
        image = snap.image if image_weight > 0 else None
        w_i, w_t = math.sqrt(image_weight), math.sqrt(text_weight)
        sq = np.zeros(len(rows), dtype=np.float64)
        for start in range(0, len(rows), MATVEC_ROWS):
            part = rows[start : start + MATVEC_ROWS]
            t = snap.text[part].astype(np.float32)
            acc = w_t * w_t * np.einsum("ij,ij->i", t, t)
            if image is not None:
                im = image[part].astype(np.float32)
                acc += w_i * w_i * np.einsum("ij,ij->i", im, im)
            sq[start : start + MATVEC_ROWS] = acc
        norm = np.sqrt(sq)
        inv = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 1.0).astype(np.float32)
        return cls(image, snap.text, rows, w_i, w_t, inv)

    @property
    def dims(self) -> tuple[int, int]:
        return (0 if self.image is None else self.image.shape[1]), self.text.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), sum(self.dims)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> F32:
        """Fused rows at positions ``idx`` (an int: one vector)."""
        rows = self.rows[idx]
        d_img, d_txt = self.dims
        out: F32 = np.empty((*np.shape(rows), d_img + d_txt), dtype=np.float32)
        out[..., d_img:] = self.text[rows]  # widened to float32 in place
        out[..., d_img:] *= self.w_text
        if self.image is not None:
            out[..., :d_img] = self.image[rows]
            out[..., :d_img] *= self.w_image
        out *= self.inv_norm[idx][..., None]
        return out

    def dot_rows(self, idx: npt.NDArray[np.integer[Any]], unit: F32) -> F32:
        """``self[idx] @ unit`` without building the rows: one product per modality."""
        rows = self.rows[idx]
        d_img, _ = self.dims
        scores = self.w_text * matvec(self.text[rows], np.ascontiguousarray(unit[d_img:], dtype=np.float32))
        if self.image is not None:
            scores += self.w_image * matvec(self.image[rows], np.ascontiguousarray(unit[:d_img], dtype=np.float32))
        out: F32 = (scores * self.inv_norm[idx]).astype(np.float32)
        return out

    def __matmul__(self, unit: F32) -> F32:
        """Dot products of ``unit`` (a vector in the fused space) with every row."""
        d_img, _ = self.dims
        scores = self.w_text * matvec(self.text, np.ascontiguousarray(unit[d_img:], dtype=np.float32))
        if self.image is not None:
            scores += self.w_image * matvec(self.image, np.ascontiguousarray(unit[:d_img], dtype=np.float32))
        out: F32 = (scores[self.rows] * self.inv_norm).astype(np.float32)
        return out


@dataclass(frozen=True)
class Scored:
    """Candidate rows with their exact per-modality similarities (NaN where absent) and score."""

    rows: I64
    score: npt.NDArray[np.float64]
    s_img: npt.NDArray[np.float64]
    s_txt: npt.NDArray[np.float64]


def _vectors(col: pa.ChunkedArray | pa.Array, dim: int, dtype: Any = np.float32) -> tuple[F32, B8]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    out = np.zeros((len(arr), dim), dtype=dtype)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if valid.any():
        out[valid] = arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out, valid


def _more_photos(batch: pa.RecordBatch | pa.Table, dim: int, dtype: Any, first_row: int) -> tuple[F32, I64]:
    """The vectors of the photos after the first in ``batch`` (whose rows become ``first_row``
    on), and each one's row."""
    if "more_image_vectors" not in batch.schema.names:
        return np.zeros((0, dim), dtype=dtype), np.zeros(0, dtype=np.int64)
    col = batch.column("more_image_vectors")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    counts = np.asarray(arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if not counts.any():
        return np.zeros((0, dim), dtype=dtype), np.zeros(0, dtype=np.int64)
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False)
    vectors = np.array(flat.reshape(-1, dim), dtype=dtype)
    owner = np.repeat(np.arange(first_row, first_row + len(counts), dtype=np.int64), counts)
    return vectors, owner


def append_photos(rows: F32, add: F32) -> F32:
    """:func:`append_rows` for ``more_image``, which starts as an empty ``(0, 0)`` matrix."""
    if len(add) == 0:
        return rows
    return append_rows(rows, add) if rows.shape[1:] == add.shape[1:] else np.array(add, copy=True)


def photo_slices(owner: I64, rows: I64) -> tuple[I64, I64]:
    """For ``rows``, the positions of their photos after the first in ``owner``'s order and the
    position in ``rows`` each belongs to."""
    lo = np.searchsorted(owner, rows, "left")
    counts = np.searchsorted(owner, rows, "right") - lo
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    idx = np.arange(total, dtype=np.int64) - np.repeat(starts, counts) + np.repeat(lo, counts)
    return idx, np.repeat(np.arange(len(rows), dtype=np.int64), counts)


def best_photo(snap: HotSnapshot, rows: I64, first: npt.NDArray[np.float64], q: F32) -> npt.NDArray[np.float64]:
    """``first`` (each row's first-photo similarity to ``q``) raised to its best other photo's."""
    if not len(snap.more_owner) or not len(rows):
        return first
    idx, pos = photo_slices(snap.more_owner, rows)
    if not len(idx):
        return first
    out = first.copy()
    np.maximum.at(out, pos, matvec(snap.more_image[idx], q).astype(np.float64))
    return out


def stock_column(in_stock: B8) -> B8 | None:
    """The in-stock column as snapshots keep it: None while every product is in stock (a mask
    then skips it)."""
    return None if in_stock.all() else in_stock


def _prices(col: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.float64]:
    """The column as float64, NaN for nulls. Always a copy: a zero-copy view would keep the whole
    batch it came from alive (Lance hands over a batch's columns in shared buffers), and a
    whole-catalog load keeps one such array per batch until it ends."""
    return np.array(col.to_numpy(zero_copy_only=False), dtype=np.float64, copy=True)


class HotCatalog:
    """Keeps a :class:`HotSnapshot` of ``catalog`` current; answers candidate searches from it."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        ann_min_rows: int = 20_000,
        nprobe: int = 48,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.catalog = catalog
        self.ann_min_rows = ann_min_rows
        self.nprobe = nprobe
        self.refresh_seconds = refresh_seconds
        self.snapshot: HotSnapshot | None = None
        self.last_refresh_seconds = 0.0
        self.full_loads = 0
        self.delta_loads = 0
        self._seen_writes = -1
        self._confirmed_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- loading ---------------------------------------------------------------------------
    def adopt(self, snap: HotSnapshot) -> None:
        """Start from ``snap`` (a start-up file's) instead of a full load: the next
        :meth:`refresh` brings it to the dataset's current version by a delta."""
        with self._lock:
            self.snapshot = snap

    def refresh(self) -> bool:
        """Bring the snapshot to the dataset's current version. Returns whether it changed."""
        with self._lock:
            writes = self.catalog.local_writes
            version = self.catalog.latest_version()
            old = self.snapshot
            if old is not None and old.version == version:
                self._seen_writes = writes
                self._confirmed_at = time.time()
                return False
            started = time.perf_counter()
            new = self._delta(old, version) if old is not None else None
            kind = "delta" if new is not None else "full"
            if new is None:
                new = self._full(version)
                self.full_loads += 1
            else:
                self.delta_loads += 1
            self.snapshot = new
            if new.version >= version:
                # Only now are this process's writes known to be in the snapshot; a read that
                # came back older than the version seen above leaves them due (next query retries).
                self._seen_writes = writes
            self._confirmed_at = time.time()
            self.last_refresh_seconds = time.perf_counter() - started
            log.info(
                "hot catalog at version %d: %d products (%s, %.2f s)",
                new.version,
                new.live,
                kind,
                self.last_refresh_seconds,
            )
            return True

    def _full(self, version: int) -> HotSnapshot:
        """The whole dataset, read a batch of rows at a time into arrays sized up front: the
        process never holds the dataset's own (float32, Arrow) copy of all the vectors at once."""
        expected = self.catalog.count()
        # Catalogs large enough for ANN keep their vectors as float16: half the memory; the exact
        # re-scoring of ANN candidates moves by float16 rounding (bench.scale measures recall
        # against float32).
        dtype = np.float16 if expected >= self.ann_min_rows else np.float32
        image = np.zeros((expected, self.catalog.clip_dim), dtype=dtype)[:0]
        text = np.zeros((expected, self.catalog.text_dim), dtype=dtype)[:0]
        products: list[Product] = []
        hashes: dict[str, str] = {}
        has_image: list[B8] = []
        prices: list[npt.NDArray[np.float64]] = []
        more_image: F32 = np.zeros((0, self.catalog.clip_dim), dtype=dtype)
        more_owner: list[I64] = []
        in_stock: list[B8] = []
        version, batches = self.catalog.scan_batches()
        for batch in batches:
            more, owner = _more_photos(batch, self.catalog.clip_dim, dtype, len(products))
            more_image = append_rows(more_image, more) if len(more) else more_image
            more_owner.append(owner)
            batch_products = self.catalog.products_from(batch)
            in_stock.append(np.fromiter((p.in_stock for p in batch_products), bool, len(batch_products)))
            products += batch_products
            hashes.update(
                zip(batch.column("product_id").to_pylist(), batch.column("content_hash").to_pylist(), strict=True)
            )
            img, has = _vectors(batch.column("image_vector"), self.catalog.clip_dim, dtype)
            txt, _ = _vectors(batch.column("text_vector"), self.catalog.text_dim, dtype)
            image, text = append_rows(image, img), append_rows(text, txt)
            has_image.append(has)
            prices.append(_prices(batch.column("price")))
        snap = HotSnapshot(
            version=version,
            products=products,
            index={p.product_id: i for i, p in enumerate(products)},
            hashes=hashes,
            alive=np.ones(len(products), dtype=bool),
            categories=CategoryCodes.of([p.category for p in products]),
            prices=np.concatenate(prices) if prices else np.zeros(0),
            image=image,
            has_image=np.concatenate(has_image) if has_image else np.zeros(0, dtype=bool),
            text=text,
            keywords=KeywordIndex.build(products),
            more_image=more_image,
            more_owner=np.concatenate(more_owner) if more_owner else np.zeros(0, dtype=np.int64),
            in_stock=stock_column(np.concatenate(in_stock) if in_stock else np.zeros(0, dtype=bool)),
        )
        return self._with_ann(snap)

    def _with_ann(self, snap: HotSnapshot) -> HotSnapshot:
        if snap.live < self.ann_min_rows:
            return snap
        rows_img = np.flatnonzero(snap.alive & snap.has_image).astype(np.int64)
        rows_txt = np.flatnonzero(snap.alive).astype(np.int64)
        ann_image = build_ann(snap.image, rows_img) if len(rows_img) >= self.ann_min_rows // 2 else None
        more = np.flatnonzero(snap.alive[snap.more_owner]).astype(np.int64)
        ann_more = build_ann(snap.more_image, more) if len(more) >= self.ann_min_rows // 2 else None
        return _replace(snap, ann_image=ann_image, ann_text=build_ann(snap.text, rows_txt), ann_more_image=ann_more)

    def _delta(self, old: HotSnapshot, version: int) -> HotSnapshot | None:
        """The new version as a patch of ``old``; None when a full load is the better choice."""
        version, keys = self.catalog.scan(["product_id", "content_hash"], row_ids=True)
        ids = keys.column("product_id").to_pylist()
        hashes = keys.column("content_hash").to_pylist()
        current = dict(zip(ids, hashes, strict=True))
        changed = [pid for pid, h in current.items() if old.hashes.get(pid, None) != h or pid not in old.index]
        removed = [pid for pid in old.index if pid not in current]
        dead = len(old.alive) - old.live + len(removed) + sum(1 for pid in changed if pid in old.index)
        if (dead + len(changed)) > REBUILD_TOMBSTONE_FRACTION * max(1, len(current)):
            return None
        if not changed and not removed:
            return _replace(old, version=version, loaded_at=time.time())
        fresh = self._fetch(changed, current, dict(zip(ids, keys.column("_rowid").to_pylist(), strict=True)))
        n_old = len(old.alive)
        alive = old.alive.copy()
        index = dict(old.index)
        hashes_new = dict(old.hashes)
        gone = [index.pop(pid) for pid in removed] + [index[pid] for pid in changed if pid in index]
        for pid in removed:
            hashes_new.pop(pid, None)
        alive[gone] = False
        products = list(old.products)
        image, text, has_image = old.image, old.text, old.has_image
        categories, prices = old.categories, old.prices
        new_rows = np.zeros(0, dtype=np.int64)
        keywords = old.keywords
        more_image, more_owner = old.more_image, old.more_owner
        in_stock = old.in_stock
        if fresh is not None and fresh.num_rows:
            add_more, add_owner = _more_photos(fresh, self.catalog.clip_dim, old.image.dtype, n_old)
            more_image = append_photos(more_image, add_more)
            more_owner = np.concatenate([more_owner, add_owner])
            add_products = self.catalog.products_from(fresh)
            add_img, add_has = _vectors(fresh.column("image_vector"), self.catalog.clip_dim, old.image.dtype)
            add_txt, _ = _vectors(fresh.column("text_vector"), self.catalog.text_dim, old.text.dtype)
            new_rows = np.arange(n_old, n_old + len(add_products), dtype=np.int64)
            for row, p, h in zip(new_rows, add_products, fresh.column("content_hash").to_pylist(), strict=True):
                index[p.product_id] = int(row)
                hashes_new[p.product_id] = h
            products += add_products
            add_stock = np.fromiter((p.in_stock for p in add_products), bool, len(add_products))
            if in_stock is not None or not add_stock.all():
                before = in_stock if in_stock is not None else np.ones(n_old, dtype=bool)
                in_stock = np.concatenate([before, add_stock])
            keywords = keywords.extend(add_products)
            alive = np.concatenate([alive, np.ones(len(add_products), dtype=bool)])
            image = append_rows(image, add_img)
            has_image = np.concatenate([has_image, add_has])
            text = append_rows(text, add_txt)
            categories = categories.extend([p.category for p in add_products])
            prices = np.concatenate([prices, _prices(fresh.column("price"))])
        snap = HotSnapshot(
            version,
            products,
            index,
            hashes_new,
            alive,
            categories,
            prices,
            image,
            has_image,
            text,
            keywords,
            more_image=more_image,
            more_owner=more_owner,
            in_stock=in_stock,
        )
        if old.ann_text is None or snap.live < self.ann_min_rows // 2:
            return self._with_ann(snap)
        faiss = load_faiss()
        gone_ids = np.asarray(gone, dtype=np.int64)

        def patch(ann: Any, vectors: F32, add: I64, gone: I64 = gone_ids) -> Any:
            ann = faiss.clone_index(ann)
            if len(gone):
                ann.remove_ids(gone)
            if len(add):
                ann.add_with_ids(np.ascontiguousarray(vectors[add], dtype=np.float32), add)
            return ann

        ann_text = patch(old.ann_text, text, new_rows)
        ann_image = patch(old.ann_image, image, new_rows[has_image[new_rows]]) if old.ann_image is not None else None
        ann_more = old.ann_more_image
        if ann_more is not None:
            added = np.arange(len(old.more_owner), len(more_owner), dtype=np.int64)
            ann_more = patch(ann_more, more_image, added, photo_slices(more_owner, np.sort(gone_ids))[0])
        return _replace(snap, ann_image=ann_image, ann_text=ann_text, ann_more_image=ann_more)

    def _fetch(self, changed: list[str], hashes: dict[str, str], row_ids: dict[str, int]) -> pa.Table | None:
        """Full rows of the ``changed`` products: taken by row id (reads only those rows), and by
        a ``product_id IN (...)`` query for any the take misses (rows moved since the scan, e.g.
        by another writer's commit or a compaction). A row is kept only if its content hash is
        the one the scan saw, so a newer version of a product is never half-applied."""
        if not changed:
            return None
        tables: list[pa.Table] = []
        for i in range(0, len(changed), DELTA_CHUNK):
            taken = self.catalog.rows_by_row_id([row_ids[pid] for pid in changed[i : i + DELTA_CHUNK]])
            keep = [
                j
                for j, (pid, h) in enumerate(
                    zip(taken.column("product_id").to_pylist(), taken.column("content_hash").to_pylist(), strict=True)
                )
                if hashes.get(pid) == h
            ]
            tables.append(taken.take(keep) if len(keep) < taken.num_rows else taken)
        got = {pid for t in tables for pid in t.column("product_id").to_pylist()}
        missing = [pid for pid in changed if pid not in got]
        for i in range(0, len(missing), DELTA_CHUNK):
            tables.append(self.catalog.rows_by_id(missing[i : i + DELTA_CHUNK]))
        tables = [t.select(tables[0].column_names) for t in tables if t.num_rows]
        return pa.concat_tables(tables) if tables else None

    def age_seconds(self) -> float:
        """Seconds since the snapshot was last confirmed to be the dataset's current version."""
        return max(0.0, time.time() - self._confirmed_at)

    @property
    def in_memory(self) -> bool:
        """Whether :meth:`current` returns at once (a snapshot is loaded and holds this process's
        own writes), so a query on it does no I/O."""
        return self.snapshot is not None and self.catalog.local_writes == self._seen_writes

    def holds(self, product_id: str) -> bool:
        """Whether a query about this product is answered from memory alone (no I/O)."""
        return self.in_memory and self.snapshot is not None and product_id in self.snapshot.index

    def current(self) -> HotSnapshot | None:
        """The snapshot to answer from, brought up to date first when this process itself wrote
        to the catalog since the last refresh (read-your-writes; other writers' changes arrive
        with the background refresh). None until the first load."""
        if self.snapshot is not None and self.catalog.local_writes != self._seen_writes:
            try:
                self.refresh()
            except Exception as exc:  # answer from the last snapshot
                log.warning("hot catalog refresh after a local write failed: %s", exc)
        return self.snapshot

    # ---- background refresh ----------------------------------------------------------------
    def start(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Load now, then follow new dataset versions every ``refresh_seconds`` in a thread."""
        try:
            self.refresh()
        except Exception as exc:  # the service still answers from LanceDB meanwhile
            log.warning("hot catalog: first load failed: %s", exc)
            if on_error is not None:
                on_error(exc)

        def loop() -> None:
            while not self._stop.wait(max(self.refresh_seconds, 0.2)):
                try:
                    self.refresh()
                except Exception as exc:  # keep serving the last snapshot
                    log.warning("hot catalog refresh failed: %s", exc)
                    if on_error is not None:
                        on_error(exc)

        self._thread = threading.Thread(target=loop, name="hot-catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # ---- querying --------------------------------------------------------------------------
    def candidates(
        self, snap: HotSnapshot, modality: str, q: F32, k: int, allowed: B8, n_allowed: int, ordered: bool = False
    ) -> I64:
        """Rows of the ``k`` best ``allowed`` rows for one modality (ANN or exact); with
        ``ordered``, best first (by the ANN's approximate scores above ``ann_min_rows``). Image
        candidates also come from products' other photos; with those, an ordered list is put in
        order by exact best-photo scores."""
        if modality == "text":
            return self._nearest(snap.text, snap.ann_text, q, k, allowed, n_allowed, snap.live, ordered)
        allowed = allowed & snap.has_image
        n_allowed = int(allowed.sum())
        rows = self._nearest(snap.image, snap.ann_image, q, k, allowed, n_allowed, snap.live, ordered)
        if not len(snap.more_owner) or n_allowed == 0:
            return rows
        photo_allowed = allowed[snap.more_owner]
        n_photos = int(photo_allowed.sum())
        if n_photos == 0:
            return rows
        live_photos = int(snap.alive[snap.more_owner].sum())
        photos = self._nearest(snap.more_image, snap.ann_more_image, q, k, photo_allowed, n_photos, live_photos, False)
        rows = unique_rows([rows, snap.more_owner[photos]])
        if not ordered:
            return rows
        first = matvec(snap.image[rows], q).astype(np.float64)
        best = best_photo(snap, rows, first, q)
        out: I64 = rows[np.lexsort((rows, -best))][:k]
        return out

    def _nearest(
        self, vectors: F32, ann: Any, q: F32, k: int, allowed: B8, n_allowed: int, live: int, ordered: bool
    ) -> I64:
        """Ids of the ``k`` best ``allowed`` rows of ``vectors`` (``live`` of them are not
        tombstones): ANN, or exact when there is none or the filter is selective."""
        if n_allowed == 0:
            return np.zeros(0, dtype=np.int64)
        fraction = n_allowed / max(1, live)
        if ann is None or fraction < EXACT_FILTER_FRACTION:
            if n_allowed * GATHER_FRACTION < len(allowed) or (n_allowed <= k and not ordered):
                # A selective filter: copy out the few allowed rows and score those.
                rows = np.flatnonzero(allowed)
                if n_allowed <= k and not ordered:
                    return rows.astype(np.int64)
                scores = matvec(vectors[rows], q)
            else:
                # Otherwise one pass over the whole matrix, disallowed rows masked: copying most
                # of the matrix out first costs far more than the product itself.
                rows = np.arange(len(allowed))
                scores = matvec(vectors[: len(allowed)], q)
                scores[~allowed] = -np.inf
            k = min(k, n_allowed)
            top = np.argpartition(-scores, k - 1)[:k]
            if ordered:  # best first, ties by row
                top = top[np.lexsort((top, -scores[top]))]
            return rows[top].astype(np.int64)
        faiss = load_faiss()
        params = faiss.SearchParametersIVF()
        params.nprobe = min(ann.nlist, max(self.nprobe, math.ceil(self.nprobe / max(fraction, 1e-9) ** 0.5)))
        if n_allowed < len(allowed):
            bits = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            _, ids = ann.search(q.reshape(1, -1), k, params=params)
            del bits  # kept alive until the search returned
        else:
            _, ids = ann.search(q.reshape(1, -1), k, params=params)
        found: I64 = np.asarray(ids[0][ids[0] >= 0], dtype=np.int64)
        return found


def score_rows(
    snap: HotSnapshot, rows: I64, q_img: F32 | None, q_txt: F32 | None, w_img: float, w_txt: float
) -> Scored:
    """Exact fused scores (see :mod:`core.search`) of ``rows``: per-modality cosines weighted by
    the weights of the modalities both sides have."""
    n = len(rows)
    s_img = np.full(n, np.nan)
    s_txt = np.full(n, np.nan)
    num = np.zeros(n)
    den = np.zeros(n)
    if q_img is not None and w_img > 0:
        has = snap.has_image[rows]
        s_img[has] = best_photo(snap, rows[has], matvec(snap.image[rows[has]], q_img).astype(np.float64), q_img)
        num[has] += w_img * s_img[has]
        den[has] += w_img
    if q_txt is not None and w_txt > 0:
        s_txt = matvec(snap.text[rows], q_txt).astype(np.float64)
        num += w_txt * s_txt
        den += w_txt
    keep = den > 0
    score = np.where(keep, num / np.where(keep, den, 1.0), -np.inf)
    return Scored(rows[keep], score[keep], s_img[keep], s_txt[keep])


def top_rows(scored: Scored, snap: HotSnapshot, k: int) -> list[int]:
    """Positions into ``scored`` of the ``k`` best, ties broken by product id (as the Lance path)."""
    return best_positions(snap, scored.rows, scored.score, k)


def best_positions(snap: HotSnapshot, rows: I64, score: npt.NDArray[np.float64], k: int) -> list[int]:
    """Positions into ``rows`` of the ``k`` best by ``score``, ties broken by product id."""
    n = len(rows)
    if n == 0 or k <= 0:
        return []
    pool: Iterable[int] = range(n)
    if n > k:  # only the k best and whatever ties the k-th need the (Python-level) tie-break sort
        kth = np.partition(-score, k - 1)[k - 1]
        pool = np.flatnonzero(-score <= kth).tolist()
    order = sorted(pool, key=lambda i: (-score[i], snap.products[rows[i]].product_id))
    return order[:k]


def append_rows(rows: F32, add: F32) -> F32:
    """``rows`` followed by ``add``, without copying ``rows`` when it is a prefix of a buffer with
    room left (the vector matrices are hundreds of MB; a delta adds a handful of products).

    Safe with snapshots sharing the buffer: an older snapshot's view ends where the new rows
    begin, and deltas are applied one at a time, always to the newest snapshot. When the buffer is
    full, a new one with ~6% headroom is allocated."""
    n, extra = len(rows), len(add)
    base = rows.base
    if (
        isinstance(base, np.ndarray)
        and base.dtype == rows.dtype
        and base.shape[1:] == rows.shape[1:]
        and base.flags.c_contiguous
        and rows.flags.c_contiguous
        and base.ctypes.data == rows.ctypes.data
        and len(base) >= n + extra
    ):
        base[n : n + extra] = add
        return base[: n + extra]
    buf = np.empty((n + extra + max(4096, (n + extra) // 16), *rows.shape[1:]), dtype=rows.dtype)
    buf[:n] = rows
    buf[n : n + extra] = add
    return buf[: n + extra]


def _replace(snap: HotSnapshot, **changes: Any) -> HotSnapshot:
    from dataclasses import replace

    return replace(snap, **changes)


def unique_rows(parts: Sequence[I64]) -> I64:
    out: I64 = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return out
