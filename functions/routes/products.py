"""``GET|PUT|DELETE /products/{id}`` and ``GET /products/{id}/image``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from core import errors
from core.images import sniff_content_type
from core.types import ProductInput
from functions.routes.deps import api_of, decode_base64, require_read, require_writer
from functions.schemas import DeleteResponse, ProductIn, ProductOut
from functions.security import authorize

router = APIRouter(tags=["products"])
ProductId = Annotated[str, Path(max_length=256)]


@router.get("/products/{product_id}", response_model=ProductOut, dependencies=[Depends(require_read)])
def get_product(request: Request, product_id: ProductId) -> ProductOut:
    api = api_of(request)
    return ProductOut.of(api.services.catalog.get(product_id), api.links(request))


@router.put("/products/{product_id}", response_model=ProductOut, dependencies=[Depends(require_writer)])
def put_product(request: Request, product_id: ProductId, body: ProductIn) -> ProductOut:
    """Create or replace a product (PUT replaces: fields left out are cleared, the image too).
    The image comes as `image_base64` (stored in the bucket) or `image` (an existing key)."""
    api = api_of(request)
    if body.product_id is not None and body.product_id != product_id:
        raise errors.InvalidInput("product_id in the body does not match the path")
    raw: dict[str, Any] = body.model_dump(exclude={"image_base64", "product_id"}, exclude_none=True)
    product = ProductInput.from_mapping({**raw, "product_id": product_id})
    image = decode_base64(body.image_base64) if body.image_base64 else None
    return ProductOut.of(api.services.indexer.put(product, image), api.links(request))


@router.delete("/products/{product_id}", response_model=DeleteResponse, dependencies=[Depends(require_writer)])
def delete_product(request: Request, product_id: ProductId) -> DeleteResponse:
    api_of(request).services.catalog.delete(product_id)
    return DeleteResponse(product_id=product_id, deleted=True)


@router.get(
    "/products/{product_id}/image",
    name="product_image",
    response_class=Response,
    responses={200: {"description": "The image bytes", "content": {"image/*": {}}}},
)
def product_image(
    request: Request,
    product_id: ProductId,
    exp: Annotated[int | None, Query(description="Expiry of a signed URL (epoch seconds).")] = None,
    sig: Annotated[str | None, Query(max_length=64, description="Signature of a signed URL.")] = None,
) -> Response:
    """The product's image bytes (404 if the product has none). When reads need a key, the
    signed `image_url` of an answer works without one."""
    api = api_of(request)
    if api.signer is None or not api.signer.valid(product_id, exp, sig):
        authorize(api.services.settings, request.headers.get("authorization"), "read")
    p = api.services.catalog.get(product_id)
    if p.image is None:
        raise errors.NotFound(f"product {product_id!r} has no image")
    data = api.services.store.get_bytes(p.image, max_bytes=api.services.settings.max_image_bytes)
    return Response(data, media_type=sniff_content_type(data), headers={"Cache-Control": "public, max-age=300"})
