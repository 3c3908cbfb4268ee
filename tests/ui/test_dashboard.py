"""The dashboard end to end in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; no browser download) against the dev runner with a sample catalog on its embedded S3
server. Screenshots of every page land in test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.s3server import ACCESS_KEY, SECRET_KEY
from tests.devserver import ROOT, call, free_port, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.ui]

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "ui"
# Flags for a closed network (no Google services lookups, no background traffic).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOPPER = "ui-test-shopper"
HISTORY_REASON = re.compile(
    r"^(?:Because you (?:viewed|rated) (?P<a>.+)|Often bought with (?P<b>.+)"
    r"|Similar to (?P<d>.+), which you .+)$"
)

if not Path(CHROMIUM).exists():
    pytest.skip(f"ui: no Chromium at {CHROMIUM} (test.sh installs Debian's chromium package)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Server:
    base: str
    s3_port: int
    proc: Any
    log: Path

    def api(self, path: str, body: object | None = None, method: str | None = None) -> Any:
        return call(f"{self.base}{path}", body, method)  # type: ignore[arg-type]


@dataclass
class Watch:
    """What a page did that a test should fail on: script errors, requests to other hosts."""

    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


@contextmanager
def _serve(tmp: Path, *extra: str) -> Iterator[Server]:
    port, s3_port = free_port(), free_port()
    log = tmp / "server.log"
    proc = start(tmp / "data", port, "--s3-port", str(s3_port), "--sweep-seconds", "1", *extra, log=log)
    server = Server(f"http://127.0.0.1:{port}", s3_port, proc, log)
    try:
        yield server
    finally:
        if proc.poll() is None:
            stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Dev runner with 48 sample products and one upload that has a bad line."""
    tmp = tmp_path_factory.mktemp("ui")
    with _serve(tmp, "--sample", "48") as srv:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{srv.s3_port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        good = {"product_id": "UPL1", "title": "Uploaded walnut desk lamp", "category": "Home", "price": 64.0}
        body = json.dumps(good) + "\n" + '{"product_id": "UPL2", "price": 3}\n'
        s3.put_object(Bucket="products", Key="uploads/ui-batch.jsonl", Body=body.encode())
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('shelf.user', {json.dumps(SHOPPER)})")
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    watch = Watch()
    host = urllib.parse.urlsplit(server.base).netloc
    pg.on("pageerror", lambda e: watch.errors.append(str(e)))
    pg.on(
        "request",
        lambda r: (
            watch.external.append(r.url)
            if urllib.parse.urlsplit(r.url).netloc not in (host, "") and not r.url.startswith("data:")
            else None
        ),
    )
    pg.watch = watch
    yield pg
    context.close()
    assert not watch.errors, f"script errors: {watch.errors}"
    assert not watch.external, f"requests to other hosts: {watch.external}"


def shot(page: Any, name: str) -> None:
    """Full-page screenshot once every (lazy) image on the page has loaded."""
    images_loaded(page, "#view")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def images_loaded(page: Any, scope: str) -> list[int]:
    """Scroll every image under ``scope`` into view, wait until all finished loading, and return
    their natural widths."""
    imgs = page.locator(f"{scope} img")
    for i in range(imgs.count()):
        imgs.nth(i).scroll_into_view_if_needed()
    page.wait_for_function(
        "s => [...document.querySelectorAll(s + ' img')].every(i => i.complete)", arg=scope, timeout=30_000
    )
    page.evaluate("window.scrollTo(0, 0)")
    return list(page.eval_on_selector_all(f"{scope} img", "els => els.map(e => e.naturalWidth)"))


def card_ids(page: Any, scope: str) -> list[str]:
    return list(page.eval_on_selector_all(f"{scope} .card", "els => els.map(e => e.dataset.productId)"))


def search(page: Any, query: str) -> None:
    page.fill("#q", query)
    page.click("#search-btn")
    page.wait_for_selector("#query-time")


def test_search_shows_cards_whose_images_load(server: Server, page: Any) -> None:
    page.goto(server.base + "/")
    assert page.url.endswith("/ui/")
    page.wait_for_selector("#home-recs .card")  # the landing page recommends something at once
    search(page, "blue running shoes")
    meta = page.inner_text("#query-time")
    assert re.match(r"^\d+ results? · [\d.]+ ms on the server, [\d.]+ ms in all$", meta), meta
    expected = server.api("/search", {"query": "blue running shoes", "top_k": 24})["results"]
    assert card_ids(page, "#results") == [r["product_id"] for r in expected]
    widths = images_loaded(page, "#results")
    assert len(widths) == sum(1 for r in expected if r["image_url"]) > 0
    assert all(w > 0 for w in widths), widths
    no_image = page.locator("#results .card .noimg")
    assert no_image.count() == sum(1 for r in expected if not r["image_url"])
    titles = page.eval_on_selector_all("#results .card .title", "els => els.map(e => e.textContent)")
    assert titles == [r["title"] for r in expected]
    assert page.locator("#results .card .score").first.inner_text().startswith("score ")
    shot(page, "search")


def test_filters_change_results_correctly(server: Server, page: Any) -> None:
    page.goto(server.base + "/ui/")
    search(page, "bag")
    unfiltered = card_ids(page, "#results")
    page.select_option("#category", "Bags")
    page.fill("#max-price", "100")
    page.click("#search-btn")
    page.wait_for_function("() => document.querySelector('#query-time') !== null")
    page.wait_for_selector("#results .card")
    filtered = page.eval_on_selector_all(
        "#results .card", "els => els.map(e => [e.dataset.productId, e.dataset.category, Number(e.dataset.price)])"
    )
    assert filtered and all(cat == "Bags" and price <= 100 for _, cat, price in filtered), filtered
    api = server.api("/search", {"query": "bag", "top_k": 24, "filters": {"category": "Bags", "max_price": 100}})
    assert [pid for pid, _, _ in filtered] == [r["product_id"] for r in api["results"]]
    assert [pid for pid, _, _ in filtered] != unfiltered
    shot(page, "search-filtered")

    page.fill("#min-price", "500")
    page.click("#search-btn")
    page.wait_for_selector("#search-meta .msg.error")
    assert "minimum price is above the maximum" in page.inner_text("#search-meta")
    page.fill("#max-price", "")
    page.fill("#min-price", "100000")
    page.click("#search-btn")
    page.wait_for_selector("#results .msg")
    assert "No products match" in page.inner_text("#results")


def test_search_by_photo_finds_the_product_itself_first(server: Server, page: Any, tmp_path: Path) -> None:
    with_images = [p for p in server.api("/search", {"query": "bag", "top_k": 40})["results"] if p["image_url"]]
    first, second = with_images[3], with_images[7]
    page.goto(server.base + "/ui/")
    photo = tmp_path / "query.png"
    with urllib.request.urlopen(first["image_url"]) as resp:
        photo.write_bytes(resp.read())
    page.set_input_files("#photo", str(photo))  # "click to choose"
    page.wait_for_selector("#query-time")
    assert card_ids(page, "#results")[0] == first["product_id"]
    assert page.locator("#photo-preview img").count() == 1
    shot(page, "search-photo")

    # drag and drop a second product's image onto the drop zone
    with urllib.request.urlopen(second["image_url"]) as resp:
        data = list(resp.read())
    page.evaluate(
        """([bytes]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
            const drop = new DragEvent("drop", { dataTransfer: dt, bubbles: true });
            document.querySelector("#photo-drop").dispatchEvent(drop);
        }""",
        [data],
    )
    page.wait_for_function(
        "pid => document.querySelector('#results .card')?.dataset.productId === pid", arg=second["product_id"]
    )

    # a file that claims to be an image but is not: a readable error, nothing breaks
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    page.click("#photo-clear")
    page.set_input_files("#photo", str(broken))
    page.wait_for_selector("#search-meta .msg.error")
    text = page.inner_text("#search-meta")
    assert text.startswith("Search failed:") and "image" in text.lower(), text
    shot(page, "search-bad-photo")
    # and a non-image file is refused in the browser
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    page.set_input_files("#photo", str(notes))
    page.wait_for_selector("#toast.error")
    assert "is not an image" in page.inner_text("#toast")


def test_product_view_shows_similar_items_and_records_events(server: Server, page: Any) -> None:
    page.goto(server.base + "/ui/")
    search(page, "ceramic coffee mug")
    first = page.locator("#results .card").first
    pid, title = first.get_attribute("data-product-id"), first.locator(".title").inner_text()
    first.locator(".title").click()
    page.wait_for_selector("#product-title")
    assert page.inner_text("#product-title") == title
    assert page.url.endswith(f"#/product/{pid}")
    page.wait_for_selector("#similar .card")
    similar = card_ids(page, "#similar")
    expected = server.api(f"/similar/{pid}?top_k=8")["similar_products"]
    assert similar == [s["product_id"] for s in expected] and pid not in similar
    assert all(w > 0 for w in images_loaded(page, "#similar"))
    assert page.locator("#attributes dt").count() >= 1
    page.click("#add-to-cart")
    page.wait_for_selector("#toast:not([hidden])")
    assert "add_to_cart" in page.inner_text("#toast")
    shot(page, "product")
    history = server.api(f"/users/{SHOPPER}/history")["events"]
    kinds = {e["event_type"] for e in history if e["product_id"] == pid}
    assert {"click", "view", "add_to_cart"} <= kinds, history


def test_product_page_photo_strip_shows_every_photo(server: Server, page: Any) -> None:
    product = server.api("/products/S00001")
    assert len(product["image_urls"]) == 2  # the sample gives every fourth product a close-up
    page.goto(server.base + "/ui/#/product/S00001")
    page.wait_for_selector("#photo-strip")
    photos = page.locator("#photo-strip .photo")
    assert photos.count() == 2
    assert all(w > 0 for w in images_loaded(page, "#photo-strip"))
    srcs = page.eval_on_selector_all("#photo-strip img", "els => els.map(e => e.getAttribute('src'))")
    assert [s.split("/products/", 1)[1] for s in srcs] == [u.split("/products/", 1)[1] for u in product["image_urls"]]
    hero = "document.querySelector('#hero').getAttribute('src')"
    assert page.evaluate(hero) == srcs[0] and photos.nth(0).get_attribute("aria-pressed") == "true"
    photos.nth(1).click()
    assert page.evaluate(hero) == srcs[1] and srcs[1].endswith("/products/S00001/image?index=1")
    assert (
        photos.nth(1).get_attribute("aria-pressed") == "true" and photos.nth(0).get_attribute("aria-pressed") == "false"
    )
    page.wait_for_function("() => document.querySelector('#hero').complete")
    assert page.evaluate("document.querySelector('#hero').naturalWidth") > 0
    shot(page, "product-photos")
    # A product with one photo has no strip.
    page.goto(server.base + "/ui/#/product/S00002")
    page.wait_for_selector("#product-title")
    assert page.locator("#photo-strip").count() == 0 and page.locator(".product .hero").count() == 1


def test_product_page_shows_bought_together_and_stock(server: Server, page: Any) -> None:
    baskets = [["S00040", "S00041"]] * 6 + [["S00042"]] * 6
    events = [
        {"user_id": f"ui-basket-{k}", "product_id": pid, "event_type": "purchase"}
        for k, basket in enumerate(baskets)
        for pid in basket
    ]
    server.api("/events", events)
    deadline = time.time() + 15  # the basket counts are rebuilt at most every RECS_REFRESH_SECONDS
    while not (together := server.api("/products/S00040/bought-together")["products"]) and time.time() < deadline:
        time.sleep(0.3)
    assert together and together[0]["product_id"] == "S00041"
    page.goto(server.base + "/ui/#/product/S00040")
    page.wait_for_selector("#bought-together .card")
    assert card_ids(page, "#bought-together") == [p["product_id"] for p in together]
    title = page.inner_text("#product-title")
    assert page.locator("#bought-together .card .reason").first.inner_text() == f"Often bought together with {title}"
    # An out-of-stock product is marked on its page and left out of the row.
    partner = server.api("/products/S00041")
    keep = {k: partner[k] for k in ("title", "description", "category", "price", "image", "images", "attributes")}
    server.api("/products/S00041", {**keep, "in_stock": False}, "PUT")
    try:
        page.goto(server.base + "/ui/#/product/S00041")
        page.wait_for_selector("#out-of-stock")
        assert page.inner_text("#out-of-stock") == "Out of stock"
        shot(page, "product-out-of-stock")
    finally:
        server.api("/products/S00041", keep, "PUT")


def test_rules_page_saves_rules_and_previews_them_firing(server: Server, page: Any) -> None:
    query = "ceramic coffee mug"
    order = [r["product_id"] for r in server.api("/search", {"query": query, "top_k": 12})["results"]]
    pinned = order[-1]
    page.goto(server.base + "/ui/#/rules")
    page.wait_for_selector("#rule-form")
    assert page.locator("#rules-table").count() == 0 and "no rules saved yet" in page.inner_text("#rules-version")
    try:
        page.fill("#rule-id", "ui-mugs")
        page.select_option("#rule-kind", "query")
        page.fill("#rule-value", "Ceramic Coffee Mug")
        page.fill("#rule-pin", pinned)
        page.fill("#rule-bury", order[0])
        page.click("#rule-add")
        page.wait_for_selector("#rules-table tbody tr")
        saved = server.api("/rules")
        assert [r["id"] for r in saved["rules"]] == ["ui-mugs"] and saved["rules"][0]["pin"] == [pinned]
        assert f"version {saved['version']}" in page.inner_text("#rules-version")
        assert page.inner_text("#rules-table .chip") == "active"
        # A rule that starts tomorrow is saved as scheduled and does not fire.
        page.fill("#rule-id", "ui-later")
        page.fill("#rule-value", query)
        page.fill("#rule-pin", order[1])
        page.fill("#rule-from", "2099-01-01T00:00")
        page.click("#rule-add")
        page.wait_for_function("() => document.querySelectorAll('#rules-table tbody tr').length === 2")
        assert page.locator("#rules-table .chip").nth(1).inner_text() == "scheduled"
        # The preview shows what a shopper sees: the rule fired, its pin first, its burial gone
        # to the end of the matching set (beyond this first page).
        page.fill("#preview-q", "ceramic coffee mug!")
        page.click("#preview-btn")
        page.wait_for_selector("#preview .card")
        assert page.inner_text("#preview-rules") == "Rules that fired: ui-mugs"
        shown = card_ids(page, "#preview")
        api = [r["product_id"] for r in server.api("/search", {"query": "ceramic coffee mug!", "top_k": 12})["results"]]
        assert shown == api and shown[0] == pinned and order[0] not in shown
        assert page.locator("#preview .card .reason").first.inner_text() == "pinned"
        shot(page, "rules")
        page.click("[data-delete='ui-mugs']")
        page.wait_for_function("() => document.querySelectorAll('#rules-table tbody tr').length === 1")
        assert [r["id"] for r in server.api("/rules")["rules"]] == ["ui-later"]
    finally:
        server.api("/rules", {"rules": []}, "PUT")


def test_user_view_shows_history_and_recommendations_with_true_reasons(server: Server, page: Any) -> None:
    page.goto(server.base + "/ui/")
    search(page, "leather backpack")
    page.locator("#results .card .title").first.click()
    page.wait_for_selector("#similar .card")
    page.goto(server.base + f"/ui/#/user/{SHOPPER}")
    page.wait_for_selector("#history li")
    page.wait_for_selector("#recs .card")
    history_titles = set(page.eval_on_selector_all("#history li a", "els => els.map(e => e.textContent)"))
    reasons = page.eval_on_selector_all("#recs .card .reason", "els => els.map(e => e.textContent)")
    assert len(reasons) == page.locator("#recs .card").count() > 0
    assert all(r.strip() for r in reasons)
    referenced = [next(g for g in m.groups() if g) for r in reasons if (m := HISTORY_REASON.match(r))]
    assert referenced, f"no reason refers to the history: {reasons}"
    assert set(referenced) <= history_titles, (referenced, history_titles)
    seen = set(page.eval_on_selector_all("#history li", "els => els.map(e => e.dataset.productId)"))
    assert not seen & set(card_ids(page, "#recs")), "seen items are excluded by default"
    assert page.inner_text("#recs-strategy").split(" ")[0] in {"personalized", "content"}

    liked = page.locator("#recs .card").first
    liked_id = liked.get_attribute("data-product-id")
    liked.locator("button.more").click()
    page.wait_for_selector("#more-results .card")
    assert page.locator("#more-like .chip.pos").count() == 1
    assert liked_id not in card_ids(page, "#more-results")
    disliked = page.locator("#recs .card").nth(1)
    disliked.locator("button.less").click()
    page.wait_for_selector("#more-like .chip.neg")
    page.wait_for_selector("#more-results .card")
    expected = server.api(
        "/recommendations",
        {
            "positive": [liked_id],
            "negative": [disliked.get_attribute("data-product-id")],
            "user_id": SHOPPER,
            "top_k": 8,
        },
        "POST",
    )["recommendations"]
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('#more-results .card')].map(e => e.dataset.productId))"
        " === JSON.stringify(ids)",
        arg=[r["product_id"] for r in expected],
    )
    shot(page, "user")

    # a user with no events: cold start with readable reasons and an empty-history message
    page.goto(server.base + "/ui/#/user/nobody-yet")
    page.wait_for_selector("#history .msg.empty")
    page.wait_for_selector("#recs .card")
    assert "No events yet for nobody-yet" in page.inner_text("#history")
    assert all(r for r in page.eval_on_selector_all("#recs .reason", "els => els.map(e => e.textContent)"))


