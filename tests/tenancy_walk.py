"""The route walk: every route of the OpenAPI document, called as another tenant, sees nothing.

Shared by the service tests (TestClient) and the production-stack test (uvicorn, Celery worker,
Postgres, S3). ``ROUTES`` classifies every ``(method, path)`` of ``/v1``; a route that is not
classified fails the walk, so a route added later cannot skip isolation:

* ``404``: called with tenant A's ids, tenant B gets 404 (never 403: no existence oracle);
* ``page``: B's list holds none of A's rows (``{"items": [], "total": 0}`` for B, who owns
  nothing yet);
* ``refers``: a create whose body names A's resources is refused as if they did not exist;
* ``own``: acts on B's own things only (creates, ``/me``); called with A's *names*, so a 409
  would reveal that A uses a name;
* ``public``: needs no resource (probe-query wrappers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Call = Callable[..., Any]
"""``call(method, url, **httpx_kwargs) -> response`` with one tenant's key."""

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/me"): "own",
    ("GET", "/v1/keys"): "keys",
    ("POST", "/v1/keys"): "own",
    ("DELETE", "/v1/keys/{key_id}"): "404",
    ("GET", "/v1/secrets"): "secrets",
    ("POST", "/v1/secrets"): "own",
    ("DELETE", "/v1/secrets/{name}"): "404",
    ("POST", "/v1/datasets"): "own",
    ("POST", "/v1/datasets/import"): "own",
    ("GET", "/v1/datasets"): "page",
    ("GET", "/v1/datasets/{dataset_id}"): "404",
    ("DELETE", "/v1/datasets/{dataset_id}"): "404",
    ("GET", "/v1/datasets/{dataset_id}/records"): "404",
    ("POST", "/v1/models"): "own",
    ("GET", "/v1/models"): "page",
    ("GET", "/v1/models/{model_id}"): "404",
    ("DELETE", "/v1/models/{model_id}"): "404",
    ("POST", "/v1/reward-specs"): "own",
    ("GET", "/v1/reward-specs"): "page",
    ("GET", "/v1/reward-specs/{spec_id}"): "404",
    ("DELETE", "/v1/reward-specs/{spec_id}"): "404",
    ("POST", "/v1/valuations"): "refers",
    ("GET", "/v1/valuations"): "page",
    ("GET", "/v1/valuations/{valuation_id}"): "404",
    ("DELETE", "/v1/valuations/{valuation_id}"): "404",
    ("POST", "/v1/valuations/{valuation_id}/cancel"): "404",
    ("GET", "/v1/valuations/{valuation_id}/scores"): "404",
    ("GET", "/v1/valuations/{valuation_id}/samples"): "404",
    ("GET", "/v1/valuations/{valuation_id}/distribution"): "404",
    ("GET", "/v1/valuations/{valuation_id}/distribution.png"): "404",
    ("POST", "/v1/valuations/{valuation_id}/selections"): "404",
    ("GET", "/v1/selections/{selection_id}"): "404",
    ("DELETE", "/v1/selections/{selection_id}"): "404",
    ("GET", "/v1/selections/{selection_id}/export"): "404",
    ("POST", "/v1/studies"): "refers",
    ("GET", "/v1/studies"): "page",
    ("POST", "/v1/studies/probe-queries"): "public",
    ("GET", "/v1/studies/{study_id}"): "404",
    ("DELETE", "/v1/studies/{study_id}"): "404",
    ("POST", "/v1/studies/{study_id}/cancel"): "404",
    ("GET", "/v1/studies/{study_id}/plot.{fmt}"): "404",
    ("POST", "/v1/score-sets"): "refers",
    ("GET", "/v1/score-sets"): "page",
    ("GET", "/v1/score-sets/compare"): "404",
    ("GET", "/v1/score-sets/{score_set_id}"): "404",
    ("DELETE", "/v1/score-sets/{score_set_id}"): "404",
    ("POST", "/v1/score-sets/{score_set_id}/cancel"): "404",
    ("GET", "/v1/score-sets/{score_set_id}/values"): "404",
    ("GET", "/v1/score-sets/{score_set_id}/distribution"): "404",
    ("GET", "/v1/score-sets/{score_set_id}/distribution.png"): "404",
    ("POST", "/v1/curations"): "refers",
    ("GET", "/v1/curations"): "page",
    ("GET", "/v1/curations/{curation_id}"): "404",
    ("DELETE", "/v1/curations/{curation_id}"): "404",
    ("POST", "/v1/curations/{curation_id}/cancel"): "404",
    ("GET", "/v1/curations/{curation_id}/export"): "404",
    ("POST", "/v1/warmup-runs"): "refers",
    ("GET", "/v1/warmup-runs"): "page",
    ("GET", "/v1/warmup-runs/{warmup_run_id}"): "404",
    ("GET", "/v1/warmup-runs/{warmup_run_id}/plot.{fmt}"): "404",
    ("DELETE", "/v1/warmup-runs/{warmup_run_id}"): "404",
    ("POST", "/v1/evaluations"): "refers",
    ("GET", "/v1/evaluations"): "page",
    ("GET", "/v1/evaluations/{evaluation_id}"): "404",
    ("DELETE", "/v1/evaluations/{evaluation_id}"): "404",
    ("POST", "/v1/evaluations/{evaluation_id}/cancel"): "404",
    ("GET", "/v1/evaluations/{evaluation_id}/examples"): "404",
    ("GET", "/v1/evaluations/{evaluation_id}/plot.{fmt}"): "404",
    ("GET", "/v1/label-studio/valuations/{valuation_id}/health"): "404",
    ("POST", "/v1/label-studio/valuations/{valuation_id}/setup"): "404",
    ("POST", "/v1/label-studio/valuations/{valuation_id}/predict"): "404",
    ("POST", "/v1/label-studio/valuations/{valuation_id}/webhook"): "404",
    ("POST", "/v1/webhooks"): "own",
    ("GET", "/v1/webhooks"): "page",
    ("GET", "/v1/webhooks/{webhook_id}"): "404",
    ("DELETE", "/v1/webhooks/{webhook_id}"): "404",
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): "404",
    ("GET", "/v1/webhook-deliveries"): "page",
    ("GET", "/v1/webhook-secret"): "own",
    ("POST", "/v1/webhook-secret"): "own",
}

