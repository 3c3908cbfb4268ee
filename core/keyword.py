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

Typo tolerance (on unless a query turns it off). A query word of letters only (no digit: codes,
sizes and numbers stay exact, so ``KS-48213`` never matches ``KS-48212``) also matches the
indexed words within ``1`` edit when it has at least 5 letters, ``2`` from 9 letters (an edit: a
letter added, removed, replaced, or two neighbours swapped). A corrected word counts
:data:`TYPO_WEIGHT` of an exact one, weighed with the query word's own idf when the index has it,
so a product with the word as typed ranks above one that only has a correction of it; a product
gets, per query word, the best of its exact and corrected matches (not their sum).

The index is a list of immutable segments (CSC term-frequency matrices): a catalog refresh appends
a segment for the new rows and tombstoned rows are masked at query time, so adding products costs
time in the new rows only; :meth:`KeywordIndex.extend` merges segments once there are many.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
TYPO_WEIGHT = 0.3
TYPO_MIN_LETTERS = (5, 9)  # a query word this long may match words 1 (2) edits away
TYPO_CACHE = 4096  # query words whose corrections an index remembers
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


def query_tokens(text: str) -> list[str]:
    """The words a query is matched by: as :func:`tokenize`, except that a code (``KS-48213``)
    is matched by its joined form alone, not by its parts (``ks`` would match every KS code)."""
    low = text.casefold()
    codes = [re.sub(r"[-./]", "", m) for m in _CODE.findall(low)]
    return _WORD.findall(_CODE.sub(" ", low)) + codes


def typo_budget(word: str) -> int:
    """Edits a query word may be corrected by: none for short words and anything with a digit."""
    if not word.isalpha():
        return 0
    return sum(len(word) >= n for n in TYPO_MIN_LETTERS)


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
    _corrections: OrderedDict[str, list[int]] = field(default_factory=OrderedDict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

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

    @cached_property
    def _words_by_length(self) -> dict[int, list[tuple[str, int]]]:
        """The indexed words of letters only, by length: what a typo may be corrected to."""
        out: dict[int, list[tuple[str, int]]] = {}
        for word, term in self.vocab.items():
            if word.isalpha():
                out.setdefault(len(word), []).append((word, term))
        return out

    def corrections(self, word: str) -> list[int]:
        """Term ids of the indexed words within :func:`typo_budget` edits of ``word`` (itself
        excluded); remembered per index for the :data:`TYPO_CACHE` latest words."""
        budget = typo_budget(word)
        if budget == 0:
            return []
        with self._lock:
            found = self._corrections.get(word)
            if found is not None:
                self._corrections.move_to_end(word)
                return found
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        by_length = self._words_by_length
        pool = [w for n in range(len(word) - budget, len(word) + budget + 1) for w in by_length.get(n, ())]
        near = process.extract(word, [w for w, _ in pool], scorer=OSA.distance, score_cutoff=budget, limit=None)
        found = [pool[i][1] for _, distance, i in near if distance > 0]
        with self._lock:
            self._corrections[word] = found
            while len(self._corrections) > TYPO_CACHE:
                self._corrections.popitem(last=False)
        return found

    @cached_property
    def _sorted_words(self) -> list[str]:
        return sorted(self.vocab)

    @cached_property
    def _df(self) -> npt.NDArray[np.int64]:
        """Rows per term id (removed rows included: an order for completions, not a statistic)."""
        df = np.zeros(len(self.vocab), np.int64)
        for seg in self.segments:
            n = seg.tf.shape[1]
            df[:n] += np.diff(seg.tf.indptr)
        return df

    @cached_property
    def _prefixes(self) -> dict[int, dict[str, list[str]]]:
        return {}

    def completions(self, prefix: str, limit: int = 8, typos: bool = True) -> list[str]:
        """Indexed words that start with ``prefix`` (casefolded), the most frequent first; with
        ``typos``, when none does and the prefix has 4+ letters, those whose start is 1 edit
        from it (a letter replaced, swapped, missing or extra: ``sneq``, ``runing`` -> ...)."""
        prefix = prefix.casefold()
        if not prefix:
            return []
        words = self._sorted_words
        lo = bisect.bisect_left(words, prefix)
        hi = bisect.bisect_left(words, prefix + "\U0010ffff")
        found = words[lo:hi]
        if not found and typos and len(prefix) >= 4 and prefix.isalpha():
            from rapidfuzz import process
            from rapidfuzz.distance import OSA

            for n in (len(prefix) - 1, len(prefix), len(prefix) + 1):
                starts = self._starts(n)
                keys = list(starts)
                near = process.extract(prefix, keys, scorer=OSA.distance, score_cutoff=1, limit=None)
                found += [w for _, _, i in near for w in starts[keys[i]]]
        df = self._df
        return sorted(dict.fromkeys(found), key=lambda w: (-int(df[self.vocab[w]]), w))[:limit]

    def _starts(self, n: int) -> dict[str, list[str]]:
        """The first ``n`` letters of the indexed words of letters only -> those words."""
        with self._lock:
            starts = self._prefixes.get(n)
            if starts is None:
                starts = {}
                for w in self._sorted_words:
                    if len(w) >= n and w.isalpha():
                        starts.setdefault(w[:n], []).append(w)
                self._prefixes[n] = starts
            return starts

    def _postings(self, term: int, alive: B8) -> tuple[I64, F64]:
        parts = [seg.postings(term) for seg in self.segments]
        rows = np.concatenate([p[0] for p in parts])
        tf = np.concatenate([p[1] for p in parts]).astype(np.float64)
        live = alive[rows]
        return rows[live], tf[live]

    def scores(self, query: str, alive: B8, allowed: B8 | None = None, typos: bool = True) -> tuple[I64, F64]:
        """Rows matching at least one query word (or, with ``typos``, a correction of one) among
        ``allowed`` (default: ``alive``) and their normalised BM25 scores in (0, 1] (statistics
        over ``alive`` rows)."""
        words = list(dict.fromkeys(query_tokens(query)))[:MAX_QUERY_TOKENS]
        if not words:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        allowed = alive if allowed is None else allowed
        n_live = int(alive.sum())
        if n_live == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        avgdl = float(np.dot(self.doc_len, alive)) / n_live or 1.0

        def idf_of(df: int) -> float:
            return math.log(1.0 + (n_live - df + 0.5) / (df + 0.5))

        def weight(rows: I64, tf: F64) -> F64:
            out: F64 = tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * self.doc_len[rows] / avgdl))
            return out

        acc = np.zeros(self.rows, np.float64)
        idf_total = 0.0
        for word in words:
            term = self.vocab.get(word, -1)
            rows, tf = self._postings(term, alive) if term >= 0 else (np.zeros(0, np.int64), np.zeros(0))
            fixes = [self._postings(t, alive) for t in self.corrections(word)] if typos else []
            fixes = [(r, f) for r, f in fixes if len(r)]
            if len(rows) == 0 and not fixes:  # a word no product has: full weight in the normaliser
                idf_total += idf_of(0)
                continue
            # The word's own idf when products have it, else its rarest correction's.
            idf = idf_of(len(rows)) if len(rows) else max(idf_of(len(r)) for r, _ in fixes)
            idf_total += idf
            if not fixes:
                acc[rows] += idf * weight(rows, tf)
                continue
            best = np.zeros(self.rows, np.float64)
            for r, f in fixes:
                best[r] = np.maximum(best[r], TYPO_WEIGHT * idf * weight(r, f))
            best[rows] = idf * weight(rows, tf)  # an exact match outweighs any correction
            acc += best
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
