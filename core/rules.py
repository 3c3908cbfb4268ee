"""Saved merchandising rules: a shop's pins, burials and boosts for a query or a category, kept
as versioned objects in the bucket and applied by every query process.

A rule fires for a request when it is active (``active_from <= now < active_until``; either
bound may be left out) and its condition holds:

- ``{"query": "boots"}``: the request's query text, normalised (case-folded, words only,
  single spaces), equals the rule's, normalised the same way;
- ``{"category": "Bags"}``: the request is filtered to that category (one of its categories).

The rules that fire add their pins (after the request's own, in rule order), burials and
boosts to the request's (:class:`core.merchandising.Merchandising`); answers name them.

Storage: each save writes ``rules/versions/<n>.json`` (the whole set) and then points
``rules/latest.json`` at it, so an earlier set can be read back and a reader never sees half a
save. Concurrent saves: the last pointer written wins. Query processes re-read the pointer
every ``refresh_seconds`` in a background thread (:meth:`RuleStore.start`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.errors import InvalidInput, NotFound
from core.merchandising import MAX_BOOSTS, MAX_PINS, Boost, Merchandising
from core.storage import ObjectStore
from core.types import Filters, attribute_text, validate_product_id

log = logging.getLogger(__name__)

PREFIX = "rules/"
LATEST = f"{PREFIX}latest.json"
MAX_RULES = 500
KEEP_VERSIONS = 20
MAX_ID_LENGTH = 128


def normalise_query(text: str) -> str:
    """Query text as rules compare it: case-folded words (letters and digits), one space apart."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def filters_to_json(f: Filters) -> dict[str, Any]:
    """A boost's filters as stored (what :func:`filters_from_json` reads back)."""
    out: dict[str, Any] = {}
    if f.categories is not None:
        out["category"] = list(f.categories)
    if f.min_price is not None:
        out["min_price"] = f.min_price
    if f.max_price is not None:
        out["max_price"] = f.max_price
    if f.attributes:
        out["attributes"] = dict(f.attributes)
    return out


def filters_from_json(raw: Any, where: str) -> Filters:
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where}: filters must be an object")
    unknown = set(raw) - {"category", "min_price", "max_price", "attributes"}
    if unknown:
        raise InvalidInput(f"{where}: unknown filter {sorted(unknown)[0]!r}")
    cats = raw.get("category")
    if isinstance(cats, str):
        cats = [cats]
    if cats is not None and (not isinstance(cats, list) or not all(isinstance(c, str) for c in cats)):
        raise InvalidInput(f"{where}: category must be a string or a list of strings")
    attrs = raw.get("attributes") or {}
    if not isinstance(attrs, Mapping):
        raise InvalidInput(f"{where}: attributes must be an object")
    pairs = []
    for name, value in attrs.items():
        text = attribute_text(value)
        if text is None:
            raise InvalidInput(f"{where}: attribute {name!r} must be a plain value")
        pairs.append((str(name), text))
    prices = {}
    for key in ("min_price", "max_price"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InvalidInput(f"{where}: {key} must be a number")
        prices[key] = None if v is None else float(v)
    try:
        return Filters(
            categories=tuple(cats) if cats else None,
            min_price=prices["min_price"],
            max_price=prices["max_price"],
            attributes=tuple(sorted(pairs)),
        )
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def _moment(raw: Any, where: str) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, datetime):
        ts = raw
    elif isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidInput(f"{where}: not an ISO-8601 date-time: {raw!r}") from None
    else:
        raise InvalidInput(f"{where}: an ISO-8601 date-time is expected")
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)


def _ids(raw: Any, where: str, limit: int) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(i, str) and i for i in raw):
        raise InvalidInput(f"{where}: a list of product ids is expected")
    if len(raw) > limit:
        raise InvalidInput(f"{where}: at most {limit} product ids")
    for pid in raw:
        try:
            validate_product_id(pid)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    return tuple(dict.fromkeys(raw))


