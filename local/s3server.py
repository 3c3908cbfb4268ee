"""Embedded S3 server for local work: moto in server mode on loopback, persisted to a folder.

moto keeps objects in memory; this wrapper restores them from ``<dir>/objects/<bucket>/<key>`` at
start and mirrors changes back every ``interval`` seconds and at stop. Lance data files are
immutable and written before the manifest that references them, so a mirror taken at any moment
holds a consistent (possibly slightly older) dataset version. A hard kill (SIGKILL, power loss)
loses the writes not yet mirrored: normally the last ``interval`` seconds, more while a large
mirror pass is still copying or, with many objects, while the mirror waits longer between passes
(see :data:`MIRROR_BUSY_SHARE`). Uploads lost that way are simply not there after the restart;
ingest work lost that way is redone by the upload sweeper.

moto builds every ``ListObjectsV2`` answer with botocore's generic serializer, which re-parses each
key's timestamp with dateutil (slow per key), and Lance lists a table's
``_versions/`` on every commit and every freshness check. :func:`fast_listings` writes that XML
directly instead (same document, same pagination), and :mod:`local.s3index` answers the listing
from a sorted index of the bucket's names instead of moto's walk over every key, so commits stay
cheap while versions accumulate; :func:`start_moto` starts a server with both.

moto's server also works out which AWS service each request is for, under one process-wide lock, by
listing moto's package folder (an ``isdir`` per module) and matching ~200 URL patterns. This server
only ever serves S3, so :class:`S3OnlyDispatcher` hands every request straight to moto's S3 app;
Lance sends many small requests per commit, and they queued on that lock. And it is served by
cheroot rather than moto's development server (:class:`S3Server`), for connections that stay open.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import boto3
from cheroot import wsgi
from moto import settings as moto_settings
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import FakeKey, s3_backends

from local.s3index import indexed_listings

log = logging.getLogger(__name__)

ACCESS_KEY = "local"
SECRET_KEY = "local-secret"  # the embedded server accepts any credentials; these are not secrets

MIRROR_BUSY_SHARE = 0.2
"""The mirror waits at least ``pass time / MIRROR_BUSY_SHARE`` between passes: at most ~20% of a
core goes to mirroring however many objects the bucket holds."""

_LIST_FIELDS = (
    "Name",
    "Prefix",
    "StartAfter",
    "NextContinuationToken",
    "KeyCount",
    "MaxKeys",
    "Delimiter",
    "EncodingType",
    "IsTruncated",
    "Contents",
    "CommonPrefixes",
)
_ITEM_FIELDS = ("Key", "LastModified", "ETag", "ChecksumAlgorithm", "Size", "StorageClass", "Owner")
_KNOWN_LIST, _KNOWN_ITEM = frozenset(_LIST_FIELDS), frozenset(_ITEM_FIELDS)
_PLAIN_ITEM = frozenset(("Key", "LastModified", "ETag", "Size", "StorageClass"))
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_fast = {"enabled": False}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _plain_item(key: str, last_modified: str, etag: str, size: int, storage_class: str | None) -> str:
    """One listed object's XML (no checksum algorithm, no owner)."""
    return (
        f"<Contents><Key>{_text(key)}</Key><LastModified>{_text(last_modified)}</LastModified>"
        f"<ETag>{_text(etag)}</ETag><Size>{_text(size)}</Size><StorageClass>{_text(storage_class)}</StorageClass>"
        "</Contents>"
    )


