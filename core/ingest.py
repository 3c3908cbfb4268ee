"""Index products: parse metadata, validate every record, embed in batches, upsert.

A bad record (invalid fields, a missing or undecodable image, an image over the limits) becomes a
:class:`RecordError` with a reason and never stops the others. Storage failures are not record
errors: they raise :class:`core.errors.Unavailable` so the caller can retry the whole source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.catalog import Catalog, ProductRecord
from core.embedding import Embedder, embed_image_bytes
from core.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceError
from core.images import extension_for, sniff_content_type
from core.settings import Settings
from core.storage import ObjectStore, validate_key
from core.types import Product, ProductInput, Vector

METADATA_SUFFIXES = (".json", ".jsonl", ".csv")


@dataclass(frozen=True)
class RecordError:
    """Why one record was not indexed."""

    source: str
    line: int | None
    product_id: str | None
    reason: str
    too_large: bool = False  # over a byte/pixel limit (HTTP 413 rather than 422)


@dataclass(frozen=True)
class PendingProduct:
    """A validated record plus where its photos come from.

    ``image_bytes`` set with ``image_key`` None means "store these bytes in the bucket";
    ``image_key`` alone means "the image is that object in the bucket". That is the first photo;
    ``more_images`` are the others, each an ``(image_bytes, image_key)`` pair of the same kind.
    """

    product: ProductInput
    source: str = "api"
    line: int | None = None
    image_bytes: bytes | None = None
    image_key: str | None = None
    more_images: tuple[tuple[bytes | None, str | None], ...] = ()

    @property
    def photos(self) -> list[tuple[bytes | None, str | None]]:
        """Every photo as ``(bytes, key)``, the first first (empty without one)."""
        if self.image_bytes is None and self.image_key is None:
            return []
        return [(self.image_bytes, self.image_key), *self.more_images]


@dataclass
class IngestReport:
    """Outcome of one ingest run."""

    indexed: int = 0
    unchanged: int = 0
    failed: list[RecordError] = field(default_factory=list)
    product_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stored: dict[str, Product] | None = None
    """With ``Indexer.index(..., keep_stored=True)``: the products this run wrote, as stored
    (unchanged ones are not here). Off by default: a bulk run would hold the whole catalog."""

    @property
    def total(self) -> int:
        return self.indexed + self.unchanged + len(self.failed)

    def summary(self) -> str:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"indexed {self.indexed}, unchanged {self.unchanged}, failed {len(self.failed)} "
            f"in {self.seconds:.1f}s ({rate:.1f} products/s)"
        ]
        for err in self.failed[:20]:
            where = f"{err.source}" + (f":{err.line}" if err.line is not None else "")
            lines.append(f"  FAILED {where} {err.product_id or '-'}: {err.reason}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more failures")
        return "\n".join(lines)


Item = PendingProduct | RecordError
_DUMMY = ProductInput(product_id="_", title="_")  # placeholder product in image-resolution results


def parse_metadata(name: str, data: bytes) -> Iterator[tuple[int | None, Any]]:
    """Yield ``(line, raw_record_or_exception)`` from a .json, .jsonl or .csv file's bytes.

    A parse failure is yielded as an :class:`InvalidInput` in place of the record, so one bad line
    of a JSONL file fails only that line.
    """
    lower = name.lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        yield None, InvalidInput("file is not UTF-8 text")
        return
    if lower.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, InvalidInput(f"invalid JSON: {exc.msg} at column {exc.colno}")
    elif lower.endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield None, InvalidInput(f"invalid JSON: {exc.msg} at line {exc.lineno}")
            return
        if isinstance(doc, list):
            for n, rec in enumerate(doc, start=1):
                yield n, rec
        elif isinstance(doc, dict) and isinstance(doc.get("products"), list):
            for n, rec in enumerate(doc["products"], start=1):
                yield n, rec
        else:
            yield None, doc
    elif lower.endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
        except StopIteration:
            return
        for row in reader:
            n = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield n, InvalidInput(f"expected {len(header)} CSV fields, got {len(row)}")
                continue
            yield n, {k: v for k, v in zip(header, row, strict=True) if v != ""}
    else:
        yield None, InvalidInput(f"unsupported metadata file type: {name}")


def records_from_metadata(
    source: str,
    data: bytes,
    resolve_image: Callable[[str], PendingProduct | str],
) -> Iterator[Item]:
    """Validate each record of one metadata file.

    ``resolve_image(reference)`` turns a record's ``image`` value into either image bytes/key
    (a :class:`PendingProduct` template whose ``product`` is ignored) or an error reason string.
    """
    for line, raw in parse_metadata(source, data):
        if isinstance(raw, Exception):
            yield RecordError(source, line, None, str(raw))
            continue
        pid = raw.get("product_id") if isinstance(raw, dict) else None
        try:
            product = ProductInput.from_mapping(raw)
        except InvalidInput as exc:
            yield RecordError(source, line, str(pid) if pid is not None else None, str(exc))
            continue
        photos: list[tuple[bytes | None, str | None]] = []
        for n, ref in enumerate(product.images):
            resolved = resolve_image(ref)
            if isinstance(resolved, str):
                where = f"image {n + 1} of {len(product.images)}: " if len(product.images) > 1 else ""
                yield RecordError(source, line, product.product_id, where + resolved)
                break
            photos.append((resolved.image_bytes, resolved.image_key))
        else:
            first, *more = photos or [(None, None)]
            yield PendingProduct(product, source, line, *first, more_images=tuple(more))


def resolve_bucket_image(ref: str) -> PendingProduct | str:
    """Image resolver for metadata in the bucket: ``image`` is a key in the same bucket."""
    try:
        return PendingProduct(_DUMMY, image_key=validate_key(ref))
    except InvalidInput as exc:
        return str(exc)


def iter_bucket_prefix(store: ObjectStore, prefix: str, settings: Settings) -> Iterator[Item]:
    """Records of every metadata object under ``prefix``; ``image`` values are bucket keys."""
    for obj in store.list(prefix):
        if not obj.key.lower().endswith(METADATA_SUFFIXES):
            continue
        try:
            data = store.get_bytes(obj.key, max_bytes=settings.max_upload_bytes)
        except (NotFound, PayloadTooLarge) as exc:
            yield RecordError(obj.key, None, None, str(exc))
            continue
        yield from records_from_metadata(obj.key, data, resolve_bucket_image)


def iter_folder(folder: Path, settings: Settings) -> Iterator[Item]:
    """Records of every metadata file under a local folder; ``image`` values are paths relative
    to the metadata file (they may not leave ``folder``). Image bytes are read here and stored in
    the bucket when indexed."""
    root = folder.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in METADATA_SUFFIXES)
    for meta in files:
        base = meta.parent

        def resolve(ref: str, base: Path = base) -> PendingProduct | str:
            path = (base / ref).resolve()
            if root not in path.parents:
                return f"image path {ref!r} leaves the source folder"
            if not path.is_file():
                return f"image file {ref!r} not found"
            size = path.stat().st_size
            if size > settings.max_image_bytes:
                return f"image is {size} bytes; the limit is {settings.max_image_bytes}"
            return PendingProduct(_DUMMY, image_bytes=path.read_bytes())

        yield from records_from_metadata(str(meta.relative_to(root)), meta.read_bytes(), resolve)


def content_hash(product: ProductInput, image_digests: Sequence[str]) -> str:
    """Hash of everything that determines a product's stored row and vectors: the fields and
    the photos' bytes, in order. A product with one photo (or none) that is in stock hashes as
    before several photos and the stock flag existed, so stored products are not re-embedded."""
    doc: dict[str, Any] = {
        "title": product.title,
        "description": product.description,
        "category": product.category,
        "price": product.price,
        "image": image_digests[0] if image_digests else None,
        "attributes": product.attributes,
    }
    if len(image_digests) > 1:
        doc["more_images"] = list(image_digests[1:])
    if not product.in_stock:  # in stock is how every product was before the flag existed
        doc["in_stock"] = False
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def embed_hash(product: ProductInput, image_digests: Sequence[str], space: Mapping[str, str]) -> str:
    """``"<text>/<images>"``: what a product's text vector and its image vectors are made from,
    each with its model's name (:attr:`ProductRecord.embed_hash`)."""

    def digest(doc: Any) -> str:
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]

    text = digest({"model": space.get("text"), "text": product.embedding_text()})
    images = digest({"model": space.get("clip"), "images": list(image_digests)})
    return f"{text}/{images}"


