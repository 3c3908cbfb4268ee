// ShelfSearch dashboard: a storefront-style search page, product and shopper views, and
// analytics. Plain ES module served by the HTTP app itself (same origin, no build step, no CDN);
// charts use plotly.min.js from the project's own `plotly` dependency.

const $ = (sel, root = document) => root.querySelector(sel);
const view = () => $("#view");

// ---------- small DOM helper (text is always set as text: product data is never parsed as HTML)
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const money = (p) => (p === null || p === undefined ? "—" : `$${Number(p).toFixed(2)}`);
const ms = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(v < 10 ? 1 : 0)} ms`);

function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// ---------- state kept in the browser
const store = {
  get user() {
    let u = localStorage.getItem("shelf.user");
    if (!u) {
      u = `shopper-${Math.random().toString(36).slice(2, 7)}`;
      localStorage.setItem("shelf.user", u);
    }
    return u;
  },
  set user(v) {
    localStorage.setItem("shelf.user", v);
  },
  get apiKey() {
    return sessionStorage.getItem("shelf.apiKey") || "";
  },
  set apiKey(v) {
    if (v) sessionStorage.setItem("shelf.apiKey", v);
    else sessionStorage.removeItem("shelf.apiKey");
  },
};

// ---------- API access with readable errors
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail))
    return detail
      .map((d) => {
        const where = (d.loc || []).filter((x) => x !== "body").join(".");
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  return JSON.stringify(detail);
}

// The key (when set) goes with every request: writes and shopper data need API_KEY, and reads
// need READ_API_KEY or API_KEY on a service that sets READ_API_KEY.
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (store.apiKey) headers.Authorization = `Bearer ${store.apiKey}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    showBanner(`Cannot reach the service at ${location.origin} (${err.message}). Is it still running?`);
    throw new ApiError(0, "the service is unreachable");
  }
  let data = null;
  const text = await resp.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!resp.ok) {
    let detail = data && data.detail !== undefined ? detailText(data.detail) : `HTTP ${resp.status}`;
    if (resp.status === 401 || resp.status === 403) detail += ' (set the key with the "API key" button)';
    if (resp.status >= 500) showBanner(`The service failed (${resp.status}): ${detail}`);
    throw new ApiError(resp.status, detail);
  }
  hideBanner();
  return data;
}

function showBanner(msg) {
  const b = $("#banner");
  b.textContent = msg;
  b.hidden = false;
}
function hideBanner() {
  $("#banner").hidden = true;
}

let toastTimer = null;
function toast(msg, kind = "info") {
  const t = $("#toast");
  t.textContent = msg;
  t.className = `toast ${kind}`;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 4000);
}

const message = (text, kind = "empty") => h("div", { class: `msg ${kind}` }, text);

// ---------- events: what the shopper does in this UI feeds the recommender
async function sendEvent(productId, eventType, value) {
  const body = { user_id: store.user, product_id: productId, event_type: eventType };
  if (value !== undefined) body.value = value;
  try {
    await api("/events", { method: "POST", body });
    return true;
  } catch (err) {
    if (err.status === 401 || err.status === 403)
      toast(`Events need the API key: ${err.message}`, "error");
    else if (err.status) toast(`Event not recorded: ${err.message}`, "error");
    return false;
  }
}

// ---------- catalog facts shared by views (categories for the filter, emptiness)
let statsCache = null;
async function stats(force = false) {
  if (!statsCache || force) statsCache = await api("/stats");
  return statsCache;
}

