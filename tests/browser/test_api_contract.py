"""The JSON API, contract-fuzzed with schemathesis against the running server (uvicorn, the
test database, the test Redis): every generated request gets an answer the schema allows and
never a server error. Lives beside the browser tests because it shares their live server."""

from __future__ import annotations

import asyncio

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import status_code_conformance

from coordination import AgentCoordinator, EventType

from .conftest import in_plain_thread


@pytest.fixture(scope="module")
def api_token(server_env, django_db_blocker):
    from django.contrib.auth.models import User

    from coordination.models import ApiToken

    def issue():
        with django_db_blocker.unblock():
            return ApiToken.issue(User.objects.get(username="alice"), "schemathesis")[1]

    return in_plain_thread(issue)


@pytest.fixture(scope="module")
def api_schema(asgi_server, api_token, redis_server_url, browser_namespace):
    async def seed():
        for n in range(3):
            coord = AgentCoordinator(f"contract-{n}", redis_server_url, namespace=browser_namespace)
            await coord.publish(EventType.MESSAGE, {"text": "hello"})
            await coord.escalate("contract test")

    in_plain_thread(lambda: asyncio.run(seed()))
    response = requests.get(
        f"{asgi_server.url}/api/v1/openapi.json",
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=10,
    )
    response.raise_for_status()
    return schemathesis.openapi.from_dict(response.json())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_contract(case, asgi_server, api_token):
    case.call_and_validate(
        base_url=asgi_server.url,
        headers={"Authorization": f"Bearer {api_token}"},
        # Input the schema's types reject gets 422 from django-ninja's validation, a status
        # the generated schema does not list; everything else is checked as documented.
        excluded_checks=[status_code_conformance],
    )