PATH_IDS = {
    "dataset_id": "dataset",
    "model_id": "model",
    "spec_id": "reward_spec",
    "valuation_id": "valuation",
    "selection_id": "selection",
    "study_id": "study",
    "score_set_id": "score_set",
    "curation_id": "curation",
    "warmup_run_id": "warmup_run",
    "evaluation_id": "evaluation",
    "webhook_id": "webhook",
    "key_id": "key",
    "name": "secret",
}
"""Path parameter → the key of A's resource in ``ids``."""


def v1_routes(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, operations in openapi["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    ]


def url_for(path: str, ids: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        return "png" if name == "fmt" else ids[PATH_IDS[name]]

    return re.sub(r"\{(\w+)\}", fill, path)


def query_for(method: str, path: str, ids: dict[str, str]) -> dict[str, Any]:
    if path == "/v1/score-sets/compare":
        return {"a": ids["score_set"], "b": ids["score_set"], "a_column": "x", "b_column": "x"}
    if path.endswith("/distribution") or path.endswith("/distribution.png"):
        return {"column": "x"}
    return {}


def request_for(
    method: str, path: str, ids: dict[str, str], names: dict[str, str], adapter: bytes
) -> dict[str, Any]:
    """The body of a call: A's resources for ``refers``, A's names for ``own``."""
    a = ids
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/keys"): {"json": {"name": names["key"], "role": "member"}},
        ("POST", "/v1/secrets"): {
            "json": {"name": names["secret"], "value": "b-secret", "hosts": ["b.example.com"]}
        },
        ("POST", "/v1/datasets"): {
            "json": {"name": names["dataset"], "records": [{"prompt": "q", "response": "a"}]}
        },
        ("POST", "/v1/datasets/import"): {
            "data": {"name": names["dataset"], "mapping": '{"prompt": "q", "response": "a"}'},
            "files": {"file": ("d.jsonl", b'{"q": "q?", "a": "a"}\n')},
        },
        ("POST", "/v1/models"): {"json": {"name": names["model"], "source": "builtin:tiny-llama"}},
        ("POST", "/v1/reward-specs"): {
            "json": {"name": names["reward_spec"], "spec": {"kind": "exact_match"}}
        },
        ("POST", "/v1/valuations"): {
            "json": {
                "model_id": a["model"],
                "pool_dataset_id": a["dataset"],
                "probe_dataset_id": a["dataset"],
            }
        },
        ("POST", "/v1/valuations/{valuation_id}/selections"): {
            "json": {"rule": "top_k", "value": 1}
        },
        ("POST", "/v1/studies"): {
            "json": {
                "warmup_run_id": a["warmup_run"],
                "eval_dataset_id": a["dataset"],
                "probe_sets": [{"name": "p", "dataset_id": a["dataset"]}],
            }
        },
        ("POST", "/v1/studies/probe-queries"): {
            "json": {"strategy": "cot", "examples": [{"query": "q?", "pair": "1"}]}
        },
        ("POST", "/v1/score-sets"): {"json": {"scorer": "text", "dataset_id": a["dataset"]}},
        ("POST", "/v1/webhooks"): {
            "json": {"url": "https://b.example.com/hook", "event_types": ["job.succeeded"]}
        },
        ("POST", "/v1/curations"): {
            "json": {
                "dataset_id": a["dataset"],
                "pick": {
                    "method": "rank",
                    "by": {"score_set_id": a["score_set"], "column": "n_chars_response"},
                },
                "budget": 1,
            }
        },
        ("POST", "/v1/evaluations"): {
            "json": {
                "model_id": a["model"],
                "pool_dataset_id": a["dataset"],
                "target_dataset_id": a["dataset"],
                "budget": 1,
                "arms": [{"kind": "selection", "selection_id": a["selection"]}],
            }
        },
        ("POST", "/v1/warmup-runs"): {
            "data": {
                "model_id": a["model"],
                "lora_alpha": "16",
                "steps": "10",
                "learning_rates": "1e-4",
            },
            "files": {"adapters": ("adapter_model.safetensors", adapter)},
        },
    }
    return bodies.get((method, path), {})


def _refused_as_missing(response: Any) -> bool:
    """A 404, or a 422 that says a referenced resource does not exist."""
    if response.status_code == 404:
        return True
    if response.status_code != 422:
        return False
    message = response.json()["error"]["message"]
    return "does not exist" in message or "not found" in message


def walk(
    openapi: dict[str, Any],
    call_b: Call,
    ids: dict[str, str],
    names: dict[str, str],
    adapter: bytes,
) -> list[str]:
    """Call every ``/v1`` route as tenant B with tenant A's ids; the problems found."""
    problems: list[str] = []
    routes = v1_routes(openapi)
    for route in routes:
        if route not in ROUTES:
            problems.append(f"{route}: not classified in tests/tenancy_walk.py ROUTES")
    order = {"page": 0, "keys": 0, "secrets": 0, "404": 1, "refers": 2, "public": 3, "own": 4}
    # DELETEs last within their kind: one that wrongly succeeded must not hide a later check
    for method, path in sorted(
        routes, key=lambda r: (order.get(ROUTES.get(r, ""), 9), r[0] == "DELETE")
    ):
        kind = ROUTES.get((method, path))
        if kind is None:
            continue
        url = url_for(path, ids)
        kwargs = request_for(method, path, ids, names, adapter)
        response = call_b(method, url, params=query_for(method, path, ids), **kwargs)
        where = f"{method} {path} as tenant B"
        status = response.status_code
        if kind == "404" and status != 404:
            problems.append(f"{where}: {status} (expected 404): {response.text[:200]}")
        elif kind == "refers" and not _refused_as_missing(response):
            problems.append(f"{where}: {status}, not refused as missing: {response.text[:200]}")
        elif kind == "page":
            body = response.json() if status == 200 else None
            if not body or body.get("items") != [] or body.get("total") != 0:
                problems.append(f"{where}: {status} {response.text[:200]} (expected no rows)")
        elif kind == "keys":
            listed = {k["id"] for k in response.json()} if status == 200 else None
            if listed is None or ids["key"] in listed:
                problems.append(f"{where}: {status}; lists tenant A's key or fails")
        elif kind == "secrets":
            listed = [s["name"] for s in response.json()] if status == 200 else None
            if listed != []:
                problems.append(f"{where}: {status} {response.text[:200]} (expected [])")
        elif kind in ("own", "public") and not 200 <= status < 300:
            problems.append(f"{where}: {status} (expected success): {response.text[:200]}")
        leaked = [v for k, v in ids.items() if k not in ("key", "secret") and v in response.text]
        if kind in ("page", "keys", "secrets", "own", "public") and leaked:
            problems.append(f"{where}: response names tenant A's {leaked}")
    return problems


def unauthenticated(openapi: dict[str, Any], call: Call, ids: dict[str, str]) -> list[str]:
    """Every ``/v1`` route without a key (``call`` sends none, or a bad one) is a 401."""
    problems = []
    for method, path in v1_routes(openapi):
        response = call(method, url_for(path, ids), params=query_for(method, path, ids))
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if response.status_code != 401 or body.get("error", {}).get("code") != "unauthorized":
            problems.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
        elif not response.headers.get("www-authenticate", "").startswith("Bearer"):
            problems.append(f"{method} {path}: 401 without WWW-Authenticate: Bearer")
    return problems


def dumps(problems: list[str]) -> str:
    return json.dumps(problems, indent=1)
