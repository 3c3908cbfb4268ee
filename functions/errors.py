"""The one map from the core error tree to HTTP, and the error answers in the OpenAPI schema."""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core import errors

log = logging.getLogger(__name__)

# Order matters: subclasses first.
ERROR_STATUS: list[tuple[type[errors.ServiceError], int]] = [
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.InvalidImage, 422),
    (errors.InvalidInput, 422),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
    (errors.ModelLoadError, 503),
    (errors.ConfigError, 500),
]

# Every error answer: {"detail": message or FastAPI's validation error list}, sometimes with more
# fields (POST /events adds its per-item errors).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}


def status_for(exc: errors.ServiceError) -> int:
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return code
    return 500


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    """Any :class:`~core.errors.ServiceError` as ``{"detail": message}`` with its status."""
    assert isinstance(exc, errors.ServiceError)
    code = status_for(exc)
    if code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if isinstance(exc, errors.RateLimited) else None
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


def install(app: FastAPI, schemas: dict[str, type[BaseModel]]) -> None:
    """Map the error tree to HTTP, and complete the generated OpenAPI schema with what FastAPI
    cannot infer: the error answers every operation may give (``{"detail": ...}``) and the
    ``schemas`` that operations reference by hand (POST /events' body, validated item by item)."""
    app.add_exception_handler(errors.ServiceError, service_error)
    default_openapi = app.openapi

    def openapi_with_errors() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in schemas.items():
                components[name] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components["ErrorResponse"] = ERROR_SCHEMA
            error = {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    old = responses.get("422", {})
                    responses["422"] = {**error, "description": old.get("description", "Invalid input")}
                    responses.setdefault(
                        "4XX", {**error, "description": "Bad request: unauthorized, forbidden, not found, too large"}
                    )
                    responses.setdefault("503", {**error, "description": "Storage or model unavailable; retry"})
        return app.openapi_schema or default_openapi()

    app.openapi = openapi_with_errors  # type: ignore[method-assign]
