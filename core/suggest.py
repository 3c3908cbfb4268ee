"""Search-box suggestions (``GET /suggest``): popular past queries, categories and products
that complete what a shopper has typed so far.

The typed text is split into words; all but the last are taken as typed (typo-tolerant, as in
keyword search), the last is a prefix that completes to the most frequent indexed words starting
with it (or, when none does and it has 4+ letters, starting 1 edit away from it: ``sneq``
completes to ``sneakers``, ``runing`` to ``running``). Suggestions come in this order, each
kind capped so none crowds out the others:

- ``query``: past searches of this process that start with the typed text, the most frequent
  first (:class:`core.analytics.QueryLog`);
- ``category``: categories with a word that starts like the last word;
- ``product``: products that have every word of the completed text (BM25 over title,
  description, category and attributes, each word typo-tolerant), the best first, by their title.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from core.hot import HotSnapshot
from core.keyword import query_tokens

MAX_PREFIX_CHARS = 200
COMPLETIONS = 8  # indexed words the last (partial) word may complete to
QUERY_SHARE = 3  # at most this many past queries
CATEGORY_SHARE = 2  # and this many categories
PRODUCT_COMPLETIONS = 3  # products are looked up for this many completions, in turn


@dataclass(frozen=True)
class Suggestion:
    text: str
    kind: Literal["query", "category", "product"]
    product_id: str | None = None


def suggest(snap: HotSnapshot, typed: str, limit: int, popular: list[tuple[str, int]]) -> list[Suggestion]:
    """Up to ``limit`` suggestions for ``typed`` (see the module docstring); ``popular``: past
    queries (normalised) and their counts, starting with the typed text."""
    text = " ".join(typed.casefold().split())[:MAX_PREFIX_CHARS]
    words = query_tokens(text)
    if not words:
        return []
    out: list[Suggestion] = []
    seen: set[tuple[str, str]] = set()

    def add(s: Suggestion) -> None:
        key = (s.kind, s.text.casefold())
        if key not in seen and len(out) < limit:
            seen.add(key)
            out.append(s)

    for q, _ in popular[:QUERY_SHARE]:
        add(Suggestion(q, "query"))
    last = words[-1]
    # A word followed by a space or punctuation is complete; the last one typed may go on.
    still_typing = typed[-1:].isalnum()
    completions = (snap.keywords.completions(last, COMPLETIONS) if still_typing else []) or [last]
    stems = tuple(completions)
    categories = [c for c in snap.categories.names if c is not None]
    shown = 0
    for c in sorted(categories):
        if shown < CATEGORY_SHARE and any(w.startswith(stems) for w in query_tokens(c)):
            add(Suggestion(c, "category"))
            shown += 1

    def has_word(word: str) -> npt.NDArray[np.bool_]:
        has = np.zeros(len(snap.alive), dtype=bool)
        has[snap.keywords.scores(word, snap.alive)[0]] = True
        return has

    # The words before the last, taken as typed: once for every completion. Out-of-stock products
    # are not suggested (search would not show them).
    earlier = snap.alive.copy() if snap.in_stock is None else snap.alive & snap.in_stock
    for word in words[:-1]:
        earlier &= has_word(word)
    for completion in completions[:PRODUCT_COMPLETIONS]:  # the most frequent completion first
        if len(out) >= limit:
            break
        # Products that have every word (each typo-tolerant), by the score of them all.
        every = earlier & has_word(completion)
        rows, scores = snap.keywords.scores(" ".join([*words[:-1], completion]), snap.alive, every)
        if len(rows):
            take = min(len(rows), 2 * limit)
            best = np.argpartition(-scores, take - 1)[:take] if len(rows) > take else np.arange(len(rows))
            for i in sorted(best.tolist(), key=lambda i: (-scores[i], snap.products[rows[i]].product_id)):
                p = snap.products[rows[i]]
                add(Suggestion(p.title, "product", p.product_id))
    return out
