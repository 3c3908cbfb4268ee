"""``GET|PUT|DELETE /products/{id}`` and ``GET /products/{id}/image``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from core import errors
from core.images import sniff_content_type
from core.types import ProductInput
from functions.routes.deps import ApiDep, decode_base64, require_api_key
from functions.schemas import DeleteResponse, ProductIn, ProductOut

router = APIRouter(tags=["products"])
ProductId = Annotated[str, Path(max_length=256)]


@router.get("/products/{product_id}", response_model=ProductOut)
def get_product(request: Request, api: ApiDep, product_id: ProductId) -> ProductOut:
    return ProductOut.of(api.services.catalog.get(product_id), str(request.base_url))


@router.put("/products/{product_id}", response_model=ProductOut, dependencies=[Depends(require_api_key)])
def put_product(request: Request, api: ApiDep, product_id: ProductId, body: ProductIn) -> ProductOut:
    """Create or replace a product (PUT replaces: fields left out are cleared, the image too).
    The image comes as `image_base64` (stored in the bucket) or `image` (an existing key)."""
    if body.product_id is not None and body.product_id != product_id:
        raise errors.InvalidInput("product_id in the body does not match the path")
    raw: dict[str, Any] = body.model_dump(exclude={"image_base64", "product_id"}, exclude_none=True)
    product = ProductInput.from_mapping({**raw, "product_id": product_id})
    image = decode_base64(body.image_base64) if body.image_base64 else None
    return ProductOut.of(api.services.indexer.put(product, image), str(request.base_url))


@router.delete("/products/{product_id}", response_model=DeleteResponse, dependencies=[Depends(require_api_key)])
def delete_product(api: ApiDep, product_id: ProductId) -> DeleteResponse:
    api.services.catalog.delete(product_id)
    return DeleteResponse(product_id=product_id, deleted=True)


@router.get(
    "/products/{product_id}/image",
    name="product_image",
    response_class=Response,
    responses={200: {"description": "The image bytes", "content": {"image/*": {}}}},
)
def product_image(api: ApiDep, product_id: ProductId) -> Response:
    """The product's image bytes (404 if the product has none)."""
    p = api.services.catalog.get(product_id)
    if p.image is None:
        raise errors.NotFound(f"product {product_id!r} has no image")
    data = api.services.store.get_bytes(p.image, max_bytes=api.services.settings.max_image_bytes)
    return Response(data, media_type=sniff_content_type(data), headers={"Cache-Control": "public, max-age=300"})
