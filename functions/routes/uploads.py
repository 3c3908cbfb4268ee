"""``POST /triggers/s3`` (bucket notifications) and ``GET /uploads`` (ingest records)."""

import dataclasses
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request

from core.uploads import triage
from functions.routes.deps import api_of, require_api_key, require_webhook_token
from functions.schemas import IgnoredKey, TriggerResponse, UploadOut, UploadsResponse

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])


@router.post(
    "/triggers/s3", status_code=202, response_model=TriggerResponse, dependencies=[Depends(require_webhook_token)]
)
def s3_trigger(request: Request, payload: Annotated[Any, Body()]) -> TriggerResponse:
    """S3 event notifications (AWS `Records`, MinIO webhook, EventBridge `detail`). Metadata
    files under `uploads/` that exist, are within MAX_UPLOAD_BYTES and were not queued before with
    the same ETag are queued for indexing (up to WEBHOOK_KEYS_PER_MINUTE; the sweeper takes the
    rest), and the call returns at once."""
    api = api_of(request)
    found = api.gate.admit(triage(payload, api.services.store.bucket))
    for ig in found.ignored:
        api.metrics.webhook_refused.labels(ig.kind).inc()
        log.info("notification for %s ignored: %s", ig.key, ig.reason)
    api.uploads.start()
    api.uploads.submit(found.keys)
    return TriggerResponse(
        accepted=len(found.keys),
        keys=found.keys,
        ignored=[IgnoredKey(key=ig.key, reason=ig.reason) for ig in found.ignored],
    )


@router.get("/uploads", response_model=UploadsResponse, dependencies=[Depends(require_api_key)])
def list_uploads(
    request: Request,
    status: Annotated[Literal["pending", "indexed", "partial", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UploadsResponse:
    """Ingest records of upload objects, newest first."""
    api = api_of(request)
    records, total = api.services.uploads.log.list(status, limit, offset)
    return UploadsResponse(
        uploads=[UploadOut(**dataclasses.asdict(r)) for r in records],
        total=total,
        limit=limit,
        offset=offset,
        queued=api.uploads.queued,
    )
