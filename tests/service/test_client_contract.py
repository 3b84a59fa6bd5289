"""The client kept in step with the API: its generated files are what the current routes and
``_async.py`` generate, every operation of the OpenAPI document has a client method, and
importing it pulls in nothing but the standard library, httpx and pydantic."""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import AsyncClient, Client, regenerate
from service.client.errors import ApiError
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]
HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def test_generated_files_are_up_to_date() -> None:
    for path, text in regenerate.generated().items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run `python -m service.client.regenerate` "
            "(a route's schema or _async.py changed)"
        )


def test_a_changed_schema_changes_the_models() -> None:
    """What makes the test above fail when a route changes."""
    document = regenerate.openapi_document()
    changed = copy.deepcopy(document)
    me = changed["components"]["schemas"]["Me"]
    me["properties"]["quota_left"] = {"type": "integer", "title": "Quota Left"}
    me["required"].append("quota_left")
    text = regenerate.generate_models(changed)
    assert "quota_left: Annotated[int" in text
    assert "quota_left" not in (REPO / "service/client/models.py").read_text()


def test_unasync_writes_blocking_code() -> None:
    source = (
        '"""doc"""\nclass AsyncThing(_AsyncResource):\n'
        "    async def go(self) -> AsyncIterator[int]:\n"
        "        async with self._stream('/x') as r:\n"
        "            async for chunk in r.aiter_bytes():\n"
        "                await asleep(1)\n"
        "                yield chunk\n"
    )
    out = regenerate.unasync(source)
    assert "class Thing(_Resource)" in out and "def go(self) -> Iterator[int]" in out
    assert "with self._stream" in out and "for chunk in r.iter_bytes()" in out
    assert "sleep(1)" in out and "async" not in out.split('"""', 2)[2]
    assert "await" not in out


# --- every operation reachable ----------------------------------------------------------------


def _operations() -> set[tuple[str, str]]:
    document = create_app().openapi()
    return {
        (method.upper(), template)
        for template, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }


def _template_of(url_path: str, templates: set[str]) -> str | None:
    """The document's path template that ``url_path`` is (literal segments win, as the router
    matches ``/v1/score-sets/compare`` before ``/v1/score-sets/{score_set_id}``)."""
    fits = []
    for template in templates:
        parts = re.split(r"\{[^}/]+\}", template)
        if re.fullmatch("[^/]+".join(re.escape(p) for p in parts), url_path):
            fits.append((len(parts), template))
    return min(fits)[1] if fits else None


class _Refused(Exception):
    pass


def _argument(name: str, annotation: str, tmp: Path) -> Any:
    """A value for a required parameter, by its name (any value does: no request gets an
    answer, each is recorded and refused)."""
    file = tmp / "file.jsonl"
    file.write_text('{"prompt": "p", "response": "r"}\n')
    by_name: dict[str, Any] = {
        "file": file,
        "to": tmp / "out.jsonl",
        "checkpoints": [(1, 1e-4, file)],
        "lora_alpha": 16.0,
        "records": [{"prompt": "p", "response": "r"}],
        "mapping": {"prompt": "q", "response": "a"},
        "source": {"path": "x"} if "Mapping" in annotation else "builtin:tiny-llama",
        "spec": {"kind": "exact_match"},
        "hosts": ["example.com"],
        "examples": [{"query": "q", "pair": "p"}],
        "strategy": "cot",
        "tasks": [{"id": 1, "data": {"sift_record_id": "r"}}],
        "url": "https://example.com/hook",
        "event_types": ["job.succeeded"],
    }
    return by_name.get(name, "ID1")