def test_analytics_renders_charts_and_tables(server: Server, page: Any) -> None:
    server.api("/search", {"query": "wireless headphones"})
    with_image = next(p for p in server.api("/search", {"query": "mug"})["results"] if p["image_url"])
    with urllib.request.urlopen(with_image["image_url"]) as resp:
        assert resp.status == 200
    server.api(
        "/events",
        [{"user_id": "ana", "product_id": "S00001", "event_type": t} for t in ("view", "click", "purchase")],
        "POST",
    )
    for _ in range(30):  # the sweeper indexes the upload within a few seconds
        ups = server.api("/uploads")["uploads"]
        if ups and ups[0]["status"] != "pending":
            break
        page.wait_for_timeout(1000)
    stats = server.api("/stats")
    page.goto(server.base + "/ui/#/analytics")
    page.wait_for_selector("#chart-categories .main-svg")
    for chart in ("#chart-prices", "#chart-traffic", "#chart-events"):
        page.wait_for_selector(f"{chart} .main-svg")
    bars = page.locator("#chart-categories .point")
    assert bars.count() == len(stats["catalog"]["categories"])
    xlabels = page.eval_on_selector_all("#chart-categories .xtick text", "els => els.map(e => e.textContent)")
    assert xlabels == [c["category"] for c in stats["catalog"]["categories"]]
    assert page.locator("#chart-prices .point").count() == len(stats["catalog"]["prices"]["counts"])
    assert page.locator("#chart-events .point").count() == len(stats["events"]["by_type"])
    assert page.locator("#chart-traffic .point").count() > 0
    assert page.inner_text("#kpi-products .value") == str(stats["catalog"]["products"])
    latency = page.inner_text("#latency-table")
    assert "POST /search" in latency and "GET /products/{product_id}/image" in latency
    assert "wireless headphones" in page.inner_text("#top-queries")
    uploads = page.inner_text("#uploads-table")
    assert "uploads/ui-batch.jsonl" in uploads and "partial" in uploads
    assert "line 2" in uploads and "title" in uploads.lower(), uploads
    shot(page, "analytics")


