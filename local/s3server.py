"""Embedded S3 server for local work: moto in server mode on loopback, persisted to a folder.

moto keeps objects in memory; this wrapper restores them from ``<dir>/objects/<bucket>/<key>`` at
start and mirrors changes back every ``interval`` seconds and at stop. Lance data files are
immutable and written before the manifest that references them, so a mirror taken at any moment
holds a consistent (possibly slightly older) dataset version. A hard kill (SIGKILL, power loss)
loses the writes not yet mirrored: normally the last ``interval`` seconds, more while a large
mirror pass is still copying. Uploads lost that way are simply not there after the restart;
ingest work lost that way is redone by the upload sweeper.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

log = logging.getLogger(__name__)

ACCESS_KEY = "local"
SECRET_KEY = "local-secret"  # the embedded server accepts any credentials; these are not secrets


class EmbeddedS3:
    """A moto S3 server on 127.0.0.1 whose objects survive restarts."""

    def __init__(self, data_dir: Path, port: int = 0, interval: float = 2.0) -> None:
        self.data_dir = data_dir
        self.objects_dir = data_dir / "objects"
        self.port = port
        self.interval = interval
        self._server: ThreadedMotoServer | None = None
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
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
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
        while not self._stop.wait(self.interval):
            try:
                self.mirror()
            except Exception as exc:  # keep mirroring through transient errors; log them
                log.warning("embedded S3: mirror failed: %s", exc)

    def mirror(self) -> int:
        """Write new/changed objects to disk and remove deleted ones; returns files written."""
        with self._lock:
            s3 = self.client()
            seen: set[str] = set()
            written = 0
            for b in s3.list_buckets().get("Buckets", []):
                bucket = b["Name"]
                (self.objects_dir / bucket).mkdir(parents=True, exist_ok=True)
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for obj in page.get("Contents", []):
                        name = f"{bucket}/{obj['Key']}"
                        seen.add(name)
                        etag = str(obj.get("ETag", "")).strip('"')
                        if self._mirrored.get(name) == etag:
                            continue
                        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                        path = self.objects_dir / bucket / obj["Key"]
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