// ---------- product cards
function productImage(p, cls = "thumb") {
  if (!p.image_url) return h("div", { class: `${cls} noimg`, text: "no image" });
  const img = h("img", { class: cls, src: p.image_url, alt: p.title, loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(h("div", { class: `${cls} noimg`, text: "image failed to load" })));
  return img;
}

// The product page's photos: the first large, and when there are several, a strip of all of
// them below it; choosing one shows it large.
function gallery(p) {
  const urls = p.image_urls || [];
  const hero = productImage(p, "hero");
  if (urls.length < 2) return hero;
  hero.id = "hero";
  const strip = h("div", { class: "photo-strip", id: "photo-strip", role: "group", "aria-label": `${urls.length} photos` });
  const choose = (chosen, url) => {
    hero.src = url;
    for (const b of strip.children) {
      b.classList.toggle("selected", b === chosen);
      b.setAttribute("aria-pressed", String(b === chosen));
    }
  };
  urls.forEach((url, i) => {
    const b = h(
      "button",
      { type: "button", class: i === 0 ? "photo selected" : "photo", "aria-pressed": String(i === 0), dataset: { index: String(i) } },
      h("img", { src: url, alt: `${p.title}, photo ${i + 1} of ${urls.length}`, loading: "lazy" }),
    );
    b.addEventListener("click", () => choose(b, url));
    strip.append(b);
  });
  return h("div", { class: "gallery" }, hero, strip);
}

function card(p, { score, scoreLabel = "score", reason, actions } = {}) {
  const open = async (ev) => {
    ev.preventDefault();
    sendEvent(p.product_id, "click"); // fire and forget: navigation does not wait for it
    location.hash = `#/product/${encodeURIComponent(p.product_id)}`;
  };
  return h(
    "article",
    { class: "card", dataset: { productId: p.product_id, category: p.category ?? "", price: p.price ?? "" } },
    h("a", { href: `#/product/${encodeURIComponent(p.product_id)}`, onclick: open, class: "card-link" }, productImage(p)),
    h(
      "div",
      { class: "card-body" },
      h("a", { href: `#/product/${encodeURIComponent(p.product_id)}`, onclick: open, class: "title", text: p.title }),
      h(
        "div",
        { class: "meta" },
        h("span", { class: "price", text: money(p.price) }),
        p.category ? h("span", { class: "chip category", text: p.category }) : null,
        p.in_stock === false ? h("span", { class: "chip out", text: "Out of stock" }) : null,
      ),
      score !== undefined ? h("div", { class: "score", text: `${scoreLabel} ${Number(score).toFixed(3)}` }) : null,
      reason ? h("div", { class: "reason", text: reason }) : null,
      actions || null,
    ),
  );
}

const grid = (items, opts) => h("div", { class: "grid" }, items.map((p) => card(p, opts ? opts(p) : {})));

// ---------- Search page
const searchState = { query: "", category: "", min: "", max: "", imageWeight: null, photo: null, photoName: "", sort: "relevance", page: 0 };
const PAGE_SIZE = 24;
const MAX_OFFSET = 1000;

async function renderSearch() {
  const live = liveToken();
  const [st, health] = await Promise.all([stats().catch(() => null), api("/health").catch(() => null)]);
  if (!live()) return;
  const defaultImageWeight = health && health.clip_mode && health.clip_mode.startsWith("random") ? 0 : 70;
  if (searchState.imageWeight === null) searchState.imageWeight = defaultImageWeight;

  const cats = st ? st.catalog.categories.map((c) => c.category) : [];
  const q = h("input", {
    id: "q",
    type: "search",
    placeholder: "Search products, e.g. blue running shoes",
    value: searchState.query,
    autocomplete: "off",
    maxlength: "1000",
  });
  const category = h(
    "select",
    { id: "category", "aria-label": "Category" },
    h("option", { value: "", text: "All categories" }),
    cats.map((c) => h("option", { value: c, text: c, selected: c === searchState.category })),
  );
  const sort = h(
    "select",
    { id: "sort", "aria-label": "Sort" },
    [
      ["relevance", "Best match"],
      ["price_asc", "Price: low to high"],
      ["price_desc", "Price: high to low"],
      ["newest", "Newest first"],
    ].map(([v, t]) => h("option", { value: v, text: t, selected: v === searchState.sort })),
  );
  sort.addEventListener("change", () => ((searchState.page = 0), runSearch()));
  category.addEventListener("change", () => (searchState.page = 0));
  // Autocomplete: suggestions for what is typed (GET /suggest), a short pause after each key.
  const suggestBox = h("ul", { id: "suggest", class: "suggest", role: "listbox", hidden: true });
  let suggestTimer = null;
  let suggestSeq = 0;
  const hideSuggest = () => ((suggestBox.hidden = true), suggestBox.replaceChildren());
  q.addEventListener("input", () => {
    clearTimeout(suggestTimer);
    const typed = q.value;
    if (!typed.trim()) return hideSuggest();
    suggestTimer = setTimeout(async () => {
      const seq = ++suggestSeq;
      let data;
      try {
        data = await api(`/suggest?q=${encodeURIComponent(typed)}&limit=8`);
      } catch {
        return hideSuggest();
      }
      if (seq !== suggestSeq || q.value !== typed) return;
      suggestBox.replaceChildren(
        ...data.suggestions.map((s) =>
          h(
            "li",
            {
              role: "option",
              class: `suggestion ${s.kind}`,
              onmousedown: (ev) => {
                ev.preventDefault();
                hideSuggest();
                if (s.kind === "product") {
                  location.hash = `#/product/${encodeURIComponent(s.product_id)}`;
                } else if (s.kind === "category") {
                  category.value = s.text;
                  searchState.page = 0;
                  runSearch();
                } else {
                  q.value = s.text;
                  searchState.page = 0;
                  runSearch();
                }
              },
            },
            h("span", { class: "kind", text: s.kind }),
            h("span", { text: s.text }),
          ),
        ),
      );
      suggestBox.hidden = !data.suggestions.length;
    }, 120);
  });
  q.addEventListener("blur", () => setTimeout(hideSuggest, 100));
  q.addEventListener("keydown", (ev) => ev.key === "Escape" && hideSuggest());
  const minPrice = h("input", { id: "min-price", type: "number", min: "0", step: "any", placeholder: "min $", value: searchState.min });
  const maxPrice = h("input", { id: "max-price", type: "number", min: "0", step: "any", placeholder: "max $", value: searchState.max });
  const weight = h("input", { id: "image-weight", type: "range", min: "0", max: "100", step: "5", value: searchState.imageWeight });
  const weightLabel = h("span", { id: "weight-label" });
  const showWeight = () => {
    const w = Number(weight.value);
    weightLabel.textContent = `text ${100 - w}% · image ${w}%`;
  };
  weight.addEventListener("input", showWeight);
  showWeight();

  const fileInput = h("input", { id: "photo", type: "file", accept: "image/*", hidden: true });
  const preview = h("div", { id: "photo-preview", class: "photo-preview" });
  const drop = h(
    "div",
    { id: "photo-drop", class: "drop", tabindex: "0", role: "button", title: "Search by photo" },
    h("span", { text: "Drop a photo here or click to choose one" }),
    preview,
  );
  const setPhoto = async (file) => {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      toast(`${file.name} is not an image (${file.type}).`, "error");
      return;
    }
    const dataUrl = await new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
    searchState.photo = dataUrl;
    searchState.photoName = file.name;
    showPhoto();
    runSearch();
  };
  const showPhoto = () => {
    preview.replaceChildren();
    if (!searchState.photo) return;
    const img = h("img", { src: searchState.photo, alt: "search photo" });
    img.addEventListener("error", () => img.replaceWith(h("span", { class: "chip neg", text: "cannot preview this file" })));
    preview.append(
      img,
      h("span", { text: searchState.photoName }),
      h("button", {
        type: "button",
        class: "ghost",
        id: "photo-clear",
        text: "✕ remove photo",
        onclick: (ev) => {
          ev.stopPropagation();
          searchState.photo = null;
          fileInput.value = "";
          showPhoto();
        },
      }),
    );
  };
  showPhoto();
  drop.addEventListener("click", () => fileInput.click());
  drop.addEventListener("keydown", (ev) => (ev.key === "Enter" || ev.key === " ") && fileInput.click());
  fileInput.addEventListener("change", () => setPhoto(fileInput.files[0]));
  for (const name of ["dragenter", "dragover"])
    drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    setPhoto(ev.dataTransfer.files[0]);
  });

  const meta = h("div", { id: "search-meta", class: "search-meta" });
  const facets = h("aside", { id: "facets", class: "facets" });
  const pager = h("nav", { id: "pager", class: "pager" });
  const results = h("section", { id: "results" });
  const form = h(
    "form",
    { id: "search-form", class: "search-form", onsubmit: (ev) => (ev.preventDefault(), (searchState.page = 0), runSearch()) },
    h("div", { class: "row q-row" }, h("div", { class: "q-wrap" }, q, suggestBox), h("button", { id: "search-btn", type: "submit", text: "Search" })),
    h(
      "div",
      { class: "row filters" },
      category,
      sort,
      h("label", { class: "price-range" }, "Price ", minPrice, " – ", maxPrice),
      h("label", { class: "weights" }, "Ranking ", weight, weightLabel),
    ),
    drop,
    fileInput,
  );
  view().replaceChildren(form, meta, h("div", { class: "search-body" }, facets, h("div", {}, results, pager)));

  async function runSearch() {
    searchState.query = q.value.trim();
    searchState.category = category.value;
    searchState.min = minPrice.value;
    searchState.max = maxPrice.value;
    searchState.imageWeight = Number(weight.value);
    if (!searchState.query && !searchState.photo) {
      meta.replaceChildren(message("Type a query or add a photo to search.", "hint"));
      return;
    }
    const filters = {};
    if (searchState.category) filters.category = searchState.category;
    if (searchState.min !== "") filters.min_price = Number(searchState.min);
    if (searchState.max !== "") filters.max_price = Number(searchState.max);
    if (filters.min_price !== undefined && filters.max_price !== undefined && filters.min_price > filters.max_price) {
      meta.replaceChildren(message("The minimum price is above the maximum price.", "error"));
      return;
    }
    hideSuggest();
    const body = { top_k: PAGE_SIZE, filters, offset: Math.min(searchState.page * PAGE_SIZE, MAX_OFFSET), sort: sort.value };
    searchState.sort = sort.value;
    if (searchState.query) body.facets = ["category", "price"];
    if (searchState.query) body.query = searchState.query;
    if (searchState.photo) body.image_base64 = searchState.photo;
    if (searchState.query) body.weights = { image: searchState.imageWeight / 100, text: 1 - searchState.imageWeight / 100 };
    meta.replaceChildren(message("Searching…", "hint"));
    const t0 = performance.now();
    let data;
    try {
      data = await api("/search", { method: "POST", body });
    } catch (err) {
      meta.replaceChildren(message(`Search failed: ${err.message}`, "error"));
      results.replaceChildren();
      return;
    }
    const total = performance.now() - t0;
    const count = data.total_matches ?? data.results.length;
    meta.replaceChildren(
      h(
        "span",
        { id: "query-time" },
        `${count} result${count === 1 ? "" : "s"} · ${ms(data.query_time_ms)} on the server, ${ms(total)} in all`,
      ),
    );
    showFacets(data.facets || {});
    showPager(count, data.results.length);
    if (!data.results.length) {
      const catalogEmpty = statsCache && statsCache.catalog.products === 0;
      results.replaceChildren(
        message(
          catalogEmpty
            ? "The catalog is empty: drop product files under uploads/ in the bucket or PUT /products (see the README)."
            : "No products match. Try other words, a wider price range or all categories.",
        ),
      );
      return;
    }
    results.replaceChildren(grid(data.results, (p) => ({ score: p.score })));
  }

  function showFacets(found) {
    const group = (title, id, items, label, pick, on = () => false) =>
      items && items.length
        ? [
            h("h3", { text: title }),
            h(
              "ul",
              { id },
              items.map((f) =>
                h(
                  "li",
                  {},
                  h("button", {
                    type: "button",
                    class: `ghost facet${on(f) ? " on" : ""}`,
                    "data-value": f.value,
                    text: label(f),
                    onclick: () => ((searchState.page = 0), pick(f), runSearch()),
                  }),
                ),
              ),
            ),
          ]
        : [];
    facets.replaceChildren(
      ...group(
        "Category",
        "facet-category",
        found.category,
        (f) => `${f.value} (${f.count})`,
        (f) => (category.value = category.value === f.value ? "" : f.value),
        (f) => category.value === f.value,
      ),
      ...group(
        "Price",
        "facet-price",
        found.price,
        (b) => `$${b.min} – $${b.max} (${b.count})`,
        (b) => ((minPrice.value = String(b.min)), (maxPrice.value = String(b.max))),
      ),
    );
  }

  function showPager(count, shown) {
    const pages = Math.max(1, Math.ceil(Math.min(count, MAX_OFFSET + PAGE_SIZE) / PAGE_SIZE));
    const at = searchState.page;
    const go = (n) => () => ((searchState.page = n), runSearch(), window.scrollTo(0, 0));
    pager.replaceChildren(
      h("button", { type: "button", class: "ghost", id: "prev-page", text: "← Previous", disabled: at === 0, onclick: go(at - 1) }),
      h("span", { id: "page-label", text: `page ${at + 1} of ${pages}` }),
      h("button", {
        type: "button",
        class: "ghost",
        id: "next-page",
        text: "Next →",
        disabled: at + 1 >= pages || shown < PAGE_SIZE,
        onclick: go(at + 1),
      }),
    );
  }

  if (st && st.catalog.products === 0) {
    results.replaceChildren(
      message("The catalog is empty: drop product files under uploads/ in the bucket or PUT /products (see the README)."),
    );
  } else if (searchState.query || searchState.photo) {
    runSearch();
  } else {
    const home = h("div", { id: "home-recs" }, message("Loading…", "hint"));
    results.replaceChildren(h("h2", { text: "Recommended for you" }), home);
    try {
      const recs = await api(`/recommendations/${encodeURIComponent(store.user)}?top_k=8`);
      home.replaceChildren(
        recs.recommendations.length ? grid(recs.recommendations, (p) => ({ reason: p.reason })) : message("Nothing to recommend yet."),
      );
    } catch (err) {
      home.replaceChildren(message(`Recommendations unavailable: ${err.message}`, "error"));
    }
  }
  q.focus();
}

