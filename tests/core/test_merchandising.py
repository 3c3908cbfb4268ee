"""Merchandising and saved rules as pure logic: arrange(), boosts, rule parsing and firing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import InvalidInput
from core.merchandising import Boost, Merchandising, arrange, boosted
from core.recommend.history import EventState
from core.recommend.together import TogetherIndex
from core.rules import Rule, RuleSet, normalise_query
from core.types import Filters, Product

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def product(pid: str, category: str = "Bags", in_stock: bool = True) -> Product:
    return Product(pid, pid, "", category, 10.0, None, {}, NOW, NOW, in_stock=in_stock)


@dataclass(frozen=True)
class Item:
    product: Product
    score: float


def run(items: list[Item], merch: Merchandising, top_k: int = 10, extra: dict[str, Product] | None = None) -> list[str]:
    extra = extra or {}
    out = arrange(
        items,
        top_k,
        merch,
        Filters(),
        lambda it: it.product,
        lambda it: it.score,
        lambda it, s: replace(it, score=s),
        lambda pid: Item(extra[pid], 0.0) if pid in extra else None,
    )
    return [it.product.product_id for it in out]


ITEMS = [Item(product("A"), 0.9), Item(product("B", "Shoes"), 0.8), Item(product("C"), 0.7), Item(product("D"), 0.6)]


def test_pins_come_first_in_order_once_and_only_if_they_pass_the_filters() -> None:
    extra = {"X": product("X"), "GONE": product("GONE", in_stock=False)}
    got = run(ITEMS, Merchandising(pin=("C", "X", "GONE", "NOPE", "C")), extra=extra)
    assert got == ["C", "X", "A", "B", "D"]
    assert run(ITEMS, Merchandising(pin=("D",)), top_k=2) == ["D", "A"]


def test_burials_go_last_and_boosts_reorder_without_lowering() -> None:
    assert run(ITEMS, Merchandising(bury=frozenset({"A"}))) == ["B", "C", "D", "A"]
    shoes = Boost(Filters(categories=("Shoes",)), 2.0)
    assert run(ITEMS, Merchandising(boost=(shoes,))) == ["B", "A", "C", "D"]
    assert boosted(-0.4, 2.0) == -0.2 and boosted(0.4, 2.0) == 0.8
    with pytest.raises(InvalidInput):
        Boost(Filters(), 0.0)
    # A boost concerns products whatever their stock; the request's filters decide that.
    assert Boost(Filters(), 2.0).filters.matches(product("Z", in_stock=False))


def rule(**kw: object) -> Rule:
    return Rule.from_json({"id": "r1", "when": {"query": "Leather Boots!"}, "pin": ["P1"], **kw})


def test_a_query_rule_fires_for_its_normalised_query_inside_its_dates() -> None:
    r = rule(active_from=(NOW - timedelta(hours=1)).isoformat(), active_until=(NOW + timedelta(hours=1)).isoformat())
    rules = RuleSet.of([r])
    assert normalise_query("  LEATHER   boots. ") == "leather boots" == r.query
    assert [x.id for x in rules.fired("leather boots", Filters(), NOW)] == ["r1"]
    assert rules.fired("leather boots brown", Filters(), NOW) == []
    assert rules.fired("leather boots", Filters(), NOW + timedelta(hours=2)) == []
    assert rules.fired("leather boots", Filters(), NOW - timedelta(hours=2)) == []
    merch = rules.merchandising("Leather boots", Filters(), Merchandising(pin=("P9",)), NOW)
    assert merch.pin == ("P9", "P1") and merch.rules == ("r1",)


def test_a_category_rule_fires_for_requests_filtered_to_it() -> None:
    r = Rule.from_json({"id": "bags", "when": {"category": "Bags"}, "bury": ["B7"], "boost": [{"factor": 3}]})
    rules = RuleSet.of([r])
    assert [x.id for x in rules.fired(None, Filters(categories=("Shoes", "Bags")), NOW)] == ["bags"]
    assert rules.fired(None, Filters(categories=("Shoes",)), NOW) == []
    assert rules.fired("bags", Filters(), NOW) == []
    merch = rules.merchandising(None, Filters(categories=("Bags",)), Merchandising(), NOW)
    assert merch.bury == {"B7"} and merch.boost[0].factor == 3


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"id": "x", "when": {"query": "a", "category": "b"}, "pin": ["P"]}, "when"),
        ({"id": "x", "when": {"query": "!!"}, "pin": ["P"]}, "no words"),
        ({"id": "x", "when": {"query": "a"}}, "pin, bury or boost"),
        ({"id": "x", "when": {"query": "a"}, "boost": [{"factor": 0}]}, "factor"),
        ({"id": "x", "when": {"query": "a"}, "pin": ["a/b"]}, "slashes"),
        (
            {
                "id": "x",
                "when": {"query": "a"},
                "pin": ["P"],
                "active_from": "2027-01-02",
                "active_until": "2027-01-01",
            },
            "before",
        ),
        ({"id": "x", "when": {"query": "a"}, "pin": ["P"], "active_from": "soon"}, "ISO-8601"),
        ({"id": "x", "when": {"query": "a"}, "boost": [{"filters": {"colour": "red"}, "factor": 2}]}, "unknown filter"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(raw: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        Rule.from_json(raw)


def test_rule_ids_are_unique_and_rules_round_trip() -> None:
    r = rule(boost=[{"filters": {"category": ["Bags"], "attributes": {"color": "red"}}, "factor": 2}])
    with pytest.raises(InvalidInput, match="twice"):
        RuleSet.of([r, r])
    again = RuleSet.from_json(RuleSet.of([r], 3, NOW).to_json())
    assert again.rules == (r,) and again.version == 3 and again.updated_at == NOW


# ---- bought together ---------------------------------------------------------------------------
def _events(rows: list[tuple[str, str, str, float]]) -> EventState:
    from core.events import parse_events

    good, bad = parse_events(
        [
            {"event_id": f"e{i}", "user_id": u, "product_id": p, "event_type": t, "timestamp": ts}
            for i, (u, p, t, ts) in enumerate(rows)
        ]
    )
    assert not bad
    state = EventState()
    state.add(good)
    return state


def test_a_planted_pair_is_bought_together_first_and_sessions_split_on_gaps() -> None:
    t0 = NOW.timestamp() - 30 * 86400
    rows = []
    for k in range(40):  # 40 shoppers: every one buys the popular P0; half also P1 + P2 together
        u, ts = f"u{k}", t0 + k * 3600
        rows.append((u, "P0", "purchase", ts))
        if k % 2 == 0:
            rows += [(u, "P1", "add_to_cart", ts + 60), (u, "P2", "purchase", ts + 600)]
        else:
            rows.append((u, f"Q{k % 5}", "add_to_cart", ts + 60))
        rows.append((u, "P1" if k % 4 == 1 else "P3", "view", ts + 30))  # views are no basket
    rows += [("late", "P1", "purchase", t0), ("late", "P5", "purchase", t0 + 7200)]  # 2 h apart: two baskets
    index = TogetherIndex.build(_events(rows), gap_seconds=1800)
    top = index.together("P1", 5)
    assert top[0].product_id == "P2" and top[0].baskets == 20
    assert "P0" not in [t.product_id for t in top]  # in every basket: no more than chance
    assert "P5" not in [t.product_id for t in index.together("P1", 10)]
    assert index.together("P3", 5) == []  # viewed, never in a basket
    assert "P2" not in [t.product_id for t in index.together("P1", 5, allowed=lambda pid: pid != "P2")]
    assert index.together("unknown", 5) == []