def _calls(sift: Client, tmp: Path) -> Iterator[tuple[str, Any]]:
    """Every public method of the client and its resources, with its required arguments."""
    groups = {"client": sift} | {
        name: value for name, value in vars(sift).items() if hasattr(value, "_c")
    }
    for group_name, group in groups.items():
        for name, method in inspect.getmembers(group, inspect.ismethod):
            if name.startswith("_") or (group_name == "client" and name in ("wait", "close")):
                continue
            signature = inspect.signature(method)
            kwargs = {
                p.name: _argument(p.name, str(p.annotation), tmp)
                for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            }
            yield f"{group_name}.{name}", lambda m=method, kw=kwargs: m(**kw)


def test_every_operation_of_the_document_has_a_client_method(tmp_path: Path) -> None:
    operations = _operations()
    templates = {template for _, template in operations}
    requested: dict[tuple[str, str], list[str]] = {}
    unknown: list[str] = []
    current = [""]

    def record(request: httpx.Request) -> httpx.Response:
        template = _template_of(request.url.path, templates)
        if template is None:
            unknown.append(f"{current[0]}: {request.method} {request.url.path}")
        else:
            requested.setdefault((request.method, template), []).append(current[0])
        raise _Refused  # no answer: the method's request is all this test needs

    http = httpx.Client(transport=httpx.MockTransport(record), base_url="http://sift.test")
    sift = Client("http://sift.test", "k", http=http)
    names = []
    for name, call in _calls(sift, tmp_path):
        current[0] = name
        names.append(name)
        with pytest.raises((_Refused, ApiError)):
            result = call()
            if inspect.isgenerator(result):
                list(result)
    assert len(names) > 60
    assert not unknown, f"client methods calling routes the document lacks: {unknown}"
    missing = sorted(operations - set(requested))
    assert not missing, f"operations without a client method: {missing}"


def test_the_async_client_has_the_same_methods() -> None:
    sync, asynchronous = Client("http://x", "k"), AsyncClient("http://x", "k")

    def surface(client: Any) -> set[str]:
        groups = {"": client} | {n: v for n, v in vars(client).items() if hasattr(v, "_c")}
        return {
            f"{g}.{name}"
            for g, group in groups.items()
            for name, _ in inspect.getmembers(group, inspect.ismethod)
            if not name.startswith("_")
        }

    assert surface(sync) - {".close", ".__enter__", ".__exit__"} == surface(asynchronous) - {
        ".aclose",
        ".__aenter__",
        ".__aexit__",
    }


# --- what importing the client costs ----------------------------------------------------------


def test_importing_the_client_imports_only_stdlib_httpx_and_pydantic() -> None:
    code = (
        "import sys\n"
        "import httpx, pydantic\n"
        "httpx.Client().close()  # what httpx and pydantic import lazily, in the baseline\n"
        "class Probe(pydantic.BaseModel):\n"
        "    a: int | None = None\n"
        "pydantic.TypeAdapter(list[Probe]).validate_python([{'a': 1}])\n"
        "before = set(sys.modules)\n"
        "theirs = {m.split('.')[0] for m in before}  # httpx, pydantic and what they use\n"
        "import service.client\n"
        "from service.client import Client, AsyncClient, models, errors\n"
        "Client('http://127.0.0.1:1', 'k').close()\n"
        "new = sorted(set(sys.modules) - before)\n"
        "ours = [m for m in new if m.split('.')[0] == 'service']\n"
        "others = [m for m in new if m.split('.')[0] not in theirs | {'service'}\n"
        "          and m.split('.')[0] not in sys.stdlib_module_names\n"
        "          and not m.startswith('_sysconfigdata')]\n"
        "print('SERVICE', ours)\n"
        "print('OTHERS', others)\n"
        "bad = [m for m in ours if m != 'service' and not m.startswith('service.client')]\n"
        "bad += [m for m in sys.modules if m.split('.')[0] in\n"
        "        ('fastapi', 'starlette', 'sqlalchemy', 'celery', 'torch', 'workers',\n"
        "         'pydantic_settings', 'uvicorn', 'boto3')]\n"
        "assert not bad, bad\n"
        "assert not others, others\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "service.client._sync" in result.stdout  # the check saw the client being imported
