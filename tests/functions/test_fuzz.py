"""schemathesis against the app's own OpenAPI schema (bounded examples per operation): no 5xx,
status codes, content types and bodies as documented. Catalog on the S3 server, fake embedder."""

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from core.embedding import Embedder
from functions.app import create_app
from functions.services import Services
from tests.conftest import make_settings, new_bucket

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EXAMPLES = 20  # per operation


@pytest.fixture(scope="module")
def app(s3_endpoint: str, fake: Embedder) -> Any:
    services = Services.from_settings(make_settings(s3_endpoint, new_bucket(s3_endpoint, "fuzz")), embedder=fake)
    app = create_app(services)
    client = TestClient(app)
    for i in range(5):
        client.put(f"/products/F{i}", json={"title": f"fuzz product {i}", "category": "Misc", "price": 10 + i})
    client.post("/events", json=[{"user_id": "fz", "product_id": "F1", "event_type": "view"}])
    return app


def fuzz(op: Any, label: str, calls: dict[str, int]) -> Any:
    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        calls[label] += 1
        # Every check but "schema-valid data is accepted": some rules are not JSON Schema (an
        # image_base64 must decode to an image, min_price <= max_price, a rating needs a value).
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    return run


def test_every_operation_conforms_to_the_schema(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        calls[label] = 0

        try:
            fuzz(op, label, calls)()
        except Exception as exc:  # collect every operation's failures, report them all
            # A failure hypothesis could not replay (a stateful call such as a rollback) comes as
            # a group: say what the first call saw, not only that it was not reproduced.
            inner = [repr(e) for e in exc.exceptions] if isinstance(exc, BaseExceptionGroup) else []
            failures[label] = "; ".join([str(exc), *inner])[:4000]
    print(f"schemathesis: {sum(calls.values())} calls over {len(calls)} operations")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert sum(calls.values()) >= 10 * len(calls), calls  # examples really ran
