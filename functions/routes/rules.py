"""``PUT /rules`` and ``GET /rules``: the shop's saved merchandising rules."""

from fastapi import APIRouter, Depends, Request

from core.rules import Rule, RuleSet
from functions.routes.deps import api_of, in_memory_or_thread, require_api_key, require_writer
from functions.schemas import RulesIn, RulesOut

router = APIRouter(tags=["merchandising"])


def _out(rules: RuleSet) -> RulesOut:
    return RulesOut.model_validate(rules.to_json())


@router.put("/rules", response_model=RulesOut, dependencies=[Depends(require_writer)])
async def put_rules(request: Request, body: RulesIn) -> RulesOut:
    """Replace the saved rules (a new version in the bucket). This process applies them at once,
    every other query process within RECS_REFRESH_SECONDS."""
    raw = body.model_dump(mode="json", exclude_none=True)
    for rule in raw["rules"]:
        rule["when"] = {k: v for k, v in rule["when"].items() if v is not None}
    rules = [Rule.from_json(r, f"rules[{i}]") for i, r in enumerate(raw["rules"])]
    saved = await in_memory_or_thread(False, api_of(request).services.rules.save, rules)
    return _out(saved)


@router.get("/rules", response_model=RulesOut, dependencies=[Depends(require_api_key)])
async def get_rules(request: Request) -> RulesOut:
    """The rules this process applies (the newest saved version it has read)."""
    return _out(api_of(request).services.rules.current())
