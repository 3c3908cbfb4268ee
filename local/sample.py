"""Deterministic synthetic catalog: product pictures whose colour, shape and pattern match
attribute-rich titles and descriptions, across several categories and price ranges."""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "blue": (40, 80, 210),
    "green": (40, 160, 70),
    "yellow": (235, 205, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "orange": (240, 130, 30),
    "purple": (130, 60, 170),
    "pink": (240, 140, 180),
    "grey": (128, 128, 128),
    "brown": (120, 75, 40),
    "teal": (30, 150, 150),
}
PATTERNS = ("solid", "striped", "dotted", "checked")
MATERIALS = {
    "Footwear": ("mesh", "leather", "canvas", "suede"),
    "Tops": ("cotton", "linen", "merino wool", "polyester"),
    "Bags": ("leather", "nylon", "canvas", "vegan leather"),
    "Home": ("ceramic", "stoneware", "porcelain", "enamel"),
    "Accessories": ("wool", "cotton", "straw", "felt"),
    "Electronics": ("aluminium", "plastic", "matte", "glossy"),
}
ITEMS = {
    "Footwear": ("running shoes", "sneakers", "hiking boots", "loafers"),
    "Tops": ("t-shirt", "hoodie", "polo shirt", "sweater"),
    "Bags": ("backpack", "tote bag", "messenger bag", "handbag"),
    "Home": ("coffee mug", "vase", "teapot", "bowl"),
    "Accessories": ("beanie", "baseball cap", "sun hat", "scarf"),
    "Electronics": ("wireless headphones", "bluetooth speaker", "smartwatch", "phone case"),
}
PRICE_RANGES = {
    "Footwear": (40, 220),
    "Tops": (12, 90),
    "Bags": (25, 300),
    "Home": (8, 80),
    "Accessories": (10, 60),
    "Electronics": (20, 400),
}
BRANDS = ("Northwind", "Acme", "Lumen", "Kestrel", "Orbit", "Pioneer", "Sable", "Tandem")
USES = {
    "Footwear": "for daily runs and long walks",
    "Tops": "for everyday casual wear",
    "Bags": "for commuting and weekend trips",
    "Home": "for the kitchen and dining table",
    "Accessories": "to finish any outfit",
    "Electronics": "for music and calls on the go",
}


@dataclass(frozen=True)
class SampleProduct:
    record: dict[str, Any]
    image: bytes
    image_name: str
    more_photos: tuple[tuple[str, bytes], ...] = ()  # (name, bytes) of the photos after the first


