"""OpenAPI links join each create to the operations that take its id."""

from __future__ import annotations

import re

import pytest

from stockade.api.links import add_links
from stockade.testing import TestApp


async def test_creates_link_to_get_and_delete(stockade: TestApp) -> None:
    paths = (await stockade.client.get("/openapi.json")).json()["paths"]
    environment = paths["/api/v1/environments"]["post"]["responses"]["201"]["links"]
    assert environment["DeleteEnvironment"] == {
        "operationRef": "#/paths/~1api~1v1~1environments~1{env_id}/delete",
        "parameters": {"env_id": "$response.body#/id"},
    }
    job = paths["/daemon/tasks/add"]["post"]["responses"]["200"]["links"]
    assert job["GetJob"]["parameters"] == {"task_id": "$response.body#/task_id"}
    plan = paths["/api/execute"]["post"]["responses"]["200"]["links"]["RunPlan"]
    assert plan["requestBody"]["steps"] == "$response.body#/steps"


async def test_a_link_to_a_missing_operation_fails_the_build(stockade: TestApp) -> None:
    schema = (await stockade.client.get("/openapi.json")).json()
    del schema["paths"]["/api/v1/environments/{env_id}"]["delete"]
    with pytest.raises(KeyError, match=re.escape("DELETE /api/v1/environments/{env_id}")):
        add_links(schema)
