"""``GET|PUT|DELETE /products/{id}`` and ``GET /products/{id}/image``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from core import errors
from core.images import sniff_content_type
from core.types import MAX_IMAGES, ProductInput
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
    """Create or replace a product (PUT replaces: fields left out are cleared, the photos too).
    Photos come as bytes (`image_base64`, `images_base64`: stored in the bucket) or as keys of
    existing objects (`image`, `images`), the first first; at most 10."""
    api = api_of(request)
    if body.product_id is not None and body.product_id != product_id:
        raise errors.InvalidInput("product_id in the body does not match the path")
    raw: dict[str, Any] = body.model_dump(exclude={"image_base64", "images_base64", "product_id"}, exclude_none=True)
    product = ProductInput.from_mapping({**raw, "product_id": product_id})
    encoded = body.photo_data()
    names = ["image_base64"] * bool(body.image_base64) + [
        f"images_base64[{i}]" for i in range(len(body.images_base64 or []))
    ]
    if len(encoded) > MAX_IMAGES:
        raise errors.InvalidInput(f"{len(encoded)} photos; a product has at most {MAX_IMAGES}")
    photos = [decode_base64(data, name) for data, name in zip(encoded, names, strict=True)]
    return ProductOut.of(api.services.indexer.put(product, photos), api.links(request))


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
    index: Annotated[int, Query(ge=0, lt=MAX_IMAGES, description="Which photo (0: the first).")] = 0,
    exp: Annotated[int | None, Query(description="Expiry of a signed URL (epoch seconds).")] = None,
    sig: Annotated[str | None, Query(max_length=64, description="Signature of a signed URL.")] = None,
) -> Response:
    """The bytes of the product's photo number `index` (404 if it has no such photo). When
    reads need a key, the signed `image_url` of an answer works without one."""
    api = api_of(request)
    if api.signer is None or not api.signer.valid(product_id, exp, sig):
        authorize(api.services.settings, request.headers.get("authorization"), "read")
    p = api.services.catalog.get(product_id)
    if index >= len(p.images):
        have = f"{len(p.images)} photo(s), so no index {index}" if p.images else "no image"
        raise errors.NotFound(f"product {product_id!r} has {have}")
    data = api.services.store.get_bytes(p.images[index], max_bytes=api.services.settings.max_image_bytes)
    return Response(data, media_type=sniff_content_type(data), headers={"Cache-Control": "public, max-age=300"})
