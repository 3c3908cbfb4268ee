"""A sorted index of every bucket's key names for the embedded S3 server: a listing costs the
page it returns, not the whole bucket.

moto answers ``ListObjectsV2`` by walking every key of the bucket in Python (a copy of the key
dict, then one method call per key), sorting all the matches and cutting the page out of them.
Lance lists a table's ``_versions/`` on every commit, and with the 24 hours of versions that
retention keeps, each commit's listing walked every data file, manifest and transaction file
written that day, and the server slowed as it ran (``bench/README.md``, "Sustained mixed
traffic").

:func:`indexed_listings` keeps a sorted list of key names beside each bucket's key store (built on
the first listing, then updated by every put and delete) and answers a listing from it: a bisection
to the first name past the prefix and start key, then only the names of the page (a folder under a
delimiter is skipped in one step). The page is the one moto builds: the same entries in the same
order, moto's own truncation and continuation tokens. Shapes this does not cover (an unknown
continuation token, another bucket type) go to moto's own code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto.s3.models import FakeBucket, FakeDeleteMarker, S3Backend
from moto.s3.utils import _VersionedKeyStore
from sortedcontainers import SortedList

_ATTR = "_shelfsearch_key_index"
_MUTATORS = ("__setitem__", "__delitem__", "setlist", "pop")
_enabled = {"on": False}
_build = threading.Lock()


class KeyIndex:
    """The sorted names of one key store. :meth:`sync` makes a name match the store as it is now,
    so hooks that run late or twice still leave the index right."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: SortedList = SortedList()

    def sync(self, store: dict[str, Any], name: str) -> None:
        with self.lock:
            if dict.__contains__(store, name):
                if name not in self.names:
                    self.names.add(name)
            else:
                self.names.discard(name)

    def rebuild(self, store: dict[str, Any]) -> None:
        """From the store's current names (the caller holds :attr:`lock`)."""
        self.names = SortedList(list(dict.keys(store)))


def index_of(store: dict[str, Any]) -> KeyIndex:
    """The store's index, built on first use. It is attached before the names are read, under its
    own lock: a put or delete racing with the build waits for it, then syncs its name."""
    index: KeyIndex | None = store.__dict__.get(_ATTR)
    if index is None:
        with _build:
            index = store.__dict__.get(_ATTR)
            if index is None:
                index = KeyIndex()
                with index.lock:
                    store.__dict__[_ATTR] = index
                    index.rebuild(store)
    return index


def _hooked(method: Callable[..., Any]) -> Callable[..., Any]:
    def mutate(self: dict[str, Any], key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, key, *args, **kwargs)
        finally:
            index: KeyIndex | None = self.__dict__.get(_ATTR)
            if index is not None:
                index.sync(self, key)

    return mutate


def _collect(
    store: dict[str, Any],
    names: SortedList,
    start: int,
    prefix: str,
    delimiter: str | None,
    after: str | None,
    entries: list[Any],
    want: int,
) -> int | None:
    """Add entries from ``names[start:]`` until ``want`` are there or the prefix ends (None), or
    until a folder is complete: then the position past it, to go on from."""
    folder = None
    for name in names.islice(start):
        if len(entries) >= want or not name.startswith(prefix):
            return None
        if folder is not None and name.startswith(folder):
            continue  # a folder ending in the last code point: skipped name by name
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            folder = prefix + rest.split(delimiter)[0] + delimiter
            if after is None or folder > after:  # a folder counts even if only markers are in it
                entries.append(folder)
            if ord(folder[-1]) < 0x10FFFF:
                return int(names.bisect_left(folder[:-1] + chr(ord(folder[-1]) + 1)))  # past the folder
            continue
        versions = dict.get(store, name)
        if versions and not isinstance(versions[-1], FakeDeleteMarker):
            entries.append(versions[-1])
    return None


def list_page(
    backend: Any, bucket: Any, prefix: str, delimiter: str | None, after: str | None, max_keys: int
) -> tuple[list[Any], bool, str | None]:
    """moto's ``list_objects_v2`` answer, from the index: keys (their latest version, delete
    markers left out) and folders, sorted by name, those above ``after`` only, cut to ``max_keys``."""
    store = bucket.keys
    index = index_of(store)
    entries: list[Any] = []
    with index.lock:
        if len(index.names) != dict.__len__(store):  # a change no hook saw (another moto version)
            index.rebuild(store)
        names = index.names
        i = names.bisect_left(prefix)
        if after is not None:
            i = max(i, names.bisect_right(after))
        while i is not None:
            i = _collect(store, names, i, prefix, delimiter, after, entries, max_keys + 1)
    result: tuple[list[Any], bool, str | None] = backend._truncate_result(entries, max_keys)
    return result


def indexed_listings(enabled: bool = True) -> None:
    """Answer ``ListObjectsV2`` of every moto S3 server in this process from the key index
    (``enabled=False``: moto's own walk over the bucket)."""
    _enabled["on"] = enabled
    if getattr(S3Backend, "_shelfsearch_indexed", False):
        return
    for name in _MUTATORS:
        setattr(_VersionedKeyStore, name, _hooked(getattr(_VersionedKeyStore, name)))
    plain = S3Backend.list_objects_v2

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        unusual = type(bucket) is not FakeBucket or max_keys < 0 or (continuation_token and after is None)
        if not _enabled["on"] or unusual:
            return plain(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        return list_page(self, bucket, prefix or "", delimiter, after, max_keys)

    setattr(S3Backend, "list_objects_v2", list_objects_v2)  # noqa: B010 (patching moto's backend)
    setattr(S3Backend, "_shelfsearch_indexed", True)  # noqa: B010
