"""The bucket: product images and upload files on any S3-compatible endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from core.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def validate_key(key: str) -> str:
    """Object keys we accept from callers: relative, no ``..`` segments, no other buckets."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidInput("object key must be a non-empty string")
    key = key.strip()
    if "://" in key or key.startswith("/") or "\\" in key:
        raise InvalidInput(f"object key {key!r} must be a key inside the bucket, not a URL or path")
    if any(part in ("..", ".") for part in key.split("/")):
        raise InvalidInput(f"object key {key!r} may not contain '.' or '..' segments")
    if len(key) > 1024 or not key.isprintable():
        raise InvalidInput("object key too long or not printable")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStore:
    """Thin typed wrapper over one bucket; botocore errors become the service's error tree."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self._client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.aws_region,
            aws_access_key_id=(settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None),
            aws_secret_access_key=(
                settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
            ),
            config=Config(
                connect_timeout=min(settings.s3_timeout_seconds, 5.0),
                read_timeout=settings.s3_timeout_seconds,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
                # The indexer reads a batch's images with 16 threads and request threads read
                # images too: with botocore's default of 10, connections were closed and reopened
                # ("Connection pool is full, discarding connection").
                max_pool_connections=32,
            ),
        )

    def _fail(self, exc: Exception, key: str = "") -> Exception:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                what = f"object {key!r}" if key else f"bucket {self.bucket!r}"
                return NotFound(f"{what} not found in bucket {self.bucket!r}")
            return Unavailable(f"object storage error ({code}) for {key or self.bucket!r}")
        if isinstance(exc, (EndpointConnectionError, BotoCoreError)):
            return Unavailable(f"object storage unreachable: {exc}")
        return exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _MISSING_CODES:
                raise self._fail(exc) from exc
        except BotoCoreError as exc:
            raise self._fail(exc) from exc
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._fail(exc) from exc

    def ping(self) -> bool:
        """True when the bucket answers."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return True
        except (ClientError, BotoCoreError):
            return False

    def get_with_etag(self, key: str, *, max_bytes: int | None = None) -> tuple[bytes, str]:
        """Read a whole object and the ETag of exactly the bytes read."""
        key = validate_key(key)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            size = int(resp.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                resp["Body"].close()
                raise PayloadTooLarge(f"object {key!r} is {size} bytes; the limit is {max_bytes}")
            return resp["Body"].read(), str(resp.get("ETag", "")).strip('"')
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object; refuses objects over ``max_bytes`` before downloading them."""
        return self.get_with_etag(key, max_bytes=max_bytes)[0]

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write an object; returns its ETag."""
        key = validate_key(key)
        try:
            resp = self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
            return str(resp.get("ETag", "")).strip('"')
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc

    def head(self, key: str) -> ObjectInfo:
        key = validate_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc
        return ObjectInfo(key, int(resp.get("ContentLength", 0)), str(resp.get("ETag", "")).strip('"'))

    def delete(self, key: str) -> None:
        key = validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order."""
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, prefix) from exc