def _silhouette(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], shape: str) -> None:
    """Draw the category's silhouette (value 255) inside ``box`` on a mask."""
    colour = 255
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "Footwear":
        draw.polygon(
            [
                (x0, y1),
                (x0, y0 + h * 0.45),
                (x0 + w * 0.45, y0 + h * 0.3),
                (x0 + w * 0.6, y0 + h * 0.55),
                (x1, y0 + h * 0.7),
                (x1, y1),
            ],
            fill=colour,
        )
    elif shape == "Tops":
        draw.polygon(
            [
                (x0 + w * 0.3, y0),
                (x0, y0 + h * 0.25),
                (x0 + w * 0.15, y0 + h * 0.45),
                (x0 + w * 0.25, y0 + h * 0.35),
                (x0 + w * 0.25, y1),
                (x1 - w * 0.25, y1),
                (x1 - w * 0.25, y0 + h * 0.35),
                (x1 - w * 0.15, y0 + h * 0.45),
                (x1, y0 + h * 0.25),
                (x1 - w * 0.3, y0),
            ],
            fill=colour,
        )
    elif shape == "Bags":
        draw.rectangle([x0, y0 + h * 0.3, x1, y1], fill=colour)
        draw.arc([x0 + w * 0.25, y0, x1 - w * 0.25, y0 + h * 0.6], 180, 360, fill=colour, width=max(2, w // 14))
    elif shape == "Home":
        draw.rectangle([x0 + w * 0.15, y0 + h * 0.15, x1 - w * 0.3, y1], fill=colour)
        draw.arc([x1 - w * 0.45, y0 + h * 0.35, x1, y0 + h * 0.75], 270, 90, fill=colour, width=max(2, w // 14))
    elif shape == "Accessories":
        draw.pieslice([x0 + w * 0.1, y0 + h * 0.1, x1 - w * 0.1, y1 + h * 0.3], 180, 360, fill=colour)
        draw.rectangle([x0, y0 + h * 0.7, x1, y0 + h * 0.8], fill=colour)
    else:  # Electronics
        draw.ellipse([x0 + w * 0.05, y0 + h * 0.4, x0 + w * 0.4, y1], fill=colour)
        draw.ellipse([x1 - w * 0.4, y0 + h * 0.4, x1 - w * 0.05, y1], fill=colour)
        draw.arc([x0 + w * 0.15, y0, x1 - w * 0.15, y1 - h * 0.2], 180, 360, fill=colour, width=max(2, w // 12))


def render(category: str, colour: str, pattern: str, size: int = 224, seed: int = 0) -> Image.Image:
    """A product photo stand-in: the category's silhouette, in the colour, with the pattern."""
    rng = random.Random(seed)
    bg = (250, 250, 248) if colour != "white" else (70, 80, 95)
    img = Image.new("RGB", (size, size), bg)
    shape = Image.new("L", (size, size), 0)
    m = size // 8
    jitter = rng.randint(-m // 3, m // 3)
    box = (m + jitter, m + jitter, size - m + jitter, size - m + jitter)
    _silhouette(ImageDraw.Draw(shape), box, category)
    rgb = COLOURS[colour]
    layer = Image.new("RGB", (size, size), rgb)
    if pattern != "solid":
        r, g, b = (255 - c if sum(rgb) < 380 else c // 3 for c in rgb)
        contrast = (r, g, b)
        d = ImageDraw.Draw(layer)
        step = size // 12
        if pattern == "striped":
            for y in range(0, size, step * 2):
                d.rectangle([0, y, size, y + step - 1], fill=contrast)
        elif pattern == "dotted":
            for y in range(step // 2, size, step * 2):
                for x in range(step // 2, size, step * 2):
                    d.ellipse([x, y, x + step, y + step], fill=contrast)
        elif pattern == "checked":
            for y in range(0, size, step):
                for x in range(0, size, step):
                    if (x // step + y // step) % 2:
                        d.rectangle([x, y, x + step - 1, y + step - 1], fill=contrast)
    img.paste(layer, (0, 0), shape)
    return img


def detail_view(photo: Image.Image) -> Image.Image:
    """A second photo of the same product: a close-up of its middle (the material and pattern)."""
    w, h = photo.size
    return photo.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((w, h))


def generate(
    num_products: int,
    seed: int = 42,
    *,
    image_size: int = 224,
    text_only_every: int = 0,
    detail_photo_every: int = 0,
) -> list[SampleProduct]:
    """``num_products`` products ``S00001``..., the same for the same seed.

    ``text_only_every=n`` leaves every n-th product without an image (text-only products);
    ``detail_photo_every=n`` gives every n-th product (from the first) a second photo, a close-up.
    """
    rng = random.Random(seed)
    cats = sorted(ITEMS)
    out: list[SampleProduct] = []
    for i in range(1, num_products + 1):
        cat = cats[(i - 1) % len(cats)] if i <= len(cats) else rng.choice(cats)
        colour = rng.choice(sorted(COLOURS))
        pattern = rng.choice(PATTERNS)
        material = rng.choice(MATERIALS[cat])
        item = rng.choice(ITEMS[cat])
        brand = rng.choice(BRANDS)
        lo, hi = PRICE_RANGES[cat]
        price = round(math.exp(rng.uniform(math.log(lo), math.log(hi))) - 0.01, 2)
        pattern_word = "" if pattern == "solid" else f"{pattern} "
        title = f"{brand} {colour} {pattern_word}{material} {item}"
        description = (
            f"A {colour} {pattern_word}{item} made of {material}, {USES[cat]}. "
            f"{'Plain' if pattern == 'solid' else pattern.capitalize()} design by {brand}."
        )
        pid = f"S{i:05d}"
        record: dict[str, Any] = {
            "product_id": pid,
            "title": title,
            "description": description,
            "category": cat,
            "price": price,
            "brand": brand,
            "color": colour,
            "pattern": pattern,
            "material": material,
        }
        image = b""
        name = ""
        more: tuple[tuple[str, bytes], ...] = ()
        if not (text_only_every and i % text_only_every == 0):
            photo = render(cat, colour, pattern, image_size, seed=seed * 100_003 + i)
            image = _jpeg(photo)
            name = f"images/{pid}.jpg"
            record["image"] = name
            if detail_photo_every and i % detail_photo_every == 1 % detail_photo_every:
                more = ((f"images/{pid}-detail.jpg", _jpeg(detail_view(photo))),)
                record["images"] = [n for n, _ in more]
        out.append(SampleProduct(record, image, name, more))
    return out


def _jpeg(photo: Image.Image) -> bytes:
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_folder(products: list[SampleProduct], folder: Path) -> Path:
    """Write ``products.jsonl`` + ``images/`` under ``folder``; returns the JSONL path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for p in products:
        if p.image:
            (folder / p.image_name).write_bytes(p.image)
        for name, data in p.more_photos:
            (folder / name).write_bytes(data)
    path = folder / "products.jsonl"
    path.write_text("".join(json.dumps(p.record) + "\n" for p in products))
    return path