def list_v2_xml(result: Mapping[str, Any]) -> str | None:
    """moto's ``ListObjectsV2`` result (the dict its handler passes to the serializer) as S3's XML
    document, or None for a shape this writer does not cover (the serializer then runs)."""
    if not result.keys() <= _KNOWN_LIST:
        return None
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    ]
    for name in _LIST_FIELDS:
        if name not in result:
            continue
        if name == "Contents":
            for item in result[name]:
                if isinstance(item, str):  # written already (_contents)
                    parts.append(item)
                    continue
                if item.keys() == _PLAIN_ITEM:  # most items (a page has up to 1,000)
                    parts.append(
                        _plain_item(item["Key"], item["LastModified"], item["ETag"], item["Size"], item["StorageClass"])
                    )
                    continue
                if not item.keys() <= _KNOWN_ITEM:
                    return None
                parts.append("<Contents>")
                for field in _ITEM_FIELDS:
                    if field not in item:
                        continue
                    value = item[field]
                    if field == "ChecksumAlgorithm":
                        parts.extend(f"<{field}>{_text(v)}</{field}>" for v in value)
                    elif field == "Owner":
                        parts.append(f"<Owner>{''.join(f'<{k}>{_text(v)}</{k}>' for k, v in value.items())}</Owner>")
                    else:
                        parts.append(f"<{field}>{_text(value)}</{field}>")
                parts.append("</Contents>")
        elif name == "CommonPrefixes":
            prefixes = (_text(c["Prefix"]) for c in result[name])
            parts.extend(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>" for p in prefixes)
        else:
            parts.append(f"<{name}>{_text(result[name])}</{name}>")
    parts.append("</ListBucketResult>")
    body = "".join(parts)
    return None if _NOT_XML.search(body) else body


_fragments: dict[int, tuple[FakeKey, tuple[Any, ...], str]] = {}
_FRAGMENTS_MAX = 8192


def _contents(key: FakeKey) -> str | dict[str, Any]:
    """A listed object's ``<Contents>``, as moto's handler and :func:`list_v2_xml` would write it:
    cached while the object's listed fields stay as they were (Lance lists the same newest
    versions on every commit). An object with a checksum algorithm comes as the item moto's
    handler builds, for :func:`list_v2_xml` to write."""
    if key.checksum_algorithm:
        return {
            "Key": key.safe_name(None),
            "LastModified": key.last_modified_ISO8601,
            "ETag": key.etag,
            "Size": key.size,
            "StorageClass": key.storage_class,
            "ChecksumAlgorithm": [key.checksum_algorithm],
        }
    etag = key.etag  # computed on first use: before the stamp
    stamp = (key.last_modified, etag, key.contentsize, key._storage_class)
    hit = _fragments.get(id(key))
    if hit is not None and hit[0] is key and hit[1] == stamp:
        return hit[2]
    xml = _plain_item(key.safe_name(None), key.last_modified_ISO8601, etag, key.size, key.storage_class)
    if len(_fragments) >= _FRAGMENTS_MAX:
        _fragments.clear()
    _fragments[id(key)] = (key, stamp, xml)
    return xml


def _plain_page(handler: Any) -> str | None:
    """moto's ``ListObjectsV2`` answer for the common request (no URL encoding of the names, no
    owners), mostly from cached per-object XML, without moto building a dict per object; None
    for any other request, which moto's handler answers."""
    query = handler.querystring
    if "encoding-type" in query or "fetch-owner" in query:
        return None
    token = query.get("continuation-token", [None])[0]
    if token == "":
        return None  # moto's error answer
    bucket = handler.backend.get_bucket(handler.bucket_name)
    prefix = handler._get_querystring(handler.request, handler.uri).get("prefix", [None])[0]
    if isinstance(prefix, bytes):
        prefix = prefix.decode("utf-8")
    delimiter = query.get("delimiter", [None])[0]
    max_keys = int(query.get("max-keys", [moto_settings.get_s3_default_max_keys()])[0])
    start_after = query.get("start-after", [None])[0]
    entries, truncated, next_token = handler.backend.list_objects_v2(
        bucket=bucket,
        prefix=prefix,
        delimiter=delimiter,
        continuation_token=token,
        start_after=start_after,
        max_keys=max_keys,
    )
    contents = [_contents(e) for e in entries if isinstance(e, FakeKey)]
    folders = [{"Prefix": e} for e in entries if not isinstance(e, FakeKey)]
    result: dict[str, Any] = {
        "Name": bucket.name,
        "Prefix": prefix or "",
        "MaxKeys": max_keys,
        "KeyCount": len(contents) + len(folders),
        "IsTruncated": truncated,
        "Contents": contents,
    }
    if delimiter:
        result["Delimiter"] = delimiter
        result["CommonPrefixes"] = folders
    if next_token:
        result["NextContinuationToken"] = next_token
    if not token and start_after:
        result["StartAfter"] = start_after
    handler.data["Action"] = "ListObjectsV2"  # as moto's handler records it
    return list_v2_xml(result)


def fast_listings(enabled: bool = True) -> None:
    """Make moto's S3 server (every one in this process) answer ``ListObjectsV2`` with
    :func:`list_v2_xml`; ``enabled=False`` restores moto's own serializer."""
    from moto.s3.responses import S3Response

    _fast["enabled"] = enabled
    if getattr(S3Response, "_shelfsearch_fast_listings", False):
        return
    plain_list = getattr(S3Response, "list_objects_v2", None)
    if plain_list is None:  # another moto layout: keep its own (slower) listings
        log.warning("embedded S3: this moto version has no S3Response.list_objects_v2; listings stay slow")
        return

    def list_objects_v2(self: Any) -> Any:
        if not _fast["enabled"]:
            return plain_list(self)
        body = _plain_page(self)
        if body is not None:
            return 200, {"Content-Type": "application/xml", **self.response_headers}, body.encode()
        serialize: Callable[[Any], Any] = self.serialized

        def serialized(action_result: Any) -> Any:
            result = getattr(action_result, "result", None)
            body = list_v2_xml(result) if isinstance(result, dict) else None
            if body is None:
                return serialize(action_result)
            # As bytes: moto then skips its search of the whole body for a <RequestId> to fill in
            # (a listing has none), a scan as long as the page.
            return 200, {"Content-Type": "application/xml", **self.response_headers}, body.encode()

        self.serialized = serialized  # this request's handler instance only (moto makes one per request)
        try:
            return plain_list(self)
        finally:
            del self.serialized

    setattr(S3Response, "list_objects_v2", list_objects_v2)  # noqa: B010 (patching moto's handler)
    setattr(S3Response, "_shelfsearch_fast_listings", True)  # noqa: B010


class S3OnlyDispatcher(DomainDispatcherApplication):
    """moto's dispatcher with the service fixed to S3 (``/moto-api`` still goes to moto's own app).

    The stock one resolves the service per request under a lock that every request thread takes,
    scanning moto's package folder each time (``isdir`` calls plus URL-pattern matching), so
    concurrent requests from one Lance commit waited for each other.
    """

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self._s3 = create_backend_app("s3")

    def get_application(self, environ: dict[str, Any]) -> Any:
        # moto matches keys against the path as sent (an encoded slash stays encoded); werkzeug's
        # server passes it as RAW_URI, cheroot as REQUEST_URI.
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return super().get_application(environ)
        return self._s3


class S3Server:
    """moto's S3 app (:class:`S3OnlyDispatcher`) served by cheroot on loopback, in a thread.

    cheroot keeps connections open between requests and answers them from a fixed pool of worker
    threads; moto's own server (werkzeug's development server) closes every connection after one
    answer and starts a thread per connection, so each of the several requests of a Lance commit
    paid for a TCP connection, a thread and a socket teardown on both sides.
    """

    THREADS = 16
    """Requests served at once: a large GET does not hold up the small requests of a commit."""
    IDLE_SECONDS = 120
    """An idle connection is closed after this long: longer than the clients' own pool timeouts
    (90 s for Lance's), so a client does not send a request on a connection closing under it."""

    def __init__(self, ip_address: str = "127.0.0.1", port: int = 0) -> None:
        self._server = wsgi.Server(
            (ip_address, port),
            S3OnlyDispatcher(),
            numthreads=self.THREADS,
            server_name="moto",
            request_queue_size=128,
            timeout=self.IDLE_SECONDS,
        )
        self._server.prepare()  # binds now: the port is known before start()
        self._thread = threading.Thread(target=self._server.serve, name="s3-server", daemon=True)

    def start(self) -> S3Server:
        self._thread.start()
        return self

    def get_host_and_port(self) -> tuple[str, int]:
        host, port = self._server.bind_addr[:2]  # type: ignore[index]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=10)


def start_moto(port: int = 0) -> S3Server:
    """moto's S3 server on 127.0.0.1 (``port`` 0: any free one), in a thread, with fast listings
    (indexed, written directly) and S3-only dispatch."""
    fast_listings()
    indexed_listings()
    return S3Server(ip_address="127.0.0.1", port=port).start()


def _stored_buckets() -> Iterator[tuple[str, Any]]:
    """(name, moto's bucket) for every bucket of this process's moto, in every account."""
    for account in list(s3_backends):
        yield from list(s3_backends[account]["global"].buckets.items())


class EmbeddedS3:
    """A moto S3 server on 127.0.0.1 whose objects survive restarts."""

    def __init__(self, data_dir: Path, port: int = 0, interval: float = 2.0) -> None:
        self.data_dir = data_dir
        self.objects_dir = data_dir / "objects"
        self.port = port
        self.interval = interval
        self._server: S3Server | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mirrored: dict[str, str] = {}  # "bucket/key" -> ETag of the copy on disk
        self.url = ""

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def start(self) -> EmbeddedS3:
        self._server = start_moto(self.port)
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        restored = self._restore()
        if restored:
            log.info("embedded S3: restored %d objects from %s", restored, self.objects_dir)
        self._thread = threading.Thread(target=self._loop, name="s3-mirror", daemon=True)
        self._thread.start()
        return self

    def _restore(self) -> int:
        if not self.objects_dir.is_dir():
            return 0
        s3 = self.client()
        n = 0
        for bucket_dir in sorted(p for p in self.objects_dir.iterdir() if p.is_dir()):
            s3.create_bucket(Bucket=bucket_dir.name)
            for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
                key = path.relative_to(bucket_dir).as_posix()
                data = path.read_bytes()
                resp = s3.put_object(Bucket=bucket_dir.name, Key=key, Body=data)
                self._mirrored[f"{bucket_dir.name}/{key}"] = str(resp.get("ETag", "")).strip('"')
                n += 1
        return n

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                self.mirror()
            except Exception as exc:  # keep mirroring through transient errors; log them
                log.warning("embedded S3: mirror failed: %s", exc)
            wait = max(self.interval, (time.monotonic() - started) / MIRROR_BUSY_SHARE)

    def mirror(self) -> int:
        """Write new/changed objects to disk and remove deleted ones; returns files written.

        Reads moto's objects in this process (the server runs here), not through the server:
        over HTTP, every pass listed every object of every bucket with botocore, a cost that grew
        with the bucket and came out of the same two cores that serve requests.
        """
        with self._lock:
            seen: set[str] = set()
            written = 0
            for bucket, contents in _stored_buckets():
                (self.objects_dir / bucket).mkdir(parents=True, exist_ok=True)  # an empty bucket too
                for key, obj in contents.keys.items():  # moto iterates over a copy
                    if not isinstance(obj, FakeKey):  # a delete marker
                        continue
                    name = f"{bucket}/{key}"
                    seen.add(name)
                    try:  # moto closes the buffer of an object replaced or deleted since the listing
                        etag = str(obj.etag).strip('"')  # (an ETag not yet computed reads the buffer)
                        if self._mirrored.get(name) == etag:
                            continue
                        body = obj.value
                    except ValueError:  # gone meanwhile: the next pass sees what is there now,
                        continue  # and the copy on disk stays till then
                    path = self.objects_dir / bucket / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + ".tmp-mirror")
                    tmp.write_bytes(body)
                    os.replace(tmp, path)
                    self._mirrored[name] = etag
                    written += 1
            for name in set(self._mirrored) - seen:
                (self.objects_dir / name).unlink(missing_ok=True)
                del self._mirrored[name]
            return written

    def stop(self) -> None:
        """Final mirror, then shut the server down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._server is not None:
            try:
                self.mirror()
            finally:
                self._server.stop()
                self._server = None

    def write_state(self, path: Path) -> None:
        path.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
