"""``sift`` commands that drive a running API through ``service.client`` only: upload, register,
start jobs with ``--wait`` and a live progress bar, show scores, select, export, ``--json``.

``service.cli`` registers them (``add_api_commands``) next to the operator commands; nothing
here touches the database or the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

API_EPILOG = """\
configuration: SIFT_URL (default http://127.0.0.1:8000) and SIFT_API_KEY (else the embedded
default's key file, SIFT_API_KEY_FILE or .sift/api-key); --url and --api-key override them.
--json prints the API's JSON on stdout (progress and messages go to stderr). Exit status: 0
done, 1 the API refused or could not be reached, 3 a job waited on failed or was cancelled,
4 --timeout passed while the job still runs."""

EXIT_API, EXIT_JOB_FAILED, EXIT_TIMEOUT = 1, 3, 4


class _ApiCommand:
    """Shared by every API subcommand: the client from flags and environment, output as a
    human summary or as JSON, and the API's errors as one clear line and an exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))

    def client(self) -> Any:
        from service.client import Client, RetryPolicy, api_key_from_env

        key = api_key_from_env(self.args.api_key)
        if not key:
            raise SystemExit(
                "sift: no API key: pass --api-key, set SIFT_API_KEY, or run where .sift/api-key "
                "exists (sift serve writes it)"
            )
        try:
            retry = RetryPolicy(max_retries=max(0, self.args.retries))
            return Client(self.args.url, key, timeout=self.args.http_timeout, retry=retry)
        except ValueError as e:
            raise SystemExit(f"sift: {e}") from None

    def emit(self, value: Any, human: Any = None) -> None:
        """``value`` (a model, a list of them, or plain JSON) as JSON with --json, else
        ``human`` (a string or a rich renderable) or the JSON pretty-printed."""
        if self.json:
            print(json.dumps(_plain(value), indent=2, ensure_ascii=False))
            return
        if human is None:
            human = json.dumps(_plain(value), indent=2, ensure_ascii=False)
        if isinstance(human, str):
            print(human)
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console = Console(width=200)  # piped: wide enough that ids stay whole
            console.print(human)

    def run(self, body: Any) -> None:
        from service.client import ApiError, JobFailedError, SiftError, WaitTimeoutError

        try:
            body(self)
        except JobFailedError as e:
            self._fail(EXIT_JOB_FAILED, str(e), {"status": e.status, "error": e.error})
        except WaitTimeoutError as e:
            self._fail(EXIT_TIMEOUT, str(e), {"status": getattr(e.resource, "status", None)})
        except ApiError as e:
            self._fail(EXIT_API, str(e), e.to_dict())
        except SiftError as e:
            self._fail(EXIT_API, str(e), {"code": type(e).__name__, "message": str(e)})

    def _fail(self, status: int, message: str, detail: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps({"error": detail}, indent=2))
        print(f"sift: {message}", file=sys.stderr)
        raise SystemExit(status)


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _json_arg(text: str | None, flag: str) -> Any:
    """A JSON value given inline or as ``@file``."""
    if text is None:
        return None
    try:
        source = Path(text[1:]).read_text() if text.startswith("@") else text
        return json.loads(source)
    except OSError as e:
        raise SystemExit(f"sift: {flag} {text}: {e.strerror or e}") from None
    except ValueError as e:
        raise SystemExit(f"sift: {flag} is not valid JSON: {e}") from None


def _request(args: argparse.Namespace, **flags: Any) -> dict[str, Any]:
    """The body of a start command: ``--request`` (JSON or @file) with the flags on top."""
    body = _json_arg(getattr(args, "request", None), "--request") or {}
    if not isinstance(body, dict):
        raise SystemExit("sift: --request must be a JSON object")
    settings = _json_arg(getattr(args, "settings", None), "--settings")
    if settings is not None:
        flags["settings"] = settings
    body.update({k: v for k, v in flags.items() if v is not None})
    return body


class _ProgressDisplay:
    """``wait(progress=...)`` on the terminal: a live rich bar (stage, done/total, ETA) when
    stderr is a terminal, else one plain line per change, so logs and pipes show it too."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self._bar: Any = None
        self._task: Any = None
        self._last = ""

    def __enter__(self) -> _ProgressDisplay:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.fields[stage]:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, p: Any) -> None:
        from service.client._core import format_seconds

        stage = p.stage or p.status
        eta = format_seconds(p.eta_s) if p.eta_s is not None else "?"
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("", total=None, stage=stage, eta=eta)
            self._bar.update(
                self._task, completed=p.done, total=p.total or None, stage=stage, eta=eta
            )
            return
        line = p.describe()
        if line != self._last:
            self._last = line
            print(f"  {line}", file=sys.stderr, flush=True)


def _wait(cmd: _ApiCommand, sift: Any, resource: Any, kind: str | None = None) -> Any:
    timeout = getattr(cmd.args, "timeout", None)
    try:
        with _ProgressDisplay() as show:
            done = sift.wait(
                resource,
                kind=kind,
                progress=show,
                timeout=timeout,
                poll_interval=getattr(cmd.args, "poll_interval", 1.0),
            )
    except KeyboardInterrupt:
        job_id = getattr(resource, "id", resource)
        raise SystemExit(f"\nsift: stopped waiting; {job_id} keeps running") from None
    for note in getattr(done, "notes", None) or []:
        print(f"  note: {note}", file=sys.stderr)
    return done


def _job_line(kind: str, r: Any) -> str:
    progress = f" {r.progress.done}/{r.progress.total}" if r.progress.total else ""
    error = f"\n  error: {r.error}" if r.error else ""
    return f"{kind} {r.id}: {r.status} {r.stage or ''}{progress}{error}".rstrip()


def _start_job(cmd: _ApiCommand, kind: str, create: Any) -> None:
    sift = cmd.client()
    with sift:
        resource = create(sift)
        print(f"{kind} {resource.id} {resource.status}", file=sys.stderr)
        if cmd.args.wait:
            resource = _wait(cmd, sift, resource)
        cmd.emit(resource, _job_line(kind, resource))


def _show_job(cmd: _ApiCommand, kind: str, action: str) -> None:
    sift = cmd.client()
    with sift:
        group = getattr(sift, {"study": "studies"}.get(kind, kind + "s"))
        if action == "get":
            resource = group.get(cmd.args.id)
        elif action == "cancel":
            resource = group.cancel(cmd.args.id)
        else:
            resource = _wait(cmd, sift, cmd.args.id, kind=kind)
        cmd.emit(resource, _job_line(kind, resource))


def _list(cmd: _ApiCommand, group: str, columns: list[str]) -> None:
    from rich.table import Table

    sift = cmd.client()
    with sift:
        page = getattr(sift, group).list(limit=cmd.args.limit, offset=cmd.args.offset)
    title = f"{group} {page.offset + 1}-{page.offset + len(page.items)} of {page.total}"
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")  # ids are never cut short
    for item in page.items:
        row = item.model_dump(mode="json")
        table.add_row(*[_cell(row.get(c)) for c in columns])
    cmd.emit(page, table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)[:60]
    return str(value)


def cmd_me(args: argparse.Namespace) -> None:
    def body(cmd: _ApiCommand) -> None:
        with cmd.client() as sift:
            me = sift.me()
        cmd.emit(me, f"tenant {me.tenant_name} ({me.tenant_id}), role {me.role}, key {me.key_id}")

    _ApiCommand(args).run(body)


def cmd_datasets_api(args: argparse.Namespace) -> None:
    def summary(d: Any) -> str:
        subtasks = ", ".join(f"{k}: {v}" for k, v in d.subtasks.items())
        extra = f"; subtasks {subtasks}" if subtasks else ""
        return (
            f"dataset {d.id} {d.name!r}: {d.n_records} records ({d.n_duplicates} exact "
            f"duplicates skipped, {d.n_prompt_only} prompt-only){extra}"
        )

    def body(cmd: _ApiCommand) -> None:
        if args.action == "list":
            return _list(cmd, "datasets", ["id", "name", "n_records", "created_at"])
        with cmd.client() as sift:
            if args.action == "upload":
                started = time.monotonic()
                dataset = sift.datasets.upload(args.file, name=args.name)
                print(f"uploaded {args.file} in {time.monotonic() - started:.1f}s", file=sys.stderr)
                cmd.emit(dataset, summary(dataset))
            elif args.action == "get":
                dataset = sift.datasets.get(args.id)
                cmd.emit(dataset, summary(dataset))
            elif args.action == "records":
                page = sift.datasets.records(args.id, limit=args.limit, offset=args.offset)
                cmd.emit(page)
            else:
                sift.datasets.delete(args.id, cascade=args.cascade)
                cmd.emit({"deleted": args.id}, f"deleted dataset {args.id}")

    _ApiCommand(args).run(body)


def cmd_models_api(args: argparse.Namespace) -> None:
    def body(cmd: _ApiCommand) -> None:
        if args.action == "list":
            return _list(cmd, "models", ["id", "name", "source", "created_at"])
        with cmd.client() as sift:
            if args.action == "register":
                model = None
                if args.reuse:
                    model = next((m for m in sift.models.iter() if m.source == args.source), None)
                model = model or sift.models.create(args.name or args.source, args.source)
                cmd.emit(model, f"model {model.id} {model.name!r}: {model.source}")
            else:
                sift.models.delete(args.id, cascade=args.cascade)
                cmd.emit({"deleted": args.id}, f"deleted model {args.id}")

    _ApiCommand(args).run(body)


def _scores_table(page: Any, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("rank", "score", "record", "per subtask"):
        table.add_column(column, overflow="fold")
    for item in page.items:
        subtasks = "  ".join(f"{k} {v:+.4f}" for k, v in sorted(item.per_subtask.items()))
        table.add_row(str(item.rank), f"{item.score:+.4f}", item.record_id, subtasks)
    return table


def cmd_valuations_api(args: argparse.Namespace) -> None:
    def body(cmd: _ApiCommand) -> None:
        action = args.action
        if action == "start":
            request = _request(
                args,
                model_id=args.model,
                pool_dataset_id=args.pool,
                probe_dataset_id=args.probes,
                method=args.method,
                reward_spec_id=args.reward_spec,
            )
            return _start_job(cmd, "valuation", lambda s: s.valuations.create(request))
        if action in ("get", "wait", "cancel"):
            return _show_job(cmd, "valuation", action)
        if action == "list":
            return _list(cmd, "valuations", ["id", "method", "status", "stage", "created_at"])
        with cmd.client() as sift:
            if action == "scores":
                page = sift.valuations.scores(args.id, limit=args.limit, offset=args.offset)
                title = (
                    f"valuation {args.id}: ranks {page.offset}-{page.offset + len(page.items) - 1}"
                    f" of {page.total}"
                )
                cmd.emit(page, _scores_table(page, title))
            elif action == "select":
                rule, value = next(
                    (r, v)
                    for r, v in (
                        ("top_k", args.top_k),
                        ("top_fraction", args.top_fraction),
                        ("threshold", args.threshold),
                    )
                    if v is not None
                )
                sel = sift.valuations.select(args.id, rule=rule, value=value, order=args.order)
                cmd.emit(
                    sel,
                    f"selection {sel.id}: {sel.n_selected} records ({rule} {value:g}, "
                    f"{sel.order}); export with: sift selections export {sel.id}",
                )
            else:
                sift.valuations.delete(args.id)
                cmd.emit({"deleted": args.id}, f"deleted valuation {args.id}")

    _ApiCommand(args).run(body)


def _export(cmd: _ApiCommand, group: Any, resource_id: str, out: str | None) -> None:
    if out:
        started = time.monotonic()
        path = group.download(resource_id, out)
        n = sum(1 for line in path.open("rb") if line.strip())
        seconds = time.monotonic() - started
        cmd.emit(
            {"path": str(path), "records": n}, f"wrote {n} records to {path} in {seconds:.1f}s"
        )
        return
    for record in group.export(resource_id):  # JSONL on stdout, --json or not
        print(json.dumps(record, ensure_ascii=False))


def cmd_selections_api(args: argparse.Namespace) -> None:
    def body(cmd: _ApiCommand) -> None:
        with cmd.client() as sift:
            if args.action == "export":
                _export(cmd, sift.selections, args.id, args.output)
            elif args.action == "get":
                sel = sift.selections.get(args.id)
                cmd.emit(
                    sel,
                    f"selection {sel.id} of valuation {sel.valuation_id}: "
                    f"{sel.n_selected} records ({sel.rule} {sel.value:g}, {sel.order})",
                )
            else:
                sift.selections.delete(args.id)
                cmd.emit({"deleted": args.id}, f"deleted selection {args.id}")

    _ApiCommand(args).run(body)


def cmd_score_sets_api(args: argparse.Namespace) -> None:
    def body(cmd: _ApiCommand) -> None:
        action = args.action
        if action == "start":
            request = _request(
                args,
                scorer=args.scorer,
                dataset_id=args.dataset,
                model_id=args.model,
                probe_dataset_id=args.probes,
                reward_spec_id=args.reward_spec,
                name=args.name,
            )
            return _start_job(cmd, "score_set", lambda s: s.score_sets.create(request))
        if action in ("get", "wait", "cancel"):
            return _show_job(cmd, "score_set", action)
        if action == "list":
            return _list(cmd, "score_sets", ["id", "scorer", "status", "stage", "created_at"])
        with cmd.client() as sift:
            if action == "delete":
                sift.score_sets.delete(args.id)
                return cmd.emit({"deleted": args.id}, f"deleted score set {args.id}")
            page = sift.score_sets.values(args.id, limit=args.limit, offset=args.offset)
            from rich.table import Table

            columns = sorted({c for item in page.items for c in item.values})
            table = Table(title=f"score set {args.id}: {page.total} records")
            for column in ("record", *columns):
                table.add_column(column, overflow="fold")
            for item in page.items:
                cells = [_number(item.values.get(c)) for c in columns]
                table.add_row(item.record_id, *cells)
            cmd.emit(page, table)

    _ApiCommand(args).run(body)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _job_group(kind: str, plural: str) -> Any:
    """``sift curations|studies|evaluations``: start from a JSON request, then follow it."""

    def command(args: argparse.Namespace) -> None:
        def body(cmd: _ApiCommand) -> None:
            if args.action == "start":
                request = _request(args)
                if not request:
                    raise SystemExit(f"sift {plural} start: give the request with --request")
                group = plural.replace("-", "_")
                return _start_job(cmd, kind, lambda s: getattr(s, group).create(request))
            if args.action in ("get", "wait", "cancel"):
                return _show_job(cmd, kind, args.action)
            if args.action == "list":
                return _list(cmd, plural.replace("-", "_"), ["id", "status", "stage", "created_at"])
            with cmd.client() as sift:
                if args.action == "export":
                    return _export(cmd, sift.curations, args.id, args.output)
                getattr(sift, plural.replace("-", "_")).delete(args.id)
                cmd.emit({"deleted": args.id}, f"deleted {kind} {args.id}")

        _ApiCommand(args).run(body)

    return command


def _api_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="the API (default: SIFT_URL)")
    common.add_argument("--api-key", default=None, help="default: SIFT_API_KEY")
    common.add_argument("--json", action="store_true", help="print the API's JSON on stdout")
    common.add_argument(
        "--http-timeout", type=float, default=120.0, help="seconds per HTTP request (120)"
    )
    common.add_argument(
        "--retries",
        type=int,
        default=4,
        help="retries of a 429/503 or a lost connection, with backoff (4)",
    )
    return common


def _add_api_parser(
    group: Any, name: str, help_text: str, example: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    return group.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}\n\n{API_EPILOG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )


def _add_job_actions(
    sub: Any, kind: str, plural: str, common: argparse.ArgumentParser, *, list_help: bool = True
) -> None:
    noun = kind.replace("_", " ")
    for action, text in (
        ("get", f"a {noun}'s state"),
        ("wait", f"follow a {noun} with a progress bar until it finishes"),
        ("cancel", f"cancel a queued or running {noun}"),
        ("delete", f"delete a {noun} (a live one is cancelled)"),
    ):
        p = _add_api_parser(sub, action, text, f"sift {plural} {action} ID", common)
        p.add_argument("id")
        if action == "wait":
            p.add_argument("--timeout", type=float, default=None, help="seconds (default: none)")
            p.add_argument("--poll-interval", type=float, default=1.0, help="seconds (1)")
    if list_help:
        p = _add_api_parser(sub, "list", f"{noun}s, newest first", f"sift {plural} list", common)
        p.add_argument("--limit", type=int, default=20)
        p.add_argument("--offset", type=int, default=0)


def _start_options(p: argparse.ArgumentParser, *, settings: bool = True) -> None:
    p.add_argument(
        "--request",
        default=None,
        help="the whole request body as JSON or @file.json; the other flags are set on top of it",
    )
    if settings:
        p.add_argument("--settings", default=None, help="the settings object, JSON or @file")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after S s")
    p.add_argument("--poll-interval", type=float, default=1.0, help="with --wait: seconds (1)")


def add_api_commands(sub: Any, data_sub: Any) -> None:
    """The subcommands that drive a running API (``service.client``)."""
    common = _api_options()

    me = _add_api_parser(sub, "me", "the API key's tenant and role", "sift me", common)
    me.set_defaults(func=cmd_me)

    # datasets: next to the existing `datasets import`
    up = _add_api_parser(
        data_sub,
        "upload",
        "upload a JSONL file (streamed from disk)",
        "sift datasets upload service/demo_data/pool.jsonl --name pool",
        common,
    )
    up.add_argument("file")
    up.add_argument("--name", default=None, help="default: the file's name without .jsonl")
    for action, text in (("get", "one dataset"), ("delete", "delete a dataset")):
        p = _add_api_parser(data_sub, action, text, f"sift datasets {action} ID", common)
        p.add_argument("id")
        if action == "delete":
            p.add_argument("--cascade", action="store_true", help="and the jobs that read it")
    rec = _add_api_parser(
        data_sub, "records", "a page of a dataset's records", "sift datasets records ID", common
    )
    rec.add_argument("id")
    rec.add_argument("--limit", type=int, default=20)
    rec.add_argument("--offset", type=int, default=0)
    lst = _add_api_parser(data_sub, "list", "datasets, newest first", "sift datasets list", common)
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--offset", type=int, default=0)
    for p in (up, rec, lst, *[data_sub.choices[a] for a in ("get", "delete")]):
        p.set_defaults(func=cmd_datasets_api)

    models = sub.add_parser("models", help="register, list and delete models (API)")
    models_sub = models.add_subparsers(dest="action", required=True)
    reg = _add_api_parser(
        models_sub,
        "register",
        "register a model: builtin:tiny-llama, a local HF folder or .gguf, or a hub id",
        "sift models register builtin:tiny-llama --name tiny --reuse",
        common,
    )
    reg.add_argument("source")
    reg.add_argument("--name", default=None, help="default: the source")
    reg.add_argument(
        "--reuse", action="store_true", help="print an already registered model of this source"
    )
    mlist = _add_api_parser(models_sub, "list", "models, newest first", "sift models list", common)
    mlist.add_argument("--limit", type=int, default=20)
    mlist.add_argument("--offset", type=int, default=0)
    mdel = _add_api_parser(
        models_sub, "delete", "unregister a model", "sift models delete ID", common
    )
    mdel.add_argument("id")
    mdel.add_argument("--cascade", action="store_true")
    models.set_defaults(func=cmd_models_api)

    val = sub.add_parser("valuations", help="value a pool, read its scores, select (API)")
    val_sub = val.add_subparsers(dest="action", required=True)
    start = _add_api_parser(
        val_sub,
        "start",
        "start a valuation of a pool against probes",
        "sift valuations start --model $MODEL --pool $POOL --probes $PROBES --method less \\\n"
        '    --settings \'{"warmup": {"epochs": 1}, "projection": {"dim": 512}}\' --wait',
        common,
    )
    start.add_argument("--model", default=None, help="model id")
    start.add_argument("--pool", default=None, help="pool dataset id")
    start.add_argument("--probes", default=None, help="probe dataset id (none: self-influence)")
    start.add_argument("--method", default=None, help="less (default), tracin, nice, ...")
    start.add_argument("--reward-spec", default=None, help="reward spec id (nice, nice_if)")
    _start_options(start)
    _add_job_actions(val_sub, "valuation", "valuations", common)
    scores = _add_api_parser(
        val_sub,
        "scores",
        "ranked scores as a table",
        "sift valuations scores ID --limit 20",
        common,
    )
    scores.add_argument("id")
    scores.add_argument("--limit", type=int, default=20)
    scores.add_argument("--offset", type=int, default=0)
    select = _add_api_parser(
        val_sub,
        "select",
        "select records by rank or score",
        "sift valuations select ID --top-k 40",
        common,
    )
    select.add_argument("id")
    rule = select.add_mutually_exclusive_group(required=True)
    rule.add_argument("--top-k", type=int, default=None)
    rule.add_argument("--top-fraction", type=float, default=None)
    rule.add_argument("--threshold", type=float, default=None)
    select.add_argument("--order", choices=["desc", "asc"], default=None, help="asc: the lowest")
    val.set_defaults(func=cmd_valuations_api)

    sel = sub.add_parser("selections", help="export a valuation's selection (API)")
    sel_sub = sel.add_subparsers(dest="action", required=True)
    export = _add_api_parser(
        sel_sub,
        "export",
        "the selected records, verbatim, as JSONL (stdout or --output)",
        "sift selections export $SEL --output top.jsonl",
        common,
    )
    export.add_argument("id")
    export.add_argument("--output", "-o", default=None, help="a file (default: stdout)")
    for action in ("get", "delete"):
        p = _add_api_parser(
            sel_sub, action, f"{action} a selection", f"sift selections {action} ID", common
        )
        p.add_argument("id")
    sel.set_defaults(func=cmd_selections_api)

    ss = sub.add_parser("score-sets", help="score a dataset with one scorer (API)")
    ss_sub = ss.add_subparsers(dest="action", required=True)
    ss_start = _add_api_parser(
        ss_sub,
        "start",
        "start a score set: quality, text, knn, random, bm25, dsir, rds or reward",
        "sift score-sets start --scorer bm25 --dataset $POOL --probes $PROBES --wait",
        common,
    )
    ss_start.add_argument("--scorer", default=None)
    ss_start.add_argument("--dataset", default=None, help="dataset id")
    ss_start.add_argument("--model", default=None, help="model id (quality, knn with lm)")
    ss_start.add_argument("--probes", default=None, help="probe dataset id (importance scorers)")
    ss_start.add_argument("--reward-spec", default=None, help="reward spec id (reward)")
    ss_start.add_argument("--name", default=None)
    _start_options(ss_start)
    _add_job_actions(ss_sub, "score_set", "score-sets", common)
    values = _add_api_parser(
        ss_sub, "values", "per-record values as a table", "sift score-sets values ID", common
    )
    values.add_argument("id")
    values.add_argument("--limit", type=int, default=20)
    values.add_argument("--offset", type=int, default=0)
    ss.set_defaults(func=cmd_score_sets_api)

    examples = {
        "curations": "sift curations start --request @recipe.json --wait",
        "studies": "sift studies start --request @study.json --wait",
        "evaluations": "sift evaluations start --request @evaluation.json --wait --timeout 3600",
    }
    for kind, plural, text in (
        ("curation", "curations", "compose score sets into a selection"),
        ("study", "studies", "strategy studies over checkpoints"),
        ("evaluation", "evaluations", "fine-tune on selections and measure a held-out set"),
    ):
        group = sub.add_parser(plural, help=f"{text} (API)")
        group_sub = group.add_subparsers(dest="action", required=True)
        p = _add_api_parser(
            group_sub, "start", f"start a {kind} from a JSON request", examples[plural], common
        )
        _start_options(p, settings=False)
        _add_job_actions(group_sub, kind, plural, common)
        if kind == "curation":
            ex = _add_api_parser(
                group_sub,
                "export",
                "the picked records as JSONL",
                "sift curations export ID -o picked.jsonl",
                common,
            )
            ex.add_argument("id")
            ex.add_argument("--output", "-o", default=None)
        group.set_defaults(func=_job_group(kind, plural))
