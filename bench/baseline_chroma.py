"""Reference-stack baseline: the same queries on the same catalog, answered by ChromaDB.

The reference design (``/work/shared/REFERENCE.md``) keeps product vectors in ChromaDB, embedded
in-process with a persistent directory (``CHROMA_PERSIST_DIR``), cosine space, and fuses CLIP
image and SBERT text similarity with weights 0.7 / 0.3. This module mirrors that with two
collections (a Chroma record holds one embedding): ``products_image`` (512-d CLIP vectors,
products without an image are not added) and ``products_text`` (384-d SBERT vectors), both with
``category`` / ``price`` metadata for where-filters and Chroma's default HNSW settings
(M=16, ef_construction=100, ef_search=100; the reference README's config lists M=16,
ef_construction=200, ef_search=50).

Ranking, as in DESIGN.md / ``core.search``: one filtered vector search per modality for
``max(4 * top_k, 50)`` candidates, then the union re-scored with

    score(p) = sum_m w_m * cos_m(q, p) / sum_m w_m,   m over modalities both q and p have

A candidate that one modality's search did not return gets that modality's similarity from its
stored vector (one ``get`` per modality), so every candidate is scored on the contract's fused
score. ``ChromaBaseline.rescore_exact = False`` switches to the cheaper variant that treats a
similarity Chroma did not return as absent (see the self-check for what that costs in recall).

Self-check (random catalog, exact numpy ground truth, recall and latency):

    python -m bench.baseline_chroma [--products 3000] [--queries 50]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import chromadb
import numpy as np
from chromadb.api.collection_configuration import CreateCollectionConfiguration, CreateHNSWConfiguration
from chromadb.api.types import Where
from chromadb.config import Settings

CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 50
SIMILAR_WEIGHTS = (0.7, 0.3)  # image, text: the reference design's defaults
IMAGE_COLLECTION = "products_image"
TEXT_COLLECTION = "products_text"


def _where(category: str | None, min_price: float | None, max_price: float | None) -> Where | None:
    """Chroma where-filter; ``$and`` needs two or more clauses, a single clause goes bare."""
    clauses: list[dict[str, Any]] = []
    if category is not None:
        clauses.append({"category": {"$eq": category}})
    # Prices are stored as floats; Chroma compares typed values, so the bounds are floats too.
    if min_price is not None:
        clauses.append({"price": {"$gte": float(min_price)}})
    if max_price is not None:
        clauses.append({"price": {"$lte": float(max_price)}})
    if not clauses:
        return None
    if len(clauses) == 1:
        return clauses[0]
    return {"$and": clauses}


def _metadata(meta: dict[str, object]) -> dict[str, str | float] | None:
    """Chroma metadata: no ``None`` values, and an empty dict must be ``None``."""
    out: dict[str, str | float] = {}
    category = meta.get("category")
    if isinstance(category, str):
        out["category"] = category
    price = meta.get("price")
    if isinstance(price, int | float) and not isinstance(price, bool) and math.isfinite(price):
        out["price"] = float(price)
    return out or None


class ChromaBaseline:
    """Products in an in-process persistent ChromaDB, searched like the reference stack."""

    rescore_exact: bool = True
    # None = Chroma's default (100). Takes effect only for collections created after it is set:
    # ``collection.modify(configuration=...)`` updates the stored config but not a loaded index.
    ef_search: int | None = None

    def __init__(self, path: str) -> None:
        self._client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
        # chromadb 1.x: the space goes in the collection configuration, not "hnsw:space" metadata.
        hnsw = CreateHNSWConfiguration(space="cosine")
        if self.ef_search is not None:
            hnsw["ef_search"] = self.ef_search
        config = CreateCollectionConfiguration(hnsw=hnsw)
        # embedding_function=None: we always pass vectors; the default would be Chroma's ONNX MiniLM.
        self._image = self._client.get_or_create_collection(
            IMAGE_COLLECTION,
            configuration=config,
            embedding_function=None,
        )
        self._text = self._client.get_or_create_collection(
            TEXT_COLLECTION,
            configuration=config,
            embedding_function=None,
        )

    def build(
        self,
        ids: list[str],
        image_vectors: np.ndarray,
        text_vectors: np.ndarray,
        metadatas: list[dict[str, object]],
        batch: int = 5000,
    ) -> float:
        """Add the catalog; an all-zero image row = no image (not added). Returns seconds spent."""
        n = len(ids)
        if not (len(image_vectors) == len(text_vectors) == len(metadatas) == n):
            raise ValueError("ids, image_vectors, text_vectors and metadatas differ in length")
        batch = max(1, min(batch, self._client.get_max_batch_size()))
        img = np.ascontiguousarray(image_vectors, dtype=np.float32)
        txt = np.ascontiguousarray(text_vectors, dtype=np.float32)
        metas = [_metadata(m) for m in metadatas]
        has_image = np.flatnonzero(np.any(img != 0, axis=1))
        t = time.perf_counter()
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            self._text.add(ids=ids[start:stop], embeddings=txt[start:stop], metadatas=metas[start:stop])  # type: ignore[arg-type]
        for start in range(0, len(has_image), batch):
            rows = has_image[start : start + batch]
            self._image.add(
                ids=[ids[i] for i in rows],
                embeddings=img[rows],
                metadatas=[metas[i] for i in rows],
            )
        return time.perf_counter() - t

    def search(
        self,
        q_img: np.ndarray | None,
        q_txt: np.ndarray | None,
        w_img: float,
        w_txt: float,
        top_k: int,
        category: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
    ) -> list[str]:
        """Product ids best first (fused ranking, see the module docstring)."""
        return self._ranked(q_img, q_txt, w_img, w_txt, top_k, _where(category, min_price, max_price), None)

    def similar(self, product_id: str, top_k: int) -> list[str]:
        """Products nearest to a stored product (its own vectors as the query), never itself."""
        q_img = self._stored(self._image, [product_id]).get(product_id)
        q_txt = self._stored(self._text, [product_id]).get(product_id)
        if q_img is None and q_txt is None:
            raise KeyError(product_id)
        w_img, w_txt = SIMILAR_WEIGHTS
        return self._ranked(q_img, q_txt, w_img, w_txt, top_k, None, product_id)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _stored(collection: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by id (``get`` answers in storage order and skips unknown ids)."""
        if not ids:
            return {}
        got = collection.get(ids=list(ids), include=["embeddings"])
        embs = got["embeddings"]
        if embs is None:
            return {}
        return {pid: np.asarray(e, dtype=np.float32) for pid, e in zip(got["ids"], embs, strict=True)}

    @staticmethod
    def _nearest(collection: Any, q: np.ndarray, k: int, where: Where | None) -> dict[str, float]:
        """``k`` nearest ids with cosine similarity (Chroma's cosine distance is ``1 - cos``)."""
        res = collection.query(
            query_embeddings=[np.asarray(q, dtype=np.float32)],
            n_results=k,
            where=where,
            include=["distances"],
        )
        return {pid: 1.0 - float(d) for pid, d in zip(res["ids"][0], res["distances"][0], strict=True)}

    def _ranked(
        self,
        q_img: np.ndarray | None,
        q_txt: np.ndarray | None,
        w_img: float,
        w_txt: float,
        top_k: int,
        where: Where | None,
        exclude_id: str | None,
    ) -> list[str]:
        k = max(CANDIDATE_FACTOR * top_k, MIN_CANDIDATES) + (1 if exclude_id is not None else 0)
        modalities: list[tuple[Any, np.ndarray, float]] = []
        if q_img is not None and w_img > 0:
            modalities.append((self._image, q_img, w_img))
        if q_txt is not None and w_txt > 0:
            modalities.append((self._text, q_txt, w_txt))
        sims = [self._nearest(col, q, k, where) for col, q, _ in modalities]
        union = {pid for s in sims for pid in s}
        if exclude_id is not None:
            union.discard(exclude_id)
        if self.rescore_exact:
            for (col, q, _), s in zip(modalities, sims, strict=True):
                missing = sorted(union.difference(s))
                qn = np.asarray(q, dtype=np.float32)
                qn = qn / max(float(np.linalg.norm(qn)), 1e-12)
                for pid, vec in self._stored(col, missing).items():
                    s[pid] = float(np.dot(qn, vec) / max(float(np.linalg.norm(vec)), 1e-12))
        scored: list[tuple[float, str]] = []
        for pid in union:
            num = den = 0.0
            for (_, _, w), s in zip(modalities, sims, strict=True):
                if pid in s:
                    num += w * s[pid]
                    den += w
            if den > 0:
                scored.append((-num / den, pid))
        scored.sort()
        return [pid for _, pid in scored[:top_k]]


