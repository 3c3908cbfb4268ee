"""Start-up files: a query process's in-memory state, prebuilt, in the bucket.

Without one, a new query process reads the whole catalog and every event and builds its indexes
before it answers: minutes at a million products. The training job writes what a query process
would build (the hot catalog with its ANN and keyword indexes, the recommender's content index,
the compact event state) under ``startup/<id>/``, then points ``startup/latest.json`` at it. A
query process that starts loads it (a few large reads, no index building) and then catches up
through its ordinary refreshes: the catalog by a delta from the file's dataset version, events
from the file's watermark on. A file that does not fit this process (other vector dimensions,
fusion weights or format) is skipped with a log line, and the process loads from the dataset as
before. The newest :data:`KEEP` files are kept.

Each array is one object of raw bytes (dtype and shape in ``manifest.json``), read back without a
copy; tables (products, ids) are Arrow IPC streams; faiss indexes their own serialisation.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from core.errors import NotFound
from core.hot import CategoryCodes, HotSnapshot, load_faiss
from core.keyword import KeywordIndex
from core.recommend.history import EventState
from core.recommend.online import CatalogSnapshot

if TYPE_CHECKING:
    from core.catalog import Catalog
    from core.storage import ObjectStore
    from core.types import Weights

log = logging.getLogger(__name__)

PREFIX = "startup/"
LATEST = f"{PREFIX}latest.json"
FORMAT = 4  # 2: the content index is IVF-PQ fast-scan; 3: a hash per event; 4: several photos, stock
KEEP = 2


@dataclass(frozen=True)
class StartupState:
    """What a query process holds after its first refresh."""

    hot: HotSnapshot
    recs: CatalogSnapshot | None
    """The recommender's serving snapshot when it has a content index (large catalogs); smaller
    ones are rebuilt from ``hot`` in a moment."""
    events: EventState


# ---- writing ---------------------------------------------------------------------------------
class _Writer:
    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self.parts: dict[str, dict[str, Any]] = {}
        self.bytes = 0

    def _put(self, name: str, data: bytes, meta: dict[str, Any]) -> None:
        self.store.put_bytes(f"{self.prefix}{name}", data)
        self.parts[name] = meta
        self.bytes += len(data)

    def array(self, name: str, a: npt.NDArray[Any]) -> None:
        a = np.ascontiguousarray(a)
        self._put(name, a.tobytes(), {"dtype": a.dtype.str, "shape": list(a.shape)})

    def table(self, name: str, t: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        self._put(name, sink.getvalue().to_pybytes(), {"arrow": True})

    def strings(self, name: str, values: list[str]) -> None:
        self.table(name, pa.table({"v": pa.array(values, pa.string())}))

    def index(self, name: str, index: Any) -> None:
        if index is not None:
            self._put(name, load_faiss().serialize_index(index).tobytes(), {"faiss": True})


def write_startup(
    store: ObjectStore,
    catalog: Catalog,
    hot: HotSnapshot,
    recs: CatalogSnapshot | None,
    events: EventState,
    weights: Weights,
) -> str:
    """Write a start-up file from a query process's state; returns its id. ``recs`` is kept only
    with a content index built over ``hot``'s version."""
    file_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    w = _Writer(store, f"{PREFIX}{file_id}/")
    started = time.perf_counter()
    w.table("products", catalog.products_table(hot.products, hot.hashes))
    for name in ("alive", "prices", "image", "has_image", "text", "more_image", "more_owner"):
        w.array(name, getattr(hot, name))
    if hot.in_stock is not None:
        w.array("in_stock", hot.in_stock)
    terms, kw = hot.keywords.export()
    w.strings("keyword_terms", terms)
    for name, a in kw.items():
        w.array(f"keyword_{name}", a)
    w.index("ann_image", hot.ann_image)
    w.index("ann_text", hot.ann_text)
    w.index("ann_more_image", hot.ann_more_image)
    with_recs = recs is not None and recs.content_index is not None and recs.version == hot.version
    if with_recs:
        assert recs is not None
        w.index("content_index", recs.content_index)
    arrays, ids = events.export()
    for name, a in arrays.items():
        w.array(f"events_{name}", a)
    w.strings("events_users", ids["users"])
    w.strings("events_items", ids["items"])
    manifest = {
        "format": FORMAT,
        "id": file_id,
        "created": datetime.now(UTC).isoformat(),
        "catalog_version": hot.version,
        "dims": [catalog.clip_dim, catalog.text_dim],
        "weights": [weights.image, weights.text],
        "products": hot.live,
        "events": len(events),
        "watermark": None if events.watermark is None else events.watermark.isoformat(),
        "recs_index": with_recs,
        "parts": w.parts,
        "bytes": w.bytes,
    }
    store.put_bytes(f"{PREFIX}{file_id}/manifest.json", json.dumps(manifest).encode(), "application/json")
    store.put_bytes(LATEST, json.dumps({"id": file_id}).encode(), "application/json")
    log.info(
        "start-up file %s: %d products, %d events, %.0f MB in %.1f s",
        file_id,
        hot.live,
        len(events),
        w.bytes / 1e6,
        time.perf_counter() - started,
    )
    _prune(store, keep=file_id)
    return file_id