@dataclass(frozen=True)
class Rule:
    """One saved rule (see the module docstring)."""

    id: str
    query: str | None = None  # normalised
    category: str | None = None
    pin: tuple[str, ...] = ()
    bury: tuple[str, ...] = ()
    boost: tuple[Boost, ...] = ()
    active_from: datetime | None = None
    active_until: datetime | None = None

    @classmethod
    def from_json(cls, raw: Any, where: str = "rule") -> Rule:
        """Validate one rule; :class:`InvalidInput` names what is wrong and where."""
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"{where}: a rule must be an object")
        unknown = set(raw) - {"id", "when", "pin", "bury", "boost", "active_from", "active_until"}
        if unknown:
            raise InvalidInput(f"{where}: unknown field {sorted(unknown)[0]!r}")
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid.strip() or len(rid) > MAX_ID_LENGTH:
            raise InvalidInput(f"{where}.id: a non-empty string of at most {MAX_ID_LENGTH} characters is required")
        where = f"rule {rid!r}"
        when = raw.get("when")
        if not isinstance(when, Mapping) or len(when) != 1 or next(iter(when)) not in ("query", "category"):
            raise InvalidInput(f'{where}: "when" must be {{"query": ...}} or {{"category": ...}}')
        (kind, value), *_ = when.items()
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{where}: when.{kind} must be a non-empty string")
        query = normalise_query(value) if kind == "query" else None
        if kind == "query" and not query:
            raise InvalidInput(f"{where}: when.query has no words")
        boosts = raw.get("boost") or []
        if not isinstance(boosts, list) or len(boosts) > MAX_BOOSTS:
            raise InvalidInput(f"{where}: boost must be a list of at most {MAX_BOOSTS}")
        boost = []
        for i, b in enumerate(boosts):
            if not isinstance(b, Mapping) or set(b) - {"filters", "factor"} or "factor" not in b:
                raise InvalidInput(f'{where}: boost[{i}] must be {{"filters": {{...}}, "factor": f}}')
            factor = b["factor"]
            if isinstance(factor, bool) or not isinstance(factor, int | float):
                raise InvalidInput(f"{where}: boost[{i}].factor must be a number")
            filters = filters_from_json(b.get("filters") or {}, f"{where}: boost[{i}].filters")
            try:
                boost.append(Boost(filters, float(factor)))
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: boost[{i}]: {exc}") from None
        start = _moment(raw.get("active_from"), f"{where}: active_from")
        end = _moment(raw.get("active_until"), f"{where}: active_until")
        if start is not None and end is not None and start >= end:
            raise InvalidInput(f"{where}: active_from must be before active_until")
        rule = cls(
            id=rid.strip(),
            query=query,
            category=value.strip() if kind == "category" else None,
            pin=_ids(raw.get("pin"), f"{where}: pin", MAX_PINS),
            bury=_ids(raw.get("bury"), f"{where}: bury", 1000),
            boost=tuple(boost),
            active_from=start,
            active_until=end,
        )
        if not (rule.pin or rule.bury or rule.boost):
            raise InvalidInput(f"{where}: a rule must pin, bury or boost something")
        return rule

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "when": {"query": self.query} if self.query is not None else {"category": self.category},
            "pin": list(self.pin),
            "bury": list(self.bury),
            "boost": [{"filters": filters_to_json(b.filters), "factor": b.factor} for b in self.boost],
            "active_from": None if self.active_from is None else self.active_from.isoformat(),
            "active_until": None if self.active_until is None else self.active_until.isoformat(),
        }
        return out

    def active(self, now: datetime) -> bool:
        return (self.active_from is None or self.active_from <= now) and (
            self.active_until is None or now < self.active_until
        )

    def fires(self, query: str | None, filters: Filters, now: datetime) -> bool:
        """Whether this rule applies to a request with normalised ``query`` and ``filters``."""
        if not self.active(now):
            return False
        if self.query is not None:
            return query == self.query
        return filters.categories is not None and self.category in filters.categories


