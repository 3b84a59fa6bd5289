"""``sift label-studio push|connect|pull`` and ``sift argilla export``.

Wired into ``sift`` by ``register(sub)`` (``service/cli.py``); also runnable by itself, where
only httpx, pydantic (what :mod:`service.client` needs) and the tool's SDK are installed, e.g.
Label Studio's own virtualenv::

    python -m service.integrations.cli label-studio push --valuation $VAL --title pool

Sift: ``--url`` (or ``SIFT_URL``, default http://127.0.0.1:8000) and ``--api-key`` (or
``SIFT_API_KEY``, or the embedded default's ``.sift/api-key``: ``SIFT_API_KEY_FILE``), as the
other ``sift`` API commands. Label Studio: ``--ls-url`` (``LABEL_STUDIO_URL``, default
http://127.0.0.1:8080) and ``--ls-api-key`` (``LABEL_STUDIO_API_KEY``).

This module imports only the standard library: the client, the integrations and the tools'
SDKs are imported when a command runs (a missing SDK names the extra that installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

Command = Callable[[argparse.Namespace], None]


def _friendly(command: Command) -> Command:
    """A failed call (the client's SiftError, or a RuntimeError: a missing SDK, nothing to
    pull) ends with its message."""

    @wraps(command)
    def run(args: argparse.Namespace) -> None:
        from service.client import SiftError

        try:
            command(args)
        except (SiftError, RuntimeError) as e:
            raise SystemExit(f"sift {args.command} {args.action}: {e}") from None

    return run


def _sift(args: argparse.Namespace) -> Any:
    """A :class:`service.client.Client` from ``--url`` / ``--api-key`` and the environment."""
    from service.client import Client, api_key_from_env

    key = api_key_from_env(args.api_key)
    if not key:
        raise SystemExit(
            f"sift {args.command} {args.action}: no Sift API key: pass --api-key, set "
            "SIFT_API_KEY, or run where .sift/api-key exists (sift serve writes it)"
        )
    try:
        return Client(args.url, key, timeout=120.0)
    except ValueError as e:
        raise SystemExit(f"sift {args.command} {args.action}: {e}") from None


def _ls(args: argparse.Namespace) -> Any:
    from service.integrations import label_studio

    return label_studio.client(args.ls_url, args.ls_api_key)


def _only(items: list[str] | None) -> dict[str, str]:
    only: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--only {item!r}: write FIELD=VALUE (e.g. verdict=keep)")
        only[name.strip()] = value.strip()
    return only


def _connect(args: argparse.Namespace, sift: Any, ls: Any, project_id: int) -> int:
    from service.integrations import label_studio

    url = args.backend_url or label_studio.backend_url(sift.base_url, args.valuation)
    key = args.backend_key or sift.api_key
    backend_id = label_studio.connect(ls, project_id, url, key, keep_webhook=args.keep_webhook)
    print(
        f"connected Sift at {url} as ML backend {backend_id} of project {project_id}",
        file=sys.stderr,
    )
    if args.predict:
        label_studio.retrieve_predictions(ls, project_id)
        print(f"asked project {project_id} to retrieve predictions", file=sys.stderr)
    return backend_id


@_friendly
def cmd_push(args: argparse.Namespace) -> None:
    from service.integrations import label_studio

    config = (
        Path(args.label_config).read_text()
        if args.label_config
        else label_studio.DEFAULT_LABEL_CONFIG
    )
    with _sift(args) as sift:
        ls = _ls(args)
        pushed = label_studio.push(
            sift,
            ls,
            args.valuation,
            project_id=args.project,
            title=args.title,
            label_config=config,
            top=args.top,
            with_predictions=args.predictions,
        )
        out: dict[str, Any] = {"project_id": pushed.project_id, "n_tasks": pushed.n_tasks}
        if args.connect:
            out["ml_backend_id"] = _connect(args, sift, ls, pushed.project_id)
    print(json.dumps(out))
    print(
        f"pushed {pushed.n_tasks} tasks, best first, to project {pushed.project_id}",
        file=sys.stderr,
    )


@_friendly
def cmd_connect(args: argparse.Namespace) -> None:
    with _sift(args) as sift:
        backend_id = _connect(args, sift, _ls(args), args.project)
    print(json.dumps({"project_id": args.project, "ml_backend_id": backend_id}))


@_friendly
def cmd_pull(args: argparse.Namespace) -> None:
    from service.integrations import label_studio

    with _sift(args) as sift:
        dataset = label_studio.pull(sift, _ls(args), args.project, args.name, only=_only(args.only))
    print(json.dumps(dataset.model_dump(mode="json"), indent=2))
    print(
        f"pulled {dataset.n_records} annotated records as dataset {dataset.id}",
        file=sys.stderr,
    )


@_friendly
def cmd_argilla_export(args: argparse.Namespace) -> None:
    from service.integrations import argilla_export

    if args.valuation is None and args.curation is None:
        raise SystemExit("sift argilla export: give --valuation or --curation")
    with _sift(args) as sift:
        if args.curation is not None:
            summary = argilla_export.export_curation(
                sift, args.curation, Path(args.out), valuation_id=args.valuation, name=args.name
            )
        else:
            summary = argilla_export.export_valuation(
                sift,
                args.valuation,
                Path(args.out),
                top=args.top,
                keep_top=args.keep_top,
                name=args.name,
            )
    print(json.dumps(summary))


def _sift_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="Sift (default SIFT_URL or 127.0.0.1:8000)")
    parser.add_argument("--api-key", default=None, help="default SIFT_API_KEY, or .sift/api-key")


def _ls_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ls-url", default=None, help="default LABEL_STUDIO_URL or :8080")
    parser.add_argument("--ls-api-key", default=None, help="default LABEL_STUDIO_API_KEY")


def _backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend-url",
        default=None,
        help="Sift's ML backend URL as Label Studio's server reaches it (default: --url + "
        "/v1/label-studio/valuations/VALUATION)",
    )
    parser.add_argument(
        "--backend-key",
        default=None,
        help="the Sift key Label Studio stores and sends (default: --api-key; a read_only "
        "key will do)",
    )
    parser.add_argument("--predict", action="store_true", help="then retrieve predictions")
    parser.add_argument(
        "--keep-webhook",
        action="store_true",
        help="keep the webhook Label Studio adds for the backend (Sift ignores its events)",
    )


def register(sub: Any) -> None:
    """Add ``label-studio`` and ``argilla`` to ``sift``'s subcommands."""
    ls = sub.add_parser("label-studio", help="push a valuation to Label Studio, pull annotations")
    ls_sub = ls.add_subparsers(dest="action", required=True)
    push = ls_sub.add_parser(
        "push",
        help="a valuation's pool as tasks of a project, best first",
        description="Tasks carry sift_record_id, sift_score and sift_rank; --connect then "
        "adds Sift as the project's ML backend (scores as predictions).",
    )
    push.add_argument("--valuation", required=True)
    push.add_argument("--project", type=int, default=None, help="default: a new project")
    push.add_argument("--title", default=None, help="the new project's title")
    push.add_argument("--label-config", default=None, help="an XML file (default: keep/drop)")
    push.add_argument("--top", type=int, default=None, help="only the best N records")
    push.add_argument(
        "--predictions", action="store_true", help="import the scores as predictions too"
    )
    push.add_argument("--connect", action="store_true", help="then connect Sift as ML backend")
    for add in (_sift_args, _ls_args, _backend_args):
        add(push)
    push.set_defaults(func=cmd_push)
    connect = ls_sub.add_parser("connect", help="Sift as a project's ML backend")
    connect.add_argument("--valuation", required=True)
    connect.add_argument("--project", type=int, required=True)
    for add in (_sift_args, _ls_args, _backend_args):
        add(connect)
    connect.set_defaults(func=cmd_connect)
    pull = ls_sub.add_parser("pull", help="a project's annotated tasks as a new Sift dataset")
    pull.add_argument("--project", type=int, required=True)
    pull.add_argument("--name", required=True, help="the new dataset's name")
    pull.add_argument(
        "--only", action="append", metavar="FIELD=VALUE", help="e.g. verdict=keep (repeatable)"
    )
    _sift_args(pull)
    _ls_args(pull)
    pull.set_defaults(func=cmd_pull)

    argilla = sub.add_parser("argilla", help="export to Argilla's on-disk dataset format")
    argilla_sub = argilla.add_subparsers(dest="action", required=True)
    export = argilla_sub.add_parser(
        "export",
        help="a valuation (or a curation) as an rg.Dataset.to_disk folder",
        description="Load it with rg.Dataset.from_disk(DIR, client=rg.Argilla(...)).",
    )
    export.add_argument("--valuation", default=None)
    export.add_argument("--curation", default=None, help="(with --valuation: its scores)")
    export.add_argument("--out", required=True, help="a new or empty folder")
    export.add_argument("--top", type=int, default=None, help="only the best N (valuation)")
    export.add_argument(
        "--keep-top", type=int, default=None, help="suggest 'keep' for the best K (default 10%%)"
    )
    export.add_argument("--name", default=None, help="the Argilla dataset's name")
    _sift_args(export)
    export.set_defaults(func=cmd_argilla_export)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.integrations.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
