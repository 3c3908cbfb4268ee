"""The embedded S3 server's fast ListObjectsV2 answers: the same listings as moto's own serializer."""

from __future__ import annotations

import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local.s3server import fast_listings, start_moto

KEYS = [
    "a/x&y z.txt",
    "a/<tag>.json",
    "a/b/c",
    "a/b/d",
    "a/ünïcødé/ファイル",
    "a/quote\"'.bin",
    *(f"cat/_versions/{18446744073709551615 - v:020d}.manifest" for v in range(1, 8)),
    "top",
]


@pytest.fixture(scope="module")
def listing_server() -> Iterator[tuple[Any, str]]:
    server = start_moto()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    s3.create_bucket(Bucket="listing")
    # Objects without a checksum, as Lance writes them (boto3 adds one unless told not to): their
    # listings are written from cached per-object XML.
    plain = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(request_checksum_calculation="when_required"),
    )
    s3.create_bucket(Bucket="plain")
    for i, key in enumerate(KEYS):
        s3.put_object(Bucket="listing", Key=key, Body=b"x" * i, ChecksumAlgorithm="CRC32" if i % 2 else "SHA256")
        plain.put_object(Bucket="plain", Key=key, Body=b"x" * i)
    yield s3, url
    fast_listings(True)
    server.stop()


REQUESTS: list[dict[str, Any]] = [
    {},
    {"Prefix": "a/"},
    {"Prefix": "a/", "Delimiter": "/"},
    {"Delimiter": "/"},
    {"Prefix": "cat/_versions/", "MaxKeys": 3},
    {"MaxKeys": 4, "FetchOwner": True},
    {"StartAfter": "a/b/c"},
    {"Prefix": "nothing/"},
]


def all_pages(s3: Any, bucket: str = "listing", **kwargs: Any) -> list[dict[str, Any]]:
    pages = []
    token = None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, **kwargs, **({"ContinuationToken": token} if token else {}))
        page.pop("ResponseMetadata")
        pages.append(page)
        token = page.get("NextContinuationToken")
        if not token:
            return pages