@dataclass(frozen=True)
class RuleSet:
    """The saved rules of one version (0: none saved yet)."""

    rules: tuple[Rule, ...] = ()
    version: int = 0
    updated_at: datetime | None = None
    by_query: dict[str, tuple[Rule, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, rules: Sequence[Rule], version: int = 0, updated_at: datetime | None = None) -> RuleSet:
        if len(rules) > MAX_RULES:
            raise InvalidInput(f"at most {MAX_RULES} rules")
        seen: set[str] = set()
        for r in rules:
            if r.id in seen:
                raise InvalidInput(f"rule id {r.id!r} is used twice")
            seen.add(r.id)
        by_query: dict[str, list[Rule]] = {}
        for r in rules:
            if r.query is not None:
                by_query.setdefault(r.query, []).append(r)
        return cls(tuple(rules), version, updated_at, {q: tuple(rs) for q, rs in by_query.items()})

    @classmethod
    def from_json(cls, raw: Any) -> RuleSet:
        """``{"rules": [...]}`` as a client sends it or a saved version holds it."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("rules"), list):
            raise InvalidInput('rules must be sent as {"rules": [...]}')
        rules = [Rule.from_json(r, f"rules[{i}]") for i, r in enumerate(raw["rules"])]
        updated = raw.get("updated_at")
        version = raw.get("version", 0)
        return cls.of(rules, version if isinstance(version, int) else 0, _moment(updated, "updated_at"))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "rules": [r.to_json() for r in self.rules],
        }

    def fired(self, text: str | None, filters: Filters, now: datetime | None = None) -> list[Rule]:
        """The rules that fire for a request, in their saved order."""
        if not self.rules:
            return []
        now = now or datetime.now(UTC)
        query = normalise_query(text) if text else None
        candidates = [r for r in self.rules if r.category is not None] if filters.categories else []
        if query:
            candidates += self.by_query.get(query, ())
        if not candidates:  # most requests: no rule is about them
            return []
        order = {r.id: i for i, r in enumerate(self.rules)}
        return sorted((r for r in candidates if r.fires(query, filters, now)), key=lambda r: order[r.id])

    def merchandising(
        self, text: str | None, filters: Filters, request: Merchandising, now: datetime | None = None
    ) -> Merchandising:
        """``request`` plus what the rules firing for it add."""
        fired = self.fired(text, filters, now)
        if not fired:
            return request
        pins = list(request.pin)
        for r in fired:
            pins += r.pin
        return Merchandising(
            pin=tuple(dict.fromkeys(pins))[:MAX_PINS],
            boost=request.boost + tuple(b for r in fired for b in r.boost),
            bury=request.bury | frozenset(pid for r in fired for pid in r.bury),
            rules=tuple(r.id for r in fired),
        )


class RuleStore:
    """The saved rules in the bucket, and this process's copy of the current version."""

    def __init__(self, store: ObjectStore, refresh_seconds: float = 5.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._current: RuleSet | None = None
        self._tried = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def current(self) -> RuleSet:
        """The rules this process applies: read from the bucket on first use (once: a bucket
        that cannot be read then means no rules, never a failed request), then kept current by
        :meth:`start`'s thread and by this process's own saves."""
        if self._current is None and not self._tried:
            self._tried = True
            try:
                self.refresh()
            except Exception as exc:
                log.warning("merchandising rules not read (none apply until they are): %s", exc)
        return self._current or RuleSet()

    def refresh(self) -> bool:
        """Read the newest version if it changed. Whether it did."""
        try:
            pointer = json.loads(self.store.get_bytes(LATEST))
        except NotFound:
            changed = self._current is None
            self._current = self._current or RuleSet()
            return changed
        version = int(pointer["version"])
        if self._current is not None and self._current.version == version:
            return False
        loaded = self.read(version)
        with self._lock:  # the pointer is the truth (a concurrent save's too)
            self._current = loaded
        return True

    def read(self, version: int) -> RuleSet:
        """One saved version (:class:`NotFound` when it was pruned or never existed)."""
        raw = json.loads(self.store.get_bytes(_version_key(version)))
        return RuleSet.from_json(raw)

    def save(self, rules: Sequence[Rule]) -> RuleSet:
        """Store ``rules`` as the next version and apply them in this process at once."""
        with self._lock:
            try:
                latest = int(json.loads(self.store.get_bytes(LATEST))["version"])
            except NotFound:
                latest = 0
            saved = RuleSet.of(rules, latest + 1, datetime.now(UTC))
            body = json.dumps(saved.to_json(), sort_keys=True).encode()
            self.store.put_bytes(_version_key(saved.version), body, "application/json")
            self.store.put_bytes(LATEST, json.dumps({"version": saved.version}).encode(), "application/json")
            self._current = saved
        self._prune(saved.version)
        log.info("saved %d merchandising rules as version %d", len(rules), saved.version)
        return saved

    def _prune(self, newest: int) -> None:
        for obj in list(self.store.list(f"{PREFIX}versions/")):
            try:
                n = int(obj.key.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                continue
            if n <= newest - KEEP_VERSIONS:
                self.store.delete(obj.key)

    def start(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Follow new versions every ``refresh_seconds`` in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(max(self.refresh_seconds, 0.2)):
                try:
                    self.refresh()
                except Exception as exc:  # keep applying the last rules read
                    log.warning("merchandising rules refresh failed: %s", exc)
                    if on_error is not None:
                        on_error(exc)

        threading.Thread(target=loop, name="rules", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def _version_key(version: int) -> str:
    return f"{PREFIX}versions/{version:09d}.json"