# -- self-check ------------------------------------------------------------------------------


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _exact(
    img: np.ndarray,
    txt: np.ndarray,
    allowed: np.ndarray,
    q_img: np.ndarray | None,
    q_txt: np.ndarray | None,
    w_img: float,
    w_txt: float,
    top_k: int,
    ids: list[str],
) -> list[str]:
    """Brute-force fused score (module docstring formula) over every allowed product."""
    n = len(ids)
    has_img = np.any(img != 0, axis=1)
    num = np.zeros(n)
    den = np.zeros(n)
    if q_img is not None and w_img > 0:
        num += np.where(has_img, w_img * (img @ q_img), 0.0)
        den += np.where(has_img, w_img, 0.0)
    if q_txt is not None and w_txt > 0:
        num += w_txt * (txt @ q_txt)
        den += w_txt
    ok = allowed & (den > 0)
    score = np.where(ok, num / np.where(den > 0, den, 1.0), -np.inf)
    order = sorted(np.flatnonzero(ok), key=lambda i: (-score[i], ids[i]))
    return [ids[i] for i in order[:top_k]]


def _mask(
    cats: list[str | None],
    prices: list[float | None],
    category: str | None,
    lo: float | None,
    hi: float | None,
) -> np.ndarray:
    """Filter semantics: a product missing a filtered field never matches that filter."""
    keep = []
    for c, p in zip(cats, prices, strict=True):
        ok = category is None or c == category
        if lo is not None:
            ok = ok and p is not None and p >= lo
        if hi is not None:
            ok = ok and p is not None and p <= hi
        keep.append(ok)
    return np.array(keep, dtype=bool)