def raw(url: str, query: str, bucket: str = "listing") -> bytes:
    with urllib.request.urlopen(f"{url}/{bucket}?list-type=2{query}", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/xml"
        return bytes(resp.read())


def canonical(body: bytes) -> list[tuple[str, str]]:
    """The document's (path, text) pairs, sorted; repeated elements are numbered in document
    order. The order of different elements under one parent is not significant to S3 clients;
    values, nesting and the order of the listed keys are."""
    out: list[tuple[str, str]] = []

    def walk(el: ET.Element, path: str) -> None:
        seen: dict[str, int] = {}
        for child in el:
            tag = child.tag.split("}")[-1]
            seen[tag] = seen.get(tag, -1) + 1
            sub = f"{path}/{tag}[{seen[tag]}]"
            out.append((sub, (child.text or "").strip()))
            walk(child, sub)

    walk(ET.fromstring(body), "")
    return sorted(out)


@pytest.mark.parametrize("bucket", ["listing", "plain"])
@pytest.mark.parametrize("kwargs", REQUESTS, ids=lambda k: ",".join(k) or "plain")
def test_boto3_sees_the_same_listing_with_fast_answers(
    listing_server: tuple[Any, str], kwargs: dict[str, Any], bucket: str
) -> None:
    s3, _ = listing_server
    fast_listings(False)
    expected = all_pages(s3, bucket, **kwargs)
    fast_listings(True)
    got = all_pages(s3, bucket, **kwargs)
    assert got == expected
    assert sum(len(p.get("Contents", [])) + len(p.get("CommonPrefixes", [])) for p in got) > 0 or kwargs == {
        "Prefix": "nothing/"
    }


@pytest.mark.parametrize(
    "query",
    ["", "&prefix=a/", "&delimiter=/", "&encoding-type=url", "&max-keys=2&fetch-owner=true", "&start-after=a/b"],
)
@pytest.mark.parametrize("bucket", ["listing", "plain"])
def test_raw_documents_match_moto_and_come_from_the_fast_writer(
    listing_server: tuple[Any, str], query: str, bucket: str
) -> None:
    _, url = listing_server
    fast_listings(False)
    slow = raw(url, query, bucket)
    fast_listings(True)
    fast = raw(url, query, bucket)
    assert canonical(fast) == canonical(slow)
    # moto's serializer starts with <IsTruncated>; the fast writer with <Name>: this one was fast.
    assert b"<ListBucketResult" in fast and f'2006-03-01/"><Name>{bucket}</Name>'.encode() in fast
    assert b'2006-03-01/"><Name>' not in slow


def test_s3_only_dispatch_serves_s3_and_moto_api(listing_server: tuple[Any, str], monkeypatch: Any) -> None:
    """The server skips moto's per-request service lookup (a lock every request thread took, and a
    scan of moto's package folder): S3 calls never reach it; ``/moto-api`` still goes to moto's app."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    def no_lookup(self: Any, host: Any) -> Any:
        raise AssertionError(f"service lookup for {host!r}")

    monkeypatch.setattr(DomainDispatcherApplication, "get_backend_for_host", no_lookup)
    s3, url = listing_server
    s3.put_object(Bucket="listing", Key="dispatch/probe", Body=b"probe")
    assert s3.get_object(Bucket="listing", Key="dispatch/probe")["Body"].read() == b"probe"
    s3.delete_object(Bucket="listing", Key="dispatch/probe")
    monkeypatch.undo()
    with urllib.request.urlopen(f"{url}/moto-api/data.json") as resp:
        assert resp.status == 200 and b"s3" in resp.read()


def test_embedded_s3_mirrors_to_disk_and_restores_after_a_restart(tmp_path: Path) -> None:
    """Objects written through the server reach the folder (changed ones rewritten, deleted ones
    removed), and a new server on the same folder serves them again."""
    from local.s3server import EmbeddedS3

    first = EmbeddedS3(tmp_path, interval=3600).start()  # mirrored only when asked
    try:
        s3 = first.client()
        s3.create_bucket(Bucket="persist")
        s3.create_bucket(Bucket="persist-empty")
        s3.put_object(Bucket="persist", Key="a/one", Body=b"1")
        s3.put_object(Bucket="persist", Key="a/two", Body=b"2")
        s3.put_object(Bucket="persist", Key="a/empty", Body=b"")
        first.mirror()  # (every bucket of this process's moto, the other tests' as well)
        on_disk = tmp_path / "objects" / "persist" / "a"
        assert sorted(p.name for p in on_disk.iterdir()) == ["empty", "one", "two"]
        assert first.mirror() == 0  # nothing changed
        s3.put_object(Bucket="persist", Key="a/one", Body=b"one again")
        s3.delete_object(Bucket="persist", Key="a/two")
        assert first.mirror() == 1
        assert sorted(p.name for p in on_disk.iterdir()) == ["empty", "one"]
        assert (on_disk / "one").read_bytes() == b"one again"
        s3.put_object(Bucket="persist", Key="a/three", Body=b"3")
    finally:
        first.stop()  # the final mirror writes a/three
    # This process's moto still holds the bucket: empty it (a new process starts empty).
    eraser = start_moto()
    try:
        host, port = eraser.get_host_and_port()
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        for obj in s3.list_objects_v2(Bucket="persist")["Contents"]:
            s3.delete_object(Bucket="persist", Key=obj["Key"])
        s3.delete_bucket(Bucket="persist")
        s3.delete_bucket(Bucket="persist-empty")
    finally:
        eraser.stop()
    second = EmbeddedS3(tmp_path, interval=3600).start()
    try:
        s3 = second.client()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="persist")["Contents"]]
        assert keys == ["a/empty", "a/one", "a/three"]
        assert s3.get_object(Bucket="persist", Key="a/one")["Body"].read() == b"one again"
        assert s3.list_objects_v2(Bucket="persist-empty")["KeyCount"] == 0  # an empty bucket comes back too
    finally:
        second.stop()


def test_connections_stay_open_between_requests(listing_server: tuple[Any, str]) -> None:
    """The server keeps a connection for the next request (moto's own server closed each one)."""
    import http.client

    _, url = listing_server
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/listing?list-type=2&max-keys=1")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Connection", "").lower() != "close"
            resp.read()
        first_socket = conn.sock
        conn.request("HEAD", "/listing/top")
        conn.getresponse().read()
        assert conn.sock is first_socket  # the same connection answered every request
    finally:
        conn.close()


def test_mirror_skips_an_object_replaced_while_it_ran(tmp_path: Path, monkeypatch: Any) -> None:
    """moto closes an object's buffer when the object is replaced or deleted; a pass that reaches
    such an object skips it (the next pass copies what is there then) and copies the others."""
    from types import SimpleNamespace

    from moto.s3.models import FakeKey

    from local import s3server

    def key(name: str, body: bytes) -> FakeKey:
        return FakeKey(name, body, account_id="123456789012", region_name="us-east-1")

    replaced = key("old", b"gone")
    replaced.dispose()  # what moto does to the object a PUT replaces

    bucket = SimpleNamespace(keys={"old": replaced, "fine": key("fine", b"kept")})
    monkeypatch.setattr(s3server, "_stored_buckets", lambda: iter([("b", bucket)]))
    mirror = s3server.EmbeddedS3(tmp_path)  # not started: only its mirror pass runs here
    assert mirror.mirror() == 1
    assert (tmp_path / "objects" / "b" / "fine").read_bytes() == b"kept"
    assert not (tmp_path / "objects" / "b" / "old").exists()
    assert "b/old" not in mirror._mirrored  # so the next pass tries again


def _client(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )


def test_indexed_listings_page_like_moto_through_puts_overwrites_and_deletes(
    listing_server: tuple[Any, str],
) -> None:
    """Listings answered from the sorted key index are moto's own, page for page (keys, folders,
    truncation, continuation tokens, start keys), while puts, overwrites and deletes change the
    bucket between them."""
    import random

    from local.s3index import indexed_listings

    _, url = listing_server
    s3 = _client(url)
    s3.create_bucket(Bucket="indexed")
    rng = random.Random(7)
    parts = ["a", "b", "a b", "ü", "_versions", "data", "x&y", "z"]
    names: set[str] = set()
    prefixes = ["", "a", "a/", "b/", "_versions/", "ü/a", "nothing/", "z"]
    try:
        for round_ in range(6):
            for _ in range(40):  # puts (some overwrite) and deletes, so the index must follow
                if names and rng.random() < 0.25:
                    gone = rng.choice(sorted(names))
                    s3.delete_object(Bucket="indexed", Key=gone)
                    names.discard(gone)
                else:
                    key = "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
                    s3.put_object(Bucket="indexed", Key=key, Body=str(round_).encode())
                    names.add(key)
            for prefix in prefixes:
                for kwargs in (
                    {"Prefix": prefix},
                    {"Prefix": prefix, "Delimiter": "/", "MaxKeys": rng.randint(1, 5)},
                    {"Prefix": prefix, "MaxKeys": rng.randint(1, 7), "StartAfter": rng.choice(sorted(names))},
                    {"Prefix": prefix, "Delimiter": "/", "StartAfter": "a/b"},
                ):
                    indexed_listings(False)
                    expected = all_pages(s3, "indexed", **kwargs)
                    indexed_listings(True)
                    assert all_pages(s3, "indexed", **kwargs) == expected, kwargs
        everything = [o["Key"] for p in all_pages(s3, "indexed") for o in p.get("Contents", [])]
        assert everything == sorted(names) and len(everything) > 20
    finally:
        indexed_listings(True)
        for key in names:
            s3.delete_object(Bucket="indexed", Key=key)
        s3.delete_bucket(Bucket="indexed")


def test_an_indexed_listing_does_not_walk_the_bucket(listing_server: tuple[Any, str], monkeypatch: Any) -> None:
    """A listing reads the index, not every key of the bucket (moto's walk copies the key store
    and visits each key: what made a commit's listing grow with everything written that day)."""
    from moto.s3.utils import _VersionedKeyStore

    _, url = listing_server
    s3 = _client(url)
    s3.create_bucket(Bucket="nowalk")
    for i in range(30):
        s3.put_object(Bucket="nowalk", Key=f"data/{i:03d}", Body=b"d")
    for v in range(5):
        s3.put_object(Bucket="nowalk", Key=f"_versions/{99 - v}.manifest", Body=b"m")

    def walk(self: Any) -> Any:
        raise AssertionError("the listing walked the whole bucket")

    monkeypatch.setattr(_VersionedKeyStore, "_self_iterable", walk)
    page = s3.list_objects_v2(Bucket="nowalk", Prefix="_versions/", MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["_versions/95.manifest", "_versions/96.manifest"]
    assert page["IsTruncated"] is True
    rest = s3.list_objects_v2(Bucket="nowalk", Prefix="_versions/", ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in rest["Contents"]] == [f"_versions/{v}.manifest" for v in (97, 98, 99)]
    folders = s3.list_objects_v2(Bucket="nowalk", Delimiter="/")
    assert [c["Prefix"] for c in folders["CommonPrefixes"]] == ["_versions/", "data/"]
    # Nor is the index rebuilt: each put and delete updates it (a delete and a put leave the
    # count as it was, so only the writes' own updates can make this listing right).
    from local.s3index import KeyIndex

    monkeypatch.setattr(KeyIndex, "rebuild", walk)
    s3.delete_object(Bucket="nowalk", Key="_versions/95.manifest")
    s3.put_object(Bucket="nowalk", Key="_versions/94.manifest", Body=b"m")
    s3.put_object(Bucket="nowalk", Key="_versions/96.manifest", Body=b"again")
    page = s3.list_objects_v2(Bucket="nowalk", Prefix="_versions/", MaxKeys=3)
    assert [o["Key"] for o in page["Contents"]] == [f"_versions/{v}.manifest" for v in (94, 96, 97)]
    assert page["Contents"][1]["Size"] == len(b"again")
    monkeypatch.undo()
    for key in [o["Key"] for p in all_pages(s3, "nowalk") for o in p["Contents"]]:
        s3.delete_object(Bucket="nowalk", Key=key)
    s3.delete_bucket(Bucket="nowalk")


def test_the_index_follows_concurrent_writers(listing_server: tuple[Any, str]) -> None:
    """Threads putting and deleting while others list: afterwards the index lists exactly what
    moto's walk lists (each write syncs its name to the store as it is then)."""
    from concurrent.futures import ThreadPoolExecutor

    from local.s3index import indexed_listings

    _, url = listing_server
    s3 = _client(url)
    s3.create_bucket(Bucket="racing")

    def writer(w: int) -> None:
        client = _client(url)
        for i in range(40):
            key = f"t/{(w * 7 + i) % 25:02d}"
            if i % 3 == 2:
                client.delete_object(Bucket="racing", Key=key)
            else:
                client.put_object(Bucket="racing", Key=key, Body=b"x")

    def reader(_: int) -> None:
        client = _client(url)
        for _ in range(15):
            client.list_objects_v2(Bucket="racing", Prefix="t/")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(5)))  # writers alone first: the bucket holds keys
        futures = [pool.submit(writer, w) for w in range(5, 10)] + [pool.submit(reader, r) for r in range(3)]
        for f in futures:
            f.result()
    indexed = all_pages(s3, "racing", Prefix="t/")
    indexed_listings(False)
    try:
        walked = all_pages(s3, "racing", Prefix="t/")
    finally:
        indexed_listings(True)
    assert indexed == walked and indexed[0]["KeyCount"] > 0
    for key in [o["Key"] for o in indexed[0]["Contents"]]:
        s3.delete_object(Bucket="racing", Key=key)
    s3.delete_bucket(Bucket="racing")
