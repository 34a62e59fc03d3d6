"""OpenAPI links: which operations take the id that a create answered with.

A client generator, or a stateful fuzzer, follows them: create an environment, then get,
use and delete that one. Each link names its target by ``operationRef`` (the path and
method), so the table reads like the routes it joins; a target that no longer exists
fails the schema's build, and a test, rather than leaving a dead link.
"""

from __future__ import annotations

from typing import Any

# (method, path of the create, its success status) -> {link name: (method, target path,
# {parameter: runtime expression} or a request body)}.
Target = tuple[str, str, dict[str, Any]]

ENV = "/api/v1/environments/{env_id}"
TASK = "/api/v1/tasks/{task_id}"
JOB = "/daemon/tasks/{task_id}"

LINKS: dict[tuple[str, str, str], dict[str, Target]] = {
    ("post", "/api/v1/environments", "201"): {
        "GetEnvironment": ("get", ENV, {"env_id": "$response.body#/id"}),
        "ExecInEnvironment": ("post", f"{ENV}/exec", {"env_id": "$response.body#/id"}),
        "EnvironmentLogs": ("get", f"{ENV}/logs", {"env_id": "$response.body#/id"}),
        "GetVm": ("get", "/api/v1/vms/{vm_id}", {"vm_id": "$response.body#/id"}),
        "DeleteEnvironment": ("delete", ENV, {"env_id": "$response.body#/id"}),
    },
    ("post", "/api/v1/tasks", "201"): {
        "GetTask": ("get", TASK, {"task_id": "$response.body#/id"}),
        "CancelTask": ("delete", TASK, {"task_id": "$response.body#/id"}),
    },
    ("post", "/api/v1/api-keys", "201"): {
        "RevokeApiKey": ("delete", "/api/v1/api-keys/{key_id}", {"key_id": "$response.body#/id"}),
    },
    ("post", "/daemon/tasks/add", "200"): {
        "GetJob": ("get", JOB, {"task_id": "$response.body#/task_id"}),
        "RunJob": ("post", f"{JOB}/run", {"task_id": "$response.body#/task_id"}),
        "JobHistory": ("get", f"{JOB}/history", {"task_id": "$response.body#/task_id"}),
        "DeleteJob": ("delete", JOB, {"task_id": "$response.body#/task_id"}),
    },
}

# A plan (POST /api/execute) has no id to get or delete: its link hands the proposed steps
# to the run, as Luna's client does.
PLAN_RUN: dict[str, Any] = {
    "task_id": "$response.body#/task_id",
    "steps": "$response.body#/steps",
}


def add_links(schema: dict[str, Any]) -> None:
    """Declare ``LINKS`` (and the plan's run) on the responses of ``schema``, in place."""
    paths = schema["paths"]
    for (method, path, status), targets in LINKS.items():
        links = _response(paths, method, path, status).setdefault("links", {})
        for name, (target_method, target_path, parameters) in targets.items():
            links[name] = {
                "operationRef": _ref(paths, target_method, target_path),
                "parameters": parameters,
            }
    _response(paths, "post", "/api/execute", "200").setdefault("links", {})["RunPlan"] = {
        "operationRef": _ref(paths, "post", "/api/execute/run"),
        "requestBody": PLAN_RUN,
    }


def _response(paths: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    response: dict[str, Any] = paths[path][method]["responses"][status]
    return response


def _ref(paths: dict[str, Any], method: str, path: str) -> str:
    if method not in paths.get(path, {}):
        raise KeyError(f"link target {method.upper()} {path} is not in the schema")
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{escaped}/{method}"
