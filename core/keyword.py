"""Full-text (BM25) retrieval over product text, in memory, aligned with the hot catalog's rows.

Documents are a product's title (counted twice: a title word says more than a description word),
description, category and attribute values. Tokens are lower-cased runs of letters and digits;
codes written with ``-``, ``.`` or ``/`` inside (``XR-200``, ``B07.1``) also give their joined
form (``xr200``), so a SKU matches however it is typed.

Scores are Lucene's BM25 (``k1`` = 1.2, ``b`` = 0.75, ``idf = ln(1 + (N - df + 0.5)/(df + 0.5))``)
over the live rows, then normalised into [0, 1]: divided by what a document of average length
with every query term in its title would score (the query's total idf times the BM25 weight of a
term seen twice), capped at 1. The number means the same for every query ("how much of the
query's information the product's words carry") and fuses with cosine scores (see
:func:`core.search.hot_ranked`).

The index is a list of immutable segments (CSC term-frequency matrices): a catalog refresh appends
a segment for the new rows and tombstoned rows are masked at query time, so adding products costs
time in the new rows only; :meth:`KeywordIndex.extend` merges segments once there are many.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from core.types import Product

K1 = 1.2
B = 0.75
TITLE_REPEAT = 2
MAX_SEGMENTS = 8
BUILD_ROWS = 65_536
MAX_QUERY_TOKENS = 64
# BM25 weight of a term seen TITLE_REPEAT times in a document of average length: the normaliser.
FULL_MATCH = TITLE_REPEAT * (K1 + 1.0) / (TITLE_REPEAT + K1)

_WORD = re.compile(r"[^\W_]+")
_CODE = re.compile(r"[^\W_]+(?:[-./][^\W_]+)+")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B8 = npt.NDArray[np.bool_]


def tokenize(text: str) -> list[str]:
    """Lower-cased words, plus the joined form of codes such as ``XR-200`` (``xr200``)."""
    low = text.casefold()
    words = _WORD.findall(low)
    codes = [re.sub(r"[-./]", "", m) for m in _CODE.findall(low)]
    return words + codes


def document(p: Product) -> list[str]:
    """The tokens a product is found by."""
    parts = [p.title] * TITLE_REPEAT + [p.description, p.category or ""]
    parts += [str(v) for v in p.attributes.values() if isinstance(v, str | int | float) and not isinstance(v, bool)]
    parts += [
        str(x) for v in p.attributes.values() if isinstance(v, list) for x in v if isinstance(x, str | int | float)
    ]
    return tokenize(" ".join(parts))


@dataclass(frozen=True)
class Segment:
    """Term frequencies of rows ``row0 .. row0 + n`` (CSC: one column per term id)."""

    row0: int
    tf: sp.csc_matrix

    @property
    def rows(self) -> int:
        return int(self.tf.shape[0])

    def postings(self, term: int) -> tuple[I64, F32]:
        if term >= self.tf.shape[1]:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        lo, hi = self.tf.indptr[term], self.tf.indptr[term + 1]
        return self.row0 + self.tf.indices[lo:hi].astype(np.int64), self.tf.data[lo:hi]


def _segment(row0: int, docs: Sequence[Sequence[str]], vocab: dict[str, int]) -> Segment:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for r, tokens in enumerate(docs):
        for tok, n in Counter(tokens).items():
            term = vocab.setdefault(tok, len(vocab))
            rows.append(r)
            cols.append(term)
            vals.append(float(n))
    tf = sp.csc_matrix(
        (np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
        shape=(len(docs), len(vocab)),
    )
    tf.sort_indices()
    return Segment(row0, tf)


@dataclass(frozen=True)
class KeywordIndex:
    """BM25 over rows ``0 .. n``; ``vocab`` only grows (terms of removed rows stay, harmless)."""

    vocab: dict[str, int]
    segments: tuple[Segment, ...]
    doc_len: F32

    @classmethod
    def build(cls, products: Sequence[Product]) -> KeywordIndex:
        """The index of ``products``, a segment of :data:`BUILD_ROWS` at a time (the
        per-term lists a segment is built from cost far more than its matrix)."""
        index = cls.empty()
        for start in range(0, len(products), BUILD_ROWS):
            index = index.extend(products[start : start + BUILD_ROWS])
        return index

    @classmethod
    def empty(cls) -> KeywordIndex:
        return cls({}, (), np.zeros(0, np.float32))

    @property
    def rows(self) -> int:
        return len(self.doc_len)

    def extend(self, products: Sequence[Product]) -> KeywordIndex:
        """A new index with ``products`` as rows ``rows .. rows + len(products)`` (this one is
        left as it is: snapshots that hold it keep answering)."""
        if not products:
            return self
        docs = [document(p) for p in products]
        vocab = dict(self.vocab)
        segments = (*self.segments, _segment(self.rows, docs, vocab))
        doc_len = np.concatenate([self.doc_len, np.array([len(d) for d in docs], np.float32)])
        if len(segments) > MAX_SEGMENTS:
            segments = (_merge(segments, len(vocab)),)
        return KeywordIndex(vocab, segments, doc_len)

    def export(self) -> tuple[list[str], dict[str, npt.NDArray[Any]]]:
        """The terms (in id order) and the index as arrays, for :meth:`restore`."""
        tf = _merge(self.segments, len(self.vocab)).tf if self.segments else sp.csc_matrix((0, len(self.vocab)))
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        arrays = {"tf_data": tf.data, "tf_indices": tf.indices, "tf_indptr": tf.indptr, "doc_len": self.doc_len}
        return terms, arrays

    @classmethod
    def restore(cls, terms: list[str], arrays: dict[str, npt.NDArray[Any]]) -> KeywordIndex:
        doc_len = np.asarray(arrays["doc_len"], np.float32)
        tf = sp.csc_matrix(
            (arrays["tf_data"], arrays["tf_indices"], arrays["tf_indptr"]), shape=(len(doc_len), len(terms))
        )
        return cls({t: k for k, t in enumerate(terms)}, (Segment(0, tf),) if len(doc_len) else (), doc_len)

    def scores(self, query: str, alive: B8, allowed: B8 | None = None) -> tuple[I64, F64]:
        """Rows matching at least one query term among ``allowed`` (default: ``alive``) and
        their normalised BM25 scores in (0, 1] (statistics over ``alive`` rows)."""
        terms = [self.vocab.get(t, -1) for t in dict.fromkeys(tokenize(query))][:MAX_QUERY_TOKENS]
        if not terms:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        allowed = alive if allowed is None else allowed
        n_live = int(alive.sum())
        if n_live == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        avgdl = float(np.dot(self.doc_len, alive)) / n_live or 1.0
        acc = np.zeros(self.rows, np.float64)
        idf_total = 0.0
        for term in terms:
            if term < 0:  # a word no product has: full weight in the normaliser, no matches
                idf_total += math.log(1.0 + (n_live + 0.5) / 0.5)
                continue
            parts = [seg.postings(term) for seg in self.segments]
            rows = np.concatenate([p[0] for p in parts])
            tf = np.concatenate([p[1] for p in parts]).astype(np.float64)
            live = alive[rows]
            rows, tf = rows[live], tf[live]
            df = len(rows)
            idf = math.log(1.0 + (n_live - df + 0.5) / (df + 0.5))
            idf_total += idf
            norm = K1 * (1.0 - B + B * self.doc_len[rows] / avgdl)
            acc[rows] += idf * tf * (K1 + 1.0) / (tf + norm)
        hit = np.flatnonzero((acc > 0) & allowed)
        return hit.astype(np.int64), np.minimum(acc[hit] / (max(idf_total, 1e-12) * FULL_MATCH), 1.0)


def _merge(segments: Iterable[Segment], n_terms: int) -> Segment:
    mats = [sp.csc_matrix(s.tf, copy=False) for s in segments]
    mats = [m if m.shape[1] == n_terms else _pad(m, n_terms) for m in mats]
    tf = sp.vstack(mats, format="csc")
    tf.sort_indices()
    return Segment(0, tf)


def _pad(m: sp.csc_matrix, n_terms: int) -> sp.csc_matrix:
    out = sp.csc_matrix(
        (m.data, m.indices, np.concatenate([m.indptr, np.full(n_terms - m.shape[1], m.indptr[-1])])),
        shape=(m.shape[0], n_terms),
    )
    return out