// ---------- Product page
async function renderProduct(productId) {
  const live = liveToken();
  view().replaceChildren(message("Loading product…", "hint"));
  let p;
  try {
    p = await api(`/products/${encodeURIComponent(productId)}`);
    if (!live()) return;
  } catch (err) {
    if (!live()) return;
    view().replaceChildren(
      message(err.status === 404 ? `No product with id “${productId}”.` : `Could not load the product: ${err.message}`, "error"),
      h("a", { href: "#/search", text: "← back to search" }),
    );
    return;
  }
  sendEvent(p.product_id, "view");
  const attrs = Object.entries(p.attributes || {});
  const rating = h(
    "select",
    { id: "rating", "aria-label": "Rate this product" },
    h("option", { value: "", text: "Rate…" }),
    [5, 4, 3, 2, 1].map((r) => h("option", { value: String(r), text: "★".repeat(r) + "☆".repeat(5 - r) })),
  );
  rating.addEventListener("change", async () => {
    if (rating.value && (await sendEvent(p.product_id, "rating", Number(rating.value))))
      toast(`Rated ${rating.value}/5 as ${store.user}.`);
  });
  const act = (type, label) =>
    h("button", {
      type: "button",
      id: type === "add_to_cart" ? "add-to-cart" : type,
      text: label,
      onclick: async () => {
        if (await sendEvent(p.product_id, type)) toast(`${label}: recorded as “${type}” for ${store.user}.`);
      },
    });
  const similar = h("section", { id: "similar" }, message("Loading similar products…", "hint"));
  const together = h("section", { id: "bought-together" }, message("Loading…", "hint"));
  view().replaceChildren(
    h("a", { href: "#/search", class: "back", text: "← back to search" }),
    h(
      "div",
      { class: "product", id: "product", dataset: { productId: p.product_id } },
      gallery(p),
      h(
        "div",
        { class: "details" },
        h("h1", { id: "product-title", text: p.title }),
        h(
          "div",
          { class: "meta" },
          h("span", { class: "price big", text: money(p.price) }),
          p.category ? h("span", { class: "chip category", text: p.category }) : null,
          p.in_stock === false ? h("span", { class: "chip out", id: "out-of-stock", text: "Out of stock" }) : null,
        ),
        p.description ? h("p", { class: "description", text: p.description }) : null,
        attrs.length
          ? h(
              "dl",
              { class: "attributes", id: "attributes" },
              attrs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })]),
            )
          : null,
        h("div", { class: "actions" }, act("add_to_cart", "Add to cart"), act("purchase", "Buy now"), rating),
        h("div", { class: "small", text: `id ${p.product_id} · updated ${ago(p.updated_at)}` }),
      ),
    ),
    h("h2", { text: "Bought together" }),
    together,
    h("h2", { text: "Similar products" }),
    similar,
  );
  api(`/products/${encodeURIComponent(p.product_id)}/bought-together?top_k=6`)
    .then((data) => {
      if (!live()) return;
      together.replaceChildren(
        data.products.length
          ? grid(data.products, (r) => ({ reason: r.reason }))
          : message("Not bought together with anything yet: baskets of add-to-carts and purchases fill this in."),
      );
    })
    .catch((err) => live() && together.replaceChildren(message(`Bought together unavailable: ${err.message}`, "error")));
  try {
    const data = await api(`/similar/${encodeURIComponent(p.product_id)}?top_k=8`);
    similar.replaceChildren(
      data.similar_products.length
        ? grid(data.similar_products, (s) => ({ score: s.similarity, scoreLabel: "similarity" }))
        : message("No other products to compare with yet."),
    );
  } catch (err) {
    similar.replaceChildren(message(`Similar products unavailable: ${err.message}`, "error"));
  }
}

