"""``POST /triggers/s3`` (bucket notifications) and ``GET /uploads`` (ingest records)."""

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query

from core.uploads import triage
from functions.routes.deps import ApiDep, require_webhook_token
from functions.schemas import IgnoredKey, TriggerResponse, UploadOut, UploadsResponse

router = APIRouter(tags=["uploads"])


@router.post(
    "/triggers/s3", status_code=202, response_model=TriggerResponse, dependencies=[Depends(require_webhook_token)]
)
def s3_trigger(api: ApiDep, payload: Annotated[Any, Body()]) -> TriggerResponse:
    """S3 event notifications (AWS `Records`, MinIO webhook, EventBridge `detail`). Metadata
    files under `uploads/` are queued for indexing and the call returns at once."""
    found = triage(payload, api.services.store.bucket)
    api.uploads.start()
    api.uploads.submit(found.keys)
    return TriggerResponse(
        accepted=len(found.keys),
        keys=found.keys,
        ignored=[IgnoredKey(key=key, reason=reason) for key, reason in found.ignored],
    )


@router.get("/uploads", response_model=UploadsResponse)
def list_uploads(
    api: ApiDep,
    status: Annotated[Literal["pending", "indexed", "partial", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UploadsResponse:
    """Ingest records of upload objects, newest first."""
    records, total = api.services.uploads.log.list(status, limit, offset)
    return UploadsResponse(
        uploads=[UploadOut(**dataclasses.asdict(r)) for r in records],
        total=total,
        limit=limit,
        offset=offset,
        queued=api.uploads.queued,
    )
