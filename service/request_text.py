"""Text no database stores, refused before any route sees it.

Postgres refuses NUL in text columns and no database stores a lone surrogate (JSON's
``"\\ud800"``); either one in an id, a name or a query parameter would fail in the driver, as a
500, long after validation. :func:`check_request_text` (a dependency of every ``/v1`` route)
answers it with a 422 naming the parameter or the body field. Dataset uploads check their
records themselves while they stream (``service.datasets.parsing``, whose check this reuses).
"""

from __future__ import annotations

import json

from fastapi import Request

from service.datasets.parsing import check_strings, may_hold_bad_chars


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def check_request_text(request: Request) -> None:
    """422 for NUL or a lone surrogate in a path or query parameter or a JSON body."""
    for name, value in request.path_params.items():
        check_strings(f"path.{name}", value)
    for name, value in request.query_params.multi_items():
        check_strings("query", {name: value})
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:  # no body, or one the route streams itself
        return
    if not _is_json(request.headers.get("content-type", "")):
        return
    body = await request.body()  # read already by FastAPI: this is its cached copy
    if not may_hold_bad_chars(body):
        return
    try:
        value = json.loads(body)
    except ValueError:
        return  # FastAPI's own parse has answered it
    check_strings("body", value)