def _prune(store: ObjectStore, keep: str) -> None:
    """Delete all but the newest :data:`KEEP` files (ids sort by time; ``keep`` always stays)."""
    ids = sorted({o.key[len(PREFIX) :].split("/", 1)[0] for o in store.list(PREFIX) if o.key.count("/") >= 2})
    for old in [i for i in ids[:-KEEP] if i != keep]:
        for o in list(store.list(f"{PREFIX}{old}/")):
            store.delete(o.key)


# ---- reading ---------------------------------------------------------------------------------
class _Reader:
    def __init__(self, store: ObjectStore, prefix: str, parts: dict[str, dict[str, Any]]) -> None:
        self.store, self.prefix, self.parts = store, prefix, parts

    def _get(self, name: str) -> bytes:
        return self.store.get_bytes(f"{self.prefix}{name}")

    def array(self, name: str) -> npt.NDArray[Any]:
        meta = self.parts[name]
        return np.frombuffer(self._get(name), dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])

    def table(self, name: str) -> pa.Table:
        with pa.ipc.open_stream(io.BytesIO(self._get(name))) as r:
            return r.read_all()

    def strings(self, name: str) -> list[str]:
        values: list[str] = self.table(name).column("v").to_pylist()
        return values

    def index(self, name: str) -> Any:
        if name not in self.parts:
            return None
        return load_faiss().deserialize_index(np.frombuffer(self._get(name), dtype=np.uint8))


def read_startup(store: ObjectStore, catalog: Catalog, weights: Weights) -> StartupState | None:
    """The newest start-up file as a query process's state; None when there is none or it does
    not fit this process (logged)."""
    try:
        pointer = json.loads(store.get_bytes(LATEST))
        prefix = f"{PREFIX}{pointer['id']}/"
        manifest = json.loads(store.get_bytes(f"{prefix}manifest.json"))
    except NotFound:
        return None
    why = None
    if manifest.get("format") != FORMAT:
        why = f"format {manifest.get('format')} (this process reads {FORMAT})"
    elif manifest["dims"] != [catalog.clip_dim, catalog.text_dim]:
        why = f"vector dimensions {manifest['dims']} (the catalog's: {[catalog.clip_dim, catalog.text_dim]})"
    if why is not None:
        log.warning("start-up file %s skipped: %s", manifest.get("id"), why)
        return None
    started = time.perf_counter()
    r = _Reader(store, prefix, manifest["parts"])
    table = r.table("products")
    products = catalog.products_from(table)
    alive = np.array(r.array("alive"))  # small arrays that refreshes patch: writable copies
    ids = table.column("product_id").to_pylist()
    hashes = table.column("content_hash").to_pylist()
    live = np.flatnonzero(alive).tolist()
    keywords = KeywordIndex.restore(
        r.strings("keyword_terms"),
        {k: r.array(f"keyword_{k}") for k in ("tf_data", "tf_indices", "tf_indptr", "doc_len")},
    )
    hot = HotSnapshot(
        version=int(manifest["catalog_version"]),
        products=products,
        index={ids[i]: i for i in live},
        hashes={ids[i]: hashes[i] for i in live},
        alive=alive,
        categories=CategoryCodes.of([p.category for p in products]),
        prices=np.array(r.array("prices")),
        image=r.array("image"),
        has_image=np.array(r.array("has_image")),
        text=r.array("text"),
        keywords=keywords,
        ann_image=r.index("ann_image"),
        ann_text=r.index("ann_text"),
        more_image=r.array("more_image"),
        more_owner=np.array(r.array("more_owner")),
        ann_more_image=r.index("ann_more_image"),
        in_stock=np.array(r.array("in_stock")) if "in_stock" in manifest["parts"] else None,
    )
    recs = None
    if manifest.get("recs_index") and manifest["weights"] == [weights.image, weights.text]:
        recs = replace(CatalogSnapshot.from_hot(hot, weights), content_index=r.index("content_index"))
    events = EventState.restore(
        {k: r.array(f"events_{k}") for k in ("user", "item", "ts", "etype", "value", "hash")},
        {"users": r.strings("events_users"), "items": r.strings("events_items")},
        None if manifest["watermark"] is None else datetime.fromisoformat(manifest["watermark"]),
    )
    log.info(
        "start-up file %s loaded: %d products (dataset version %d), %d events in %.1f s",
        manifest["id"],
        hot.live,
        hot.version,
        len(events),
        time.perf_counter() - started,
    )
    return StartupState(hot, recs, events)


__all__ = ["StartupState", "read_startup", "write_startup"]