// ---------- Shopper page: history, recommendations with reasons, more/less like this
const feedback = { positive: [], negative: [], titles: {} };

async function renderUser(userId) {
  userId = userId || store.user;
  const live = liveToken();
  view().replaceChildren(message("Loading…", "hint"));
  const st = await stats(true).catch(() => null);
  if (!live()) return;
  const input = h("input", { id: "user-id", value: userId, list: "known-users", autocomplete: "off", spellcheck: "false" });
  const known = h(
    "datalist",
    { id: "known-users" },
    (st ? st.events.recent_users : []).map((u) => h("option", { value: u.user_id, text: `${u.events} events` })),
  );
  const picker = h(
    "form",
    {
      class: "row user-picker",
      onsubmit: (ev) => {
        ev.preventDefault();
        const v = input.value.trim();
        if (v) location.hash = `#/user/${encodeURIComponent(v)}`;
      },
    },
    h("label", { for: "user-id", text: "User id" }),
    input,
    known,
    h("button", { type: "submit", text: "Show" }),
    userId !== store.user
      ? h("button", {
          type: "button",
          class: "ghost",
          text: "Browse as this user",
          onclick: () => {
            store.user = userId;
            $("#shopper").value = userId;
            toast(`Now browsing as ${userId}.`);
            renderUser(userId);
          },
        })
      : h("span", { class: "small", text: "(the shopper this browser records events for)" }),
  );
  const history = h("section", { id: "history", class: "history" }, message("Loading…", "hint"));
  const recs = h("section", { id: "recs" }, message("Loading…", "hint"));
  const more = h("section", { id: "more-like" });
  const strategy = h("span", { id: "recs-strategy", class: "pill" });
  view().replaceChildren(
    picker,
    h(
      "div",
      { class: "user-layout" },
      h("div", {}, h("h2", { text: "Recent history" }), history),
      h("div", {}, h("h2", {}, "Recommendations ", strategy), recs, more),
    ),
  );
  if (feedback.user !== userId) Object.assign(feedback, { user: userId, positive: [], negative: [], titles: {} });

  api(`/users/${encodeURIComponent(userId)}/history?limit=30`)
    .then((data) => {
      history.replaceChildren(
        data.events.length
          ? h(
              "ol",
              { class: "events" },
              data.events.map((e) =>
                h(
                  "li",
                  { dataset: { productId: e.product_id } },
                  h("span", { class: `chip ev-${e.event_type}`, text: e.event_type + (e.value !== null ? ` ${e.value}` : "") }),
                  h("a", { href: `#/product/${encodeURIComponent(e.product_id)}`, text: e.title || e.product_id }),
                  h("span", { class: "small", text: ago(e.timestamp) }),
                ),
              ),
            )
          : message(`No events yet for ${userId}. Views, clicks, cart adds and ratings from the Search and product pages are recorded for the current shopper.`),
      );
    })
    .catch((err) => history.replaceChildren(message(`History unavailable: ${err.message}`, "error")));

  const actions = (p) =>
    h(
      "div",
      { class: "feedback" },
      h("button", { type: "button", class: "ghost more", title: "More like this", text: "+ more like this", onclick: () => vote(p, "positive") }),
      h("button", { type: "button", class: "ghost less", title: "Less like this", text: "− less like this", onclick: () => vote(p, "negative") }),
    );
  try {
    const data = await api(`/recommendations/${encodeURIComponent(userId)}?top_k=12`);
    strategy.textContent = data.strategy + (data.model ? ` · model ${data.model}` : "");
    recs.replaceChildren(
      data.recommendations.length
        ? grid(data.recommendations, (p) => ({ reason: p.reason, actions: actions(p) }))
        : message("Nothing to recommend yet: the catalog is empty."),
    );
  } catch (err) {
    recs.replaceChildren(message(`Recommendations unavailable: ${err.message}`, "error"));
  }
  showMore();

  function vote(p, side) {
    const other = side === "positive" ? "negative" : "positive";
    feedback[other] = feedback[other].filter((id) => id !== p.product_id);
    if (!feedback[side].includes(p.product_id)) feedback[side].push(p.product_id);
    feedback.titles[p.product_id] = p.title;
    showMore();
  }

  async function showMore() {
    if (!feedback.positive.length && !feedback.negative.length) {
      more.replaceChildren();
      return;
    }
    const moreResults = h("div", { id: "more-results" }, message("Loading…", "hint"));
    const chips = (ids, cls) => ids.map((id) => h("span", { class: `chip ${cls}`, text: feedback.titles[id] || id }));
    more.replaceChildren(
      h("h2", { text: "More like these" }),
      h(
        "div",
        { class: "row" },
        chips(feedback.positive, "pos"),
        chips(feedback.negative, "neg"),
        h("button", {
          type: "button",
          class: "ghost",
          id: "more-reset",
          text: "reset",
          onclick: () => {
            feedback.positive = [];
            feedback.negative = [];
            showMore();
          },
        }),
      ),
      moreResults,
    );
    const body = { user_id: userId, top_k: 8 };
    if (feedback.positive.length) body.positive = feedback.positive;
    if (feedback.negative.length) body.negative = feedback.negative;
    try {
      const data = await api("/recommendations", { method: "POST", body });
      moreResults.replaceChildren(
        data.recommendations.length ? grid(data.recommendations, (p) => ({ reason: p.reason })) : message("Nothing matches these choices."),
      );
    } catch (err) {
      moreResults.replaceChildren(message(`Could not get more like these: ${err.message}`, "error"));
    }
  }
}