def test_empty_catalog_and_service_down(browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    with _serve(tmp_path) as srv:
        page.goto(srv.base + "/ui/")
        page.wait_for_selector("#results .msg")
        assert "catalog is empty" in page.inner_text("#results")
        shot(page, "empty-catalog")
        page.goto(srv.base + "/ui/#/analytics")
        page.wait_for_selector("#kpi-products")
        assert page.inner_text("#kpi-products .value") == "0"
        assert "The catalog is empty" in page.inner_text("#chart-categories")
        assert "No uploads yet" in page.inner_text("#panel-uploads")
        page.goto(srv.base + "/ui/#/search")
        page.wait_for_selector("#q")
        stop(srv.proc)  # the service goes away under the open page
        page.fill("#q", "anything")
        page.click("#search-btn")
        page.wait_for_selector("#banner:not([hidden])")
        assert "Cannot reach the service" in page.inner_text("#banner")
        assert "Search failed" in page.inner_text("#search-meta")
        shot(page, "service-down")
    context.close()


def test_facets_pager_sort_and_autocomplete(server: Server, page: Any) -> None:
    """Facet counts beside the results, pages of one ranking, a price sort and search-box
    suggestions, each as the API answers them."""
    page.goto(server.base + "/ui/")
    search(page, "striped")
    ask = {"query": "striped", "top_k": 24, "facets": ["category", "price"]}
    first = server.api("/search", ask)
    assert first["total_matches"] > 24  # enough for a second page
    assert page.inner_text("#query-time").startswith(f"{first['total_matches']} results")
    shown = page.eval_on_selector_all("#facet-category button", "els => els.map(e => e.textContent)")
    assert shown == [f"{f['value']} ({f['count']})" for f in first["facets"]["category"]]
    assert page.locator("#facet-price button").count() == len(first["facets"]["price"])
    assert page.inner_text("#page-label").startswith("page 1 of ")
    page.click("#next-page")
    page.wait_for_function("() => document.querySelector('#page-label').textContent.startsWith('page 2')")
    second = server.api("/search", {**ask, "offset": 24})
    assert card_ids(page, "#results") == [r["product_id"] for r in second["results"]]
    page.select_option("#sort", "price_asc")  # back to page 1, cheapest first
    page.wait_for_function("() => document.querySelector('#page-label').textContent.startsWith('page 1')")
    cheapest = server.api("/search", {**ask, "sort": "price_asc"})
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#results .card')].map(e => e.dataset.productId).join() === ids.join()",
        arg=[r["product_id"] for r in cheapest["results"]],
    )
    prices = page.eval_on_selector_all("#results .card", "els => els.map(e => Number(e.dataset.price))")
    assert prices == sorted(prices)
    # A facet narrows the search to its category.
    target = first["facets"]["category"][0]
    page.click(f"#facet-category button[data-value='{target['value']}']")
    page.wait_for_function("v => document.querySelector('#category').value === v", arg=target["value"])
    page.wait_for_function(
        "n => (document.querySelector('#query-time')?.textContent || '').startsWith(n + ' result')",
        arg=str(target["count"]),
    )
    # Suggestions while typing; picking a product opens its page.
    page.fill("#q", "")
    page.type("#q", "stri", delay=30)
    page.wait_for_selector("#suggest li.product")
    expected = server.api("/suggest?q=stri&limit=8", method="GET")["suggestions"]
    texts = page.eval_on_selector_all("#suggest li", "els => els.map(e => e.lastChild.textContent)")
    assert texts == [s["text"] for s in expected]
    pid = next(s["product_id"] for s in expected if s["kind"] == "product")
    page.locator("#suggest li.product").first.dispatch_event("mousedown")
    page.wait_for_function("pid => location.hash === '#/product/' + pid", arg=pid)
    shot(page, "search-facets")
