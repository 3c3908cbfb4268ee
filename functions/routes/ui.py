"""The dashboard: ``/`` redirects to ``/ui/`` (static files mounted by the app) and its one
vendored script, served from the installed ``plotly`` wheel (no CDN)."""

import functools
import gzip
import importlib.resources
import pathlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

UI_DIR = pathlib.Path(__file__).parent.parent / "ui"
PLOTLY_PATH = "/ui/vendor/plotly.min.js"

router = APIRouter(include_in_schema=False)


@functools.cache
def plotly_js() -> tuple[bytes, bytes]:
    """plotly.min.js, plain and gzipped."""
    data = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return data, gzip.compress(data, 6)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get(PLOTLY_PATH)
def plotly(request: Request) -> Response:
    plain, packed = plotly_js()
    headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type="text/javascript", headers=headers)
    return Response(plain, media_type="text/javascript", headers=headers)