// ---------- Analytics page
let plotlyReady = null;
function loadPlotly() {
  if (!plotlyReady)
    plotlyReady = new Promise((resolve, reject) => {
      const s = h("script", { src: "vendor/plotly.min.js" });
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => {
        plotlyReady = null;
        reject(new Error("could not load the chart library"));
      };
      document.head.append(s);
    });
  return plotlyReady;
}

const chartLayout = (extra = {}) => ({
  margin: { l: 48, r: 16, t: 8, b: 56 },
  height: 280,
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  font: { family: "system-ui, sans-serif", size: 12 },
  ...extra,
});
const chartConfig = { displayModeBar: false, responsive: true };

function table(headers, rows, id) {
  return h(
    "table",
    { id, class: "table" },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { text: x })))),
    h(
      "tbody",
      {},
      rows.map((r) =>
        h(
          "tr",
          {},
          r.map((c) => {
            if (c instanceof Node) return h("td", {}, c);
            const num = typeof c === "number" || /^([\d.,]+ ms|—)$/.test(c);
            return h("td", { text: c, class: num ? "num" : undefined });
          }),
        ),
      ),
    ),
  );
}

let analyticsTimer = null;
async function renderAnalytics() {
  const live = liveToken();
  const updated = h("span", { id: "updated", class: "small" });
  const windowSel = h(
    "select",
    { id: "window", "aria-label": "Traffic window", onchange: () => draw() },
    [5, 15, 60, 360].map((m) => h("option", { value: String(m), text: `last ${m < 60 ? `${m} min` : `${m / 60} h`}`, selected: m === 15 })),
  );
  const panel = (id, title, body = message("Loading…", "hint")) => h("section", { class: "panel", id }, h("h3", { text: title }), body);
  view().replaceChildren(
    h(
      "div",
      { class: "row" },
      h("h1", { text: "Analytics" }),
      windowSel,
      h("button", { type: "button", class: "ghost", text: "refresh", onclick: () => draw() }),
      updated,
    ),
    h("div", { id: "kpis", class: "kpis" }),
    h(
      "div",
      { class: "panels" },
      panel("panel-categories", "Catalog by category", h("div", { id: "chart-categories", class: "chart" })),
      panel("panel-prices", "Price distribution", h("div", { id: "chart-prices", class: "chart" })),
      panel("panel-traffic", "Traffic and latency over time (this process; the dashboard's own calls are not counted)", h("div", { id: "chart-traffic", class: "chart" })),
      panel("panel-events", "Events by type", h("div", { id: "chart-events", class: "chart" })),
      panel("panel-latency", "Request latency by route"),
      panel("panel-queries", "Top queries"),
    ),
    panel("panel-uploads", "Ingest status (newest first)"),
  );

  async function draw() {
    let st, ups, Plotly;
    try {
      [st, ups] = await Promise.all([api(`/stats?window_minutes=${windowSel.value}&top=10`), api("/uploads?limit=25")]);
    } catch (err) {
      if (!live()) return;
      $("#kpis").replaceChildren(message(`Analytics unavailable: ${err.message}`, "error"));
      return;
    }
    statsCache = st;
    try {
      Plotly = await loadPlotly();
    } catch (err) {
      if (!live()) return;
      $("#kpis").replaceChildren(message(err.message, "error"));
      return;
    }
    if (!live()) return; // navigated away meanwhile
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    const kpi = (label, value, id) => h("div", { class: "kpi", id }, h("div", { class: "value", text: String(value) }), h("div", { class: "label", text: label }));
    const by = st.uploads.by_status;
    $("#kpis").replaceChildren(
      kpi("products", st.catalog.products, "kpi-products"),
      kpi("dataset version", st.catalog.dataset_version, "kpi-version"),
      kpi("events", st.events.total, "kpi-events"),
      kpi("shoppers", st.events.users, "kpi-users"),
      kpi("searches (this process)", st.searches, "kpi-searches"),
      kpi("uploads indexed / failed", `${(by.indexed || 0) + (by.partial || 0)} / ${by.failed || 0}`, "kpi-uploads"),
    );

    const cats = st.catalog.categories;
    if (cats.length)
      Plotly.react(
        "chart-categories",
        [{ type: "bar", x: cats.map((c) => c.category), y: cats.map((c) => c.count), marker: { color: "#4f6bed" }, hovertemplate: "%{x}: %{y} products<extra></extra>" }],
        chartLayout({ yaxis: { title: { text: "products" } } }),
        chartConfig,
      );
    else $("#chart-categories").replaceChildren(message("The catalog is empty."));

    const pr = st.catalog.prices;
    if (pr.counts.length) {
      const centers = pr.counts.map((_, i) => (pr.edges[i] + pr.edges[i + 1]) / 2);
      const width = pr.edges[1] - pr.edges[0];
      Plotly.react(
        "chart-prices",
        [
          {
            type: "bar",
            x: centers,
            y: pr.counts,
            width: pr.counts.map(() => width * 0.95),
            customdata: pr.counts.map((_, i) => `$${pr.edges[i]}–$${pr.edges[i + 1]}`),
            marker: { color: "#1aa57a" },
            hovertemplate: "%{customdata}: %{y} products<extra></extra>",
          },
        ],
        chartLayout({ xaxis: { title: { text: `price ($), median ${money(pr.median)}` } }, yaxis: { title: { text: "products" } } }),
        chartConfig,
      );
    } else $("#chart-prices").replaceChildren(message("No products with a price yet."));

    const tl = st.traffic.timeline;
    if (st.traffic.requests) {
      const x = tl.map((b) => b.start);
      Plotly.react(
        "chart-traffic",
        [
          { type: "bar", name: "requests", x, y: tl.map((b) => b.requests), marker: { color: "#c3ccf5" }, yaxis: "y" },
          { type: "bar", name: "5xx", x, y: tl.map((b) => b.errors), marker: { color: "#e5484d" }, yaxis: "y" },
          { type: "scatter", mode: "lines+markers", name: "p50 ms", x, y: tl.map((b) => b.p50_ms), yaxis: "y2", connectgaps: false, line: { color: "#4f6bed" } },
          { type: "scatter", mode: "lines+markers", name: "p95 ms", x, y: tl.map((b) => b.p95_ms), yaxis: "y2", connectgaps: false, line: { color: "#f08c00" } },
        ],
        chartLayout({
          barmode: "overlay",
          legend: { orientation: "h", y: -0.25 },
          yaxis: { title: { text: `requests / ${Math.round(st.traffic.bucket_s)} s` } },
          yaxis2: { title: { text: "latency (ms)" }, overlaying: "y", side: "right", rangemode: "tozero" },
          margin: { l: 48, r: 48, t: 8, b: 64 },
        }),
        chartConfig,
      );
    } else $("#chart-traffic").replaceChildren(message(`No API requests in the ${windowSel.selectedOptions[0].text}.`));

    const types = Object.entries(st.events.by_type).sort((a, b) => b[1] - a[1]);
    if (types.length)
      Plotly.react(
        "chart-events",
        [{ type: "bar", x: types.map((t) => t[0]), y: types.map((t) => t[1]), marker: { color: "#9b59b6" }, hovertemplate: "%{x}: %{y}<extra></extra>" }],
        chartLayout({ yaxis: { title: { text: "events" } } }),
        chartConfig,
      );
    else $("#chart-events").replaceChildren(message("No events yet: browse products or POST /events."));

    const lat = $("#panel-latency");
    lat.replaceChildren(
      lat.firstChild,
      st.traffic.routes.length
        ? table(
            ["route", "requests", "p50", "p95", "p99", "4xx", "5xx"],
            st.traffic.routes.map((r) => [r.route, r.requests, ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms), r.client_errors, r.errors]),
            "latency-table",
          )
        : message(`No API requests in the ${windowSel.selectedOptions[0].text}.`),
    );
    const qp = $("#panel-queries");
    qp.replaceChildren(
      qp.firstChild,
      st.top_queries.length ? table(["query", "count"], st.top_queries.map((q) => [q.query, q.count]), "top-queries") : message("No searches yet."),
    );
    const up = $("#panel-uploads");
    up.replaceChildren(
      up.firstChild,
      ups.uploads.length
        ? table(
            ["object", "status", "indexed", "failed", "reason / failures", "updated"],
            ups.uploads.map((u) => [
              u.key,
              h("span", { class: `chip st-${u.status}`, text: u.status }),
              u.records_indexed,
              u.records_failed,
              u.failures.length
                ? u.failures
                    .slice(0, 5)
                    .map((f) => `line ${f.line ?? "?"}: ${f.reason}`)
                    .join(" · ") + (u.failures.length > 5 ? ` · … ${u.failures.length - 5} more` : "")
                : u.reason,
              ago(u.updated_at),
            ]),
            "uploads-table",
          )
        : message("No uploads yet: drop .json / .jsonl / .csv product files under uploads/ in the bucket."),
    );
  }
  await draw();
  analyticsTimer = setInterval(() => document.visibilityState === "visible" && draw(), 10000);
}