def _recall(got: list[str], truth: list[str]) -> float:
    return 1.0 if not truth else len(set(got) & set(truth)) / len(truth)


def main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ef-search", type=int, default=None, help="HNSW ef_search (default: Chroma's, 100)")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    n, top_k = args.products, args.top_k
    categories = ["bags", "shoes", "shirts", "mugs", "audio", "hats", "watches", "toys"]
    ids = [f"P{i:06d}" for i in range(n)]
    img = _unit(rng, n, 512)
    img[rng.random(n) < 0.1] = 0.0  # 10% text-only products
    txt = _unit(rng, n, 384)
    cats: list[str | None] = [str(rng.choice(categories)) if rng.random() > 0.05 else None for _ in range(n)]
    prices: list[float | None] = [
        round(float(rng.uniform(1, 500)), 2) if rng.random() > 0.05 else None for _ in range(n)
    ]
    metas: list[dict[str, object]] = []
    for c, p in zip(cats, prices, strict=True):
        m: dict[str, object] = {}
        if c is not None:
            m["category"] = c
        if p is not None:
            m["price"] = p
        metas.append(m)

    # Queries: both modalities / text only / image only, with none, category, price or both filters.
    queries: list[dict[str, Any]] = []
    for i in range(args.queries):
        kind = i % 3
        lo = float(rng.uniform(1, 300)) if rng.random() < 0.5 else None
        queries.append(
            {
                "q_img": _unit(rng, 1, 512)[0] if kind != 1 else None,
                "q_txt": _unit(rng, 1, 384)[0] if kind != 2 else None,
                "w_img": 0.7 if kind == 0 else (0.0 if kind == 1 else 1.0),
                "w_txt": 0.3 if kind == 0 else (1.0 if kind == 1 else 0.0),
                "category": str(rng.choice(categories)) if rng.random() < 0.5 else None,
                "min_price": lo,
                "max_price": lo + float(rng.uniform(50, 250)) if lo is not None else None,
            }
        )

    if args.ef_search is not None:
        ChromaBaseline.ef_search = args.ef_search
    k_cand = max(CANDIDATE_FACTOR * top_k, MIN_CANDIDATES)
    has_img = np.any(img != 0, axis=1)
    with tempfile.TemporaryDirectory(prefix="chroma-baseline-") as tmp:
        base = ChromaBaseline(tmp)
        build_s = base.build(ids, img, txt, metas)
        print(f"chromadb {chromadb.__version__}; {n} products ({int(has_img.sum())} with image), top_k={top_k}")
        print(f"hnsw config: {base._image.configuration.get('hnsw')}")
        print(f"build: {build_s:.2f} s ({n / build_s:.0f} products/s)")

        def run(qs: list[dict[str, Any]]) -> tuple[list[list[str]], list[float]]:
            base.search(**qs[0], top_k=top_k)  # warm-up, not timed
            out, lat = [], []
            for q in qs:
                t = time.perf_counter()
                out.append(base.search(**q, top_k=top_k))
                lat.append((time.perf_counter() - t) * 1000)
            return out, lat

        truths, ceiling = [], []
        for q in queries:
            allowed = _mask(cats, prices, q["category"], q["min_price"], q["max_price"])
            args5 = (q["q_img"], q["q_txt"], q["w_img"], q["w_txt"])
            truths.append(_exact(img, txt, allowed, *args5, top_k, ids))
            # Ceiling of the candidate scheme itself: exact per-modality top-k_cand, exact re-score.
            cand = np.zeros(n, dtype=bool)
            for vecs, vec, w, ok in ((img, q["q_img"], q["w_img"], has_img), (txt, q["q_txt"], q["w_txt"], None)):
                if vec is not None and w > 0:
                    mask = allowed if ok is None else allowed & ok
                    cand[[ids.index(p) for p in _exact(vecs, vecs, mask, None, vec, 0.0, 1.0, k_cand, ids)]] = True
            ceiling.append(_recall(_exact(img, txt, cand, *args5, top_k, ids), truths[-1]))
        filtered = np.array([any(q[f] is not None for f in ("category", "min_price")) for q in queries])

        got, lat = run(queries)
        rec = np.array([_recall(g, t) for g, t in zip(got, truths, strict=True)])
        p50, p95 = np.percentile(lat, [50, 95])
        print(
            f"search recall@{top_k} vs exact fused score: {rec.mean():.3f} "
            f"(unfiltered {rec[~filtered].mean():.3f} n={int((~filtered).sum())}, "
            f"filtered {rec[filtered].mean():.3f} n={int(filtered.sum())})"
        )
        print(f"search latency: p50 {p50:.2f} ms, p95 {p95:.2f} ms ({len(lat)} queries, sequential)")

        # Where recall goes: (a) HNSW vs brute force per modality; (b) the candidate scheme's own
        # ceiling (top-k_cand per modality, even when exact); (c) the cheaper "absent" fusion.
        hnsw: dict[bool, list[float]] = {False: [], True: []}
        for q, f in zip(queries, filtered, strict=True):
            allowed = _mask(cats, prices, q["category"], q["min_price"], q["max_price"])
            where = _where(q["category"], q["min_price"], q["max_price"])
            for col, vecs, vec, w in (
                (base._image, img, q["q_img"], q["w_img"]),
                (base._text, txt, q["q_txt"], q["w_txt"]),
            ):
                if vec is not None and w > 0:
                    exact = _exact(vecs, vecs, allowed & np.any(vecs != 0, axis=1), None, vec, 0.0, 1.0, k_cand, ids)
                    hnsw[bool(f)].append(_recall(list(base._nearest(col, vec, k_cand, where)), exact))
        print(
            f"  (a) per-modality Chroma recall@{k_cand}: unfiltered {np.mean(hnsw[False]):.3f}, "
            f"filtered {np.mean(hnsw[True]):.3f}"
        )
        both = np.array([q["w_img"] > 0 and q["w_txt"] > 0 for q in queries])
        print(
            f"  (b) candidate-scheme ceiling (exact top-{k_cand} per modality): {np.mean(ceiling):.3f} "
            f"(both-modality queries {np.mean(np.array(ceiling)[both]):.3f})"
        )
        base.rescore_exact = False
        got_abs, lat_abs = run(queries)
        base.rescore_exact = True
        a50, a95 = np.percentile(lat_abs, [50, 95])
        rec_abs = np.mean([_recall(g, t) for g, t in zip(got_abs, truths, strict=True)])
        print(f"  (c) unreturned similarity = absent: recall {rec_abs:.3f}, p50 {a50:.2f} ms, p95 {a95:.2f} ms")

        sim_rec: list[float] = []
        sim_lat: list[float] = []
        sim_ceil: list[float] = []
        for i in rng.choice(n, size=20, replace=False):
            t = time.perf_counter()
            got_s = base.similar(ids[i], top_k)
            sim_lat.append((time.perf_counter() - t) * 1000)
            allowed = np.ones(n, dtype=bool)
            allowed[i] = False
            q_i = img[i] if has_img[i] else None
            truth = _exact(img, txt, allowed, q_i, txt[i], SIMILAR_WEIGHTS[0], SIMILAR_WEIGHTS[1], top_k, ids)
            sim_rec.append(_recall(got_s, truth))
            cand = np.zeros(n, dtype=bool)
            for vecs, vec, ok in ((img, q_i, allowed & has_img), (txt, txt[i], allowed)):
                if vec is not None:
                    cand[[ids.index(p) for p in _exact(vecs, vecs, ok, None, vec, 0.0, 1.0, k_cand, ids)]] = True
            w_i, w_t = SIMILAR_WEIGHTS
            sim_ceil.append(_recall(_exact(img, txt, cand, q_i, txt[i], w_i, w_t, top_k, ids), truth))
        s50, s95 = np.percentile(sim_lat, [50, 95])
        print(
            f"similar recall@{top_k}: {np.mean(sim_rec):.3f} (candidate-scheme ceiling {np.mean(sim_ceil):.3f}); "
            f"latency p50 {s50:.2f} ms, p95 {s95:.2f} ms (20 products)"
        )


if __name__ == "__main__":
    main()