def image_key_for(product_id: str, data: bytes) -> str:
    """Content-addressed bucket key for image bytes that arrive without one."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"images/{product_id}/{digest}.{extension_for(data)}"


class Indexer:
    """Embeds and upserts products in batches."""

    def __init__(self, catalog: Catalog, embedder: Embedder, store: ObjectStore, settings: Settings) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.store = store
        self.settings = settings
        self.batch_size = max(8, settings.embed_batch_size)
        self.commit_rows = max(self.batch_size, settings.ingest_commit_rows)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="image-load")

    def put(self, product: ProductInput, images: Sequence[bytes] = ()) -> Product:
        """Create or replace one product (the API's write): ``images`` (photo bytes, in order)
        are stored in the bucket, else ``product.images`` name existing objects. The product as
        stored; an unchanged product is read back. A bad record raises (413 for one over a size
        limit)."""
        photos: list[tuple[bytes | None, str | None]] = (
            [(data, None) for data in images] if images else [(None, key) for key in product.images]
        )
        first, *more = photos or [(None, None)]
        pending = PendingProduct(product, "api", None, *first, more_images=tuple(more))
        report = self.index([pending], keep_stored=True)
        if report.failed:
            failure = report.failed[0]
            raise (PayloadTooLarge if failure.too_large else InvalidInput)(failure.reason)
        return (report.stored or {}).get(product.product_id) or self.catalog.get(product.product_id)

    def index(
        self,
        items: Iterable[Item],
        *,
        force: bool = False,
        progress: bool = False,
        total: int | None = None,
        desc: str = "indexing",
        keep_stored: bool = False,
    ) -> IngestReport:
        """Index every valid item; collect failures. Unchanged products are skipped unless ``force``;
        ``keep_stored`` fills ``report.stored``."""
        report = IngestReport(stored={} if keep_stored else None)
        started = time.perf_counter()
        bar = tqdm(total=total, desc=desc, unit="product", disable=not progress, dynamic_ncols=True)
        group: list[PendingProduct] = []
        try:
            for item in items:
                if isinstance(item, RecordError):
                    report.failed.append(item)
                    bar.update(1)
                    continue
                group.append(item)
                if len(group) >= self.commit_rows:
                    self._index_group(group, report, force, bar)
                    group = []
            if group:
                self._index_group(group, report, force, bar)
        finally:
            bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def _index_group(self, group: list[PendingProduct], report: IngestReport, force: bool, bar: tqdm[Any]) -> None:
        """Embed ``group`` in batches of ``batch_size`` and store it in one commit: each commit's
        cost grows with the table (a merge on product_id), so a long import commits rarely and its
        rate stays flat as the catalog grows. One lookup of the stored hashes serves the group."""
        existing = {} if force else self.catalog.existing([i.product.product_id for i in group])
        records: list[ProductRecord] = []
        for start in range(0, len(group), self.batch_size):
            batch = group[start : start + self.batch_size]
            records += self._embed(batch, report, force, existing)
            bar.update(len(batch))
            bar.set_postfix(indexed=report.indexed + len(records), failed=len(report.failed))
        if not records:
            return
        stored = self.catalog.upsert(records, prior=None if force else existing)
        if report.stored is not None:
            report.stored.update((p.product_id, p) for p in stored)
        report.indexed += len(records)
        report.product_ids.extend(r.product.product_id for r in records)

    def _try_load(self, item: PendingProduct) -> list[tuple[bytes, str | None]] | ServiceError:
        """The item's photos as ``(bytes, key)``, read from the bucket where only a key is given;
        the first failure (named by its photo when there are several) instead."""
        photos = item.photos
        out: list[tuple[bytes, str | None]] = []
        for n, (data, key) in enumerate(photos):
            try:
                if data is None:
                    assert key is not None
                    data = self.store.get_bytes(key, max_bytes=self.settings.max_image_bytes)
            except (NotFound, InvalidInput) as exc:
                which = f"image {n + 1} of {len(photos)} " if len(photos) > 1 else "image "
                return type(exc)(f"{which}{key!r}: {exc}" if isinstance(exc, NotFound) else f"{which}{exc}")
            out.append((data, key))
        return out

    def _fail(self, report: IngestReport, item: PendingProduct, exc: ServiceError, reason: str = "") -> None:
        report.failed.append(
            RecordError(
                item.source,
                item.line,
                item.product.product_id,
                reason or str(exc),
                too_large=isinstance(exc, PayloadTooLarge),
            )
        )

    def _embed(
        self,
        batch: list[PendingProduct],
        report: IngestReport,
        force: bool,
        existing: dict[str, tuple[str, datetime]],
    ) -> list[ProductRecord]:
        """The batch's new or changed products, embedded (unchanged ones and failures go to the
        report). Object-store reads overlap: a pool of threads fetches the batch's images."""
        loaded = list(self._pool.map(self._try_load, batch))
        prepared: list[tuple[PendingProduct, list[tuple[bytes, str | None]], str, list[str]]] = []
        for item, result in zip(batch, loaded, strict=True):
            if isinstance(result, ServiceError):
                self._fail(report, item, result)
                continue
            digests = [hashlib.sha256(data).hexdigest() for data, _ in result]
            prepared.append((item, result, content_hash(item.product, digests), digests))
        changed = []
        for entry in prepared:
            pid = entry[0].product.product_id
            if not force and pid in existing and existing[pid][0] == entry[2]:
                report.unchanged += 1
                report.product_ids.append(pid)
            else:
                changed.append(entry)
        # What changed may leave the text or the photos as they were (a new price, stock, a
        # photo swapped): their stored vectors are reused instead of running the models again.
        space = self.embedder.space
        hashes = [embed_hash(e[0].product, e[3], space) for e in changed]
        known = [e[0].product.product_id for e in changed if e[0].product.product_id in existing]
        stored = {} if force or not known else self.catalog.stored_vectors(known)
        kept_images: dict[int, list[Vector]] = {}
        kept_text: dict[int, Vector] = {}
        for i, (entry, h) in enumerate(zip(changed, hashes, strict=True)):
            old = stored.get(entry[0].product.product_id)
            if old is None or old.embed_hash is None:
                continue
            text, images = h.split("/")
            old_text, old_images = old.embed_hash.split("/")
            if old_text == text:
                kept_text[i] = old.text_vector
            vectors = [v for v in (old.image_vector, *old.more_image_vectors) if v is not None]
            if old_images == images and len(vectors) == len(entry[1]):
                kept_images[i] = vectors
        # Every new photo of the batch is embedded in one call; a product with a photo that does
        # not decode fails as a whole (its reason names the photo), the others go on.
        flat = [(i, n) for i, e in enumerate(changed) if i not in kept_images for n in range(len(e[1]))]
        photo_vectors: dict[tuple[int, int], Vector] = {
            (i, n): v for i, vectors in kept_images.items() for n, v in enumerate(vectors)
        }
        broken: dict[int, InvalidInput] = {}
        if flat:
            batch_result = embed_image_bytes(
                self.embedder.clip,
                [changed[i][1][n][0] for i, n in flat],
                max_bytes=self.settings.max_image_bytes,
                max_pixels=self.settings.max_image_pixels,
            )
            photo_vectors.update({flat[j]: v for j, v in zip(batch_result.ok, batch_result.vectors, strict=True)})
            for j, exc in sorted(batch_result.errors.items()):
                i, n = flat[j]
                total = len(changed[i][1])
                if i not in broken:
                    broken[i] = type(exc)(f"image {n + 1} of {total}: {exc}") if total > 1 else exc
        for i, exc in broken.items():
            self._fail(report, changed[i][0], exc)
        todo = [(i, e) for i, e in enumerate(changed) if i not in broken]
        if not todo:
            return []
        to_embed = [i for i, _ in todo if i not in kept_text]
        embedded = self.embedder.text.embed_texts([changed[i][0].product.embedding_text() for i in to_embed])
        text_vectors = {**kept_text, **dict(zip(to_embed, embedded, strict=True))}
        txt_vecs = [text_vectors[i] for i, _ in todo]
        now = datetime.now(UTC)
        records = []
        for (i, (item, photos, chash, _)), tvec in zip(todo, txt_vecs, strict=True):
            p = item.product
            keys = []
            for data, key in photos:
                if key is None:
                    key = image_key_for(p.product_id, data)
                    self.store.put_bytes(key, data, sniff_content_type(data))
                keys.append(key)
            vectors = [photo_vectors[(i, n)] for n in range(len(photos))]
            records.append(
                ProductRecord(
                    product=Product(
                        product_id=p.product_id,
                        title=p.title,
                        description=p.description,
                        category=p.category,
                        price=p.price,
                        image=keys[0] if keys else None,
                        attributes=p.attributes,
                        created_at=now,
                        updated_at=now,
                        more_images=tuple(keys[1:]),
                        in_stock=p.in_stock,
                    ),
                    image_vector=vectors[0] if vectors else None,
                    text_vector=tvec,
                    content_hash=chash,
                    more_image_vectors=tuple(vectors[1:]),
                    embed_hash=hashes[i],
                )
            )
        return records