// ---------- Merchandising page: saved rules (PUT/GET /rules) and a preview of a query
const ids = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
const isoOrNull = (local) => (local ? new Date(local).toISOString() : null);

function ruleStatus(r, now = Date.now()) {
  if (r.active_from && Date.parse(r.active_from) > now) return "scheduled";
  if (r.active_until && Date.parse(r.active_until) <= now) return "ended";
  return "active";
}

async function renderRules() {
  const live = liveToken();
  view().replaceChildren(message("Loading rules…", "hint"));
  let saved;
  try {
    saved = await api("/rules");
    if (!live()) return;
  } catch (err) {
    if (!live()) return;
    const hint = err.status === 401 || err.status === 403 ? " The rules need the API key (button at the top right)." : "";
    view().replaceChildren(message(`Could not load the rules: ${err.message}.${hint}`, "error"));
    return;
  }
  const rules = saved.rules.map((r) => ({ ...r }));
  const list = h("section", { id: "rules-list" });
  const version = h("span", { id: "rules-version", class: "small" });
  const status = h("div", { id: "rules-status", class: "small" });

  async function save(next, done) {
    try {
      const out = await api("/rules", { method: "PUT", body: { rules: next } });
      rules.splice(0, rules.length, ...out.rules);
      show(out);
      status.textContent = `Saved as version ${out.version}.`;
      toast(done);
      return true;
    } catch (err) {
      status.textContent = `Not saved: ${err.message}`;
      toast(`Rules not saved: ${err.message}`, "error");
      return false;
    }
  }

  function show(doc) {
    version.textContent = doc.version ? `version ${doc.version}, saved ${ago(doc.updated_at)}` : "no rules saved yet";
    if (!rules.length) {
      list.replaceChildren(message("No rules yet. A rule pins, buries or boosts products for a query or a category."));
      return;
    }
    const when = (r) => (r.when.query !== undefined && r.when.query !== null ? `query “${r.when.query}”` : `category ${r.when.category}`);
    const boosts = (r) => r.boost.map((b) => `${JSON.stringify(b.filters)} ×${b.factor}`).join("; ") || "—";
    const window_ = (r) =>
      r.active_from || r.active_until
        ? `${r.active_from ? new Date(r.active_from).toLocaleString() : "…"} – ${r.active_until ? new Date(r.active_until).toLocaleString() : "…"}`
        : "always";
    list.replaceChildren(
      table(
        ["Rule", "When", "Pin", "Bury", "Boost", "Active", "Status", ""],
        rules.map((r) => [
          r.id,
          when(r),
          r.pin.join(", ") || "—",
          r.bury.join(", ") || "—",
          boosts(r),
          window_(r),
          h("span", { class: `chip status-${ruleStatus(r)}`, text: ruleStatus(r) }),
          h("button", {
            type: "button",
            class: "ghost",
            text: "Delete",
            "data-delete": r.id,
            onclick: () => save(rules.filter((x) => x.id !== r.id), `Rule ${r.id} deleted.`),
          }),
        ]),
        "rules-table",
      ),
    );
  }

  // A new rule
  const f = {
    id: h("input", { id: "rule-id", placeholder: "e.g. winter-boots", maxlength: "128" }),
    kind: h("select", { id: "rule-kind", "aria-label": "Condition" }, h("option", { value: "query", text: "Query is" }), h("option", { value: "category", text: "Category is" })),
    value: h("input", { id: "rule-value", placeholder: "boots" }),
    pin: h("input", { id: "rule-pin", placeholder: "product ids, comma-separated" }),
    bury: h("input", { id: "rule-bury", placeholder: "product ids, comma-separated" }),
    boostCategory: h("input", { id: "rule-boost-category", placeholder: "category to boost" }),
    boostFactor: h("input", { id: "rule-boost-factor", type: "number", min: "0.01", max: "100", step: "any", value: "2" }),
    from: h("input", { id: "rule-from", type: "datetime-local" }),
    until: h("input", { id: "rule-until", type: "datetime-local" }),
  };
  const label = (text, el) => h("label", { class: "field" }, h("span", { text }), el);
  const form = h(
    "form",
    { id: "rule-form", class: "rule-form" },
    label("Rule id", f.id),
    label("When", h("span", { class: "inline" }, f.kind, f.value)),
    label("Pin first", f.pin),
    label("Bury", f.bury),
    label("Boost", h("span", { class: "inline" }, f.boostCategory, h("span", { text: "×" }), f.boostFactor)),
    label("Active from", f.from),
    label("Active until", f.until),
    h("button", { type: "submit", id: "rule-add", text: "Add rule and save" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const rule = {
      id: f.id.value.trim(),
      when: { [f.kind.value]: f.value.value.trim() },
      pin: ids(f.pin.value),
      bury: ids(f.bury.value),
      boost: f.boostCategory.value.trim() ? [{ filters: { category: f.boostCategory.value.trim() }, factor: Number(f.boostFactor.value) }] : [],
      active_from: isoOrNull(f.from.value),
      active_until: isoOrNull(f.until.value),
    };
    if (await save([...rules.filter((x) => x.id !== rule.id), rule], `Rule ${rule.id} saved.`)) form.reset();
  });

  // Preview: what a shopper searching this sees now, with the rules that fire
  const pq = h("input", { id: "preview-q", type: "search", placeholder: "a query, e.g. boots", autocomplete: "off" });
  const pc = h("input", { id: "preview-category", placeholder: "category filter (optional)" });
  const previewOut = h("section", { id: "preview" });
  const preview = h(
    "form",
    { id: "preview-form", class: "controls" },
    pq,
    pc,
    h("button", { type: "submit", id: "preview-btn", text: "Preview" }),
  );
  preview.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!pq.value.trim()) return;
    const body = { query: pq.value.trim(), top_k: 12 };
    if (pc.value.trim()) body.filters = { category: pc.value.trim() };
    try {
      const data = await api("/search", { method: "POST", body });
      const fired = data.applied_rules.length ? `Rules that fired: ${data.applied_rules.join(", ")}` : "No rule fires for this query.";
      const marks = new Map();
      for (const r of rules.filter((x) => data.applied_rules.includes(x.id))) {
        for (const pid of r.pin) marks.set(pid, "pinned");
        for (const pid of r.bury) marks.set(pid, "buried");
      }
      previewOut.replaceChildren(
        h("div", { id: "preview-rules", class: "small", text: fired }),
        data.results.length
          ? grid(data.results, (r) => ({ score: r.score, reason: marks.get(r.product_id) }))
          : message("No products match."),
      );
    } catch (err) {
      previewOut.replaceChildren(message(`Preview failed: ${err.message}`, "error"));
    }
  });

  view().replaceChildren(
    h("h1", { text: "Merchandising rules" }),
    h("p", { class: "small", text: "Rules pin, bury or boost products for a query (case and punctuation aside) or for requests filtered to a category, optionally between two dates. Every search, similar and recommendation request applies the ones that fire; answers name them. Saving replaces the whole set as a new version." }),
    version,
    list,
    h("h2", { text: "New rule" }),
    form,
    status,
    h("h2", { text: "Preview a query" }),
    preview,
    previewOut,
  );
  show(saved);
}

