"""Regenerate the client's generated modules: ``python -m service.client.regenerate``.

* ``models.py`` from the API's OpenAPI document (``service.main.create_app().openapi()``) with
  datamodel-code-generator, so the client's request and response types are the server's;
* ``_sync.py`` from ``_async.py`` by rewriting its async syntax (the way httpcore keeps its two
  clients in step), so the two clients cannot drift apart.

``--check`` exits 1 naming each stale file instead of writing (``tests/client`` runs the same
comparison). This script imports the server (FastAPI and the rest); the client never imports
it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = HERE / "models.py"
ASYNC_SOURCE = HERE / "_async.py"
SYNC_TARGET = HERE / "_sync.py"

MODELS_HEADER = '''\
"""Request and response models of the Sift API, generated from its OpenAPI document.

Do not edit: ``python -m service.client.regenerate`` writes this file, and a test fails when it
differs from what the current routes generate.
"""

# ruff: noqa: E501
'''

CODEGEN_ARGS = [
    "--input-file-type",
    "openapi",
    "--output-model-type",
    "pydantic_v2.BaseModel",
    "--target-python-version",
    "3.11",
    "--use-annotated",
    "--use-standard-collections",
    "--use-union-operator",
    "--field-constraints",
    "--collapse-root-models",
    "--enum-field-as-literal",
    "all",
    "--output-datetime-class",
    "datetime",
    "--use-schema-description",
    "--use-double-quotes",
    "--disable-timestamp",
    "--formatters",
    "builtin",
]


def openapi_document() -> dict[str, Any]:
    """The schemas of the API's document. Only ``components`` matter to the models: the paths
    carry deployment settings (the page size limit) that must not change the generated file."""
    from service.main import create_app

    document = create_app().openapi()
    return {
        "openapi": document["openapi"],
        "info": {"title": document["info"]["title"], "version": document["info"]["version"]},
        "paths": {},
        "components": {"schemas": _nullable_as_type_list(document["components"]["schemas"])},
    }


def _nullable_as_type_list(node: Any) -> Any:
    """``anyOf: [{type: T, <constraints>}, {type: null}]`` as ``type: [T, null]`` with the
    constraints: the same schema (JSON Schema applies ``minimum``, ``maxLength``... only to
    their own type), which the generator writes as ``T | None`` with the constraints on the
    field instead of a wrapper class per field (``Budget(RootModel[int])``)."""
    if isinstance(node, list):
        return [_nullable_as_type_list(item) for item in node]
    if not isinstance(node, dict):
        return node
    branches = node.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
        (other,) = [b for b in branches if b != {"type": "null"}]
        kind = other.get("type") if isinstance(other, dict) else None
        if isinstance(kind, str) and kind != "null" and "$ref" not in other and len(other) > 1:
            node = {k: v for k, v in node.items() if k != "anyOf"} | other
            node["type"] = [kind, "null"]
    return {key: _nullable_as_type_list(value) for key, value in node.items()}


def _ruff(*args: str, source: str, filename: Path = MODELS) -> str:
    """``source`` through ruff (the repository's settings), as ``filename``."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(filename), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if result.returncode not in (0, 1) or not result.stdout:
        raise SystemExit(f"ruff {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def generate_models(document: dict[str, Any] | None = None) -> str:
    """The text of ``models.py`` for ``document`` (default: the current app's)."""
    document = document or openapi_document()
    with tempfile.TemporaryDirectory(prefix="sift-codegen-") as tmp:
        source, target = Path(tmp) / "openapi.json", Path(tmp) / "models.py"
        source.write_text(json.dumps(document, indent=1))
        cmd = [sys.executable, "-m", "datamodel_code_generator", "--input", str(source)]
        result = subprocess.run(
            [*cmd, "--output", str(target), *CODEGEN_ARGS], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(
                "datamodel-code-generator failed (install the dev extra: pip install -e "
                f"'.[dev]'):\n{result.stderr[-3000:]}"
            )
        text = target.read_text()
    # The tool's own header names a temporary file; ours says how to regenerate.
    body = re.sub(r"\A(#[^\n]*\n)+\s*", "", text)
    text = MODELS_HEADER + "\n" + body
    text = _ruff("check", "--fix", "--quiet", "--select", "I,F401,UP", source=text)
    return _ruff("format", "--quiet", source=text)


# --- the sync client from the async one -------------------------------------------------------

SYNC_HEADER = '''\
"""The blocking client. Generated from ``_async.py`` by ``python -m service.client.regenerate``:
do not edit; change ``_async.py`` and regenerate (a test fails when the two differ)."""
'''

# Whole-word replacements, in order. Anything named Async* loses the prefix.
UNASYNC_WORDS = [
    ("asynccontextmanager", "contextmanager"),
    ("AsyncIterator", "Iterator"),
    ("AsyncIterable", "Iterable"),
    ("aiter_bytes", "iter_bytes"),
    ("aiter_lines", "iter_lines"),
    ("aiter_raw", "iter_raw"),
    ("aclose", "close"),
    ("aread", "read"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("__aiter__", "__iter__"),
    ("__anext__", "__next__"),
    ("StopAsyncIteration", "StopIteration"),
    ("asleep", "sleep"),
    ("_AsyncResource", "_Resource"),
    ("afile_chunks", "file_chunks"),
    ("amultipart_chunks", "multipart_chunks"),
]


def unasync(source: str) -> str:
    """``_async.py`` rewritten as blocking code."""
    text = source
    if text.startswith('"""'):
        end = text.index('"""', 3) + 3
        text = SYNC_HEADER + "\n" + text[end:].lstrip("\n")
    text = re.sub(r"\basync def\b", "def", text)
    text = re.sub(r"\basync with\b", "with", text)
    text = re.sub(r"\basync for\b", "for", text)
    text = re.sub(r"\bawait\s+", "", text)
    for old, new in UNASYNC_WORDS:
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    text = re.sub(r"\bAsync([A-Z]\w*)", r"\1", text)
    # Sorted imports again, and `yield from` where an async generator had to loop.
    fixes = ("check", "--fix", "--unsafe-fixes", "--quiet", "--select", "I,UP028")
    text = _ruff(*fixes, source=text, filename=SYNC_TARGET)
    return _ruff("format", "--quiet", source=text, filename=SYNC_TARGET)


def generated() -> dict[Path, str]:
    """Every generated file and the text it should have."""
    return {MODELS: generate_models(), SYNC_TARGET: unasync(ASYNC_SOURCE.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(REPO)) for p in stale)
        print(f"stale: {names}; run python -m service.client.regenerate", file=sys.stderr)
        return 1
    if not stale:
        print("generated files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
