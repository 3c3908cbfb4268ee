"""``/admin/*``: the catalog's stored versions and rollback (API key)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from functions.routes.deps import api_of, require_api_key
from functions.schemas import RollbackRequest, RollbackResponse, VersionOut, VersionsResponse

router = APIRouter(tags=["admin"], dependencies=[Depends(require_api_key)])


@router.get("/admin/versions", response_model=VersionsResponse)
def catalog_versions(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> VersionsResponse:
    """Stored versions of the products table, newest first, with their product counts."""
    api = api_of(request)
    catalog = api.services.catalog
    return VersionsResponse(
        current=catalog.version,
        retention_hours=api.services.settings.version_retention_hours,
        versions=[
            VersionOut(version=v.version, timestamp=v.timestamp, products=v.products) for v in catalog.versions(limit)
        ],
    )


@router.post("/admin/rollback", response_model=RollbackResponse)
def rollback(request: Request, body: RollbackRequest) -> RollbackResponse:
    """Make a stored catalog version current again (committed as a new version, so it can be
    undone). Other query processes pick it up within CATALOG_REFRESH_SECONDS. 404 if the
    version does not exist or was cleaned up."""
    api = api_of(request)
    catalog = api.services.catalog
    previous = catalog.version
    new = catalog.restore(body.version)
    api.services.recommender.refresh()
    return RollbackResponse(restored=body.version, version=new, previous=previous, products=catalog.count())