// ---------- header: shopper id, API key, health
function setupHeader() {
  const shopper = $("#shopper");
  shopper.value = store.user;
  shopper.addEventListener("change", () => {
    const v = shopper.value.trim();
    if (!v) {
      shopper.value = store.user;
      return;
    }
    store.user = v;
    toast(`Now browsing as ${v}.`);
    route();
  });
  const keyBtn = $("#api-key-btn");
  const showKey = () => (keyBtn.textContent = store.apiKey ? "API key ✓" : "API key");
  showKey();
  keyBtn.addEventListener("click", () => {
    const v = prompt("API key: API_KEY for writes and shopper data, or READ_API_KEY to search (kept in this tab only; empty to clear):", "");
    if (v === null) return;
    store.apiKey = v.trim();
    showKey();
  });
}

async function checkHealth() {
  const pill = $("#health");
  try {
    const resp = await fetch("/health");
    const data = await resp.json();
    pill.textContent = data.status;
    pill.className = `pill ${data.status}`;
    pill.title = (data.warnings || []).join("\n") || `${data.product_count ?? "?"} products, dataset v${data.dataset_version ?? "?"}`;
    if (data.status === "unhealthy") showBanner("The service cannot reach its catalog right now (health: unhealthy).");
  } catch {
    pill.textContent = "offline";
    pill.className = "pill unhealthy";
    showBanner(`Cannot reach the service at ${location.origin}. Is it still running?`);
  }
}

// ---------- router
let routeToken = 0;
// Each render checks, after every wait, that it is still the page being shown.
function liveToken() {
  const mine = routeToken;
  return () => mine === routeToken;
}

async function route() {
  routeToken += 1;
  clearInterval(analyticsTimer);
  const [, page = "search", arg] = location.hash.replace(/^#\/?/, "").match(/^([^/]*)\/?(.*)$/) || [];
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === (page || "search"));
  const id = arg ? decodeURIComponent(arg) : "";
  document.body.dataset.page = page || "search";
  try {
    if (page === "product" && id) await renderProduct(id);
    else if (page === "user") await renderUser(id);
    else if (page === "analytics") await renderAnalytics();
    else if (page === "rules") await renderRules();
    else await renderSearch();
  } catch (err) {
    view().replaceChildren(message(`Something went wrong: ${err.message}`, "error"));
  }
  document.body.dataset.ready = "1";
}

window.addEventListener("hashchange", route);
setupHeader();
checkHealth();
setInterval(checkHealth, 15000);
route();
