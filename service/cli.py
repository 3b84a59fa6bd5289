"""``sift`` command line: serve the API, run a worker, migrate, run the demo, or drive a running
API (upload, value, select, export: the commands built on ``service.client``).

The embedded default (no environment set) is SQLite in ``.sift/``, a blob folder beside it and
an in-process Celery worker on the in-memory broker: the same tasks and code paths as production,
where ``SIFT_DATABASE_URL``, ``SIFT_BROKER_URL`` and ``SIFT_BLOB_URL`` point at Postgres, Redis
and S3 and workers run as separate processes (``sift worker``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.client.cli import add_api_commands
from service.config import MULTIPROCESS_DIR_ENV, get_settings
from service.integrations import cli as integrations_cli

DEMO_DATA = Path(__file__).parent / "demo_data"

MAIN_EPILOG = """\
a whole valuation against a running API (sift serve prints the key; SIFT_URL, SIFT_API_KEY):
  POOL=$(sift datasets upload service/demo_data/pool.jsonl --name pool --json | jq -r .id)
  PROBES=$(sift datasets upload service/demo_data/probes.jsonl --name probes --json | jq -r .id)
  MODEL=$(sift models register builtin:tiny-llama --name tiny --reuse --json | jq -r .id)
  VAL=$(sift valuations start --model $MODEL --pool $POOL --probes $PROBES --wait --json \\
        | jq -r .id)
  sift valuations scores $VAL --limit 10
  SEL=$(sift valuations select $VAL --top-k 40 --json | jq -r .id)
  sift selections export $SEL --output top40.jsonl
each subcommand's --help has its options and an example."""


def _prepare_local_storage() -> None:
    """Create the folders the embedded default writes into and bring its database up to date."""
    settings = get_settings()
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    if settings.blob_url.startswith("file://"):
        Path(settings.blob_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    from service.db.migrate import upgrade_head

    upgrade_head()


def local_api_key() -> str:
    """The embedded default's admin key of tenant ``local``, from ``settings.api_key_file``;
    created (and printed) on first start, or when the file no longer holds a live key.

    Production never comes here: its keys are made with ``sift keys create``.
    """
    from service.auth import keys
    from service.db.session import session_scope

    settings = get_settings()
    path = Path(settings.api_key_file)
    with session_scope() as session:
        if path.exists():
            key = path.read_text().strip()
            if keys.authenticate(session, key) is not None:
                return key
        tenant = keys.get_or_create_tenant(session, "local")
        _, key = keys.create_key(session, tenant.id, name="local admin", role="admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    print(f"created an admin API key for tenant 'local' in {path} (shown once):\n  {key}")
    return key


@contextlib.contextmanager
def embedded_worker() -> Iterator[None]:
    """Run the production Celery app in a thread of this process (embedded default only), on
    every queue: ``sift.events`` too, so here a webhook waits for the task in progress. (Two
    worker threads of Celery in one process share its worker state: the model queues' thread
    and an events thread raced at shutdown, and one app's workers share its queue selection.)

    Importing the tasks imports torch into this process; the API modules themselves never do.
    """
    import warnings

    from celery.contrib.testing.worker import start_worker

    # transformers deprecation chatter from inside peft; not actionable for a user of Sift
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")

    from workers.celery_app import QUEUES, celery_app
    from workers.tasks.recovery import resume_after_restart, start_sweeper

    if get_settings().broker_url.startswith("memory://"):
        repairs = resume_after_restart()  # the last process took its in-memory queue with it
        if repairs:
            print(f"resumed unfinished jobs after a restart: {repairs}")
    start_sweeper()
    with start_worker(
        celery_app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        queues=list(QUEUES),
        loglevel="WARNING",
        shutdown_timeout=60.0,
        hostname="sift-embedded@localhost",
    ):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _api_in_thread(port: int) -> Iterator[str]:
    import uvicorn

    from service.main import app

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the API server failed to start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    # Settings first, before anything is written: a bad combination stops here.
    if args.workers is not None:
        os.environ["SIFT_API_WORKERS"] = str(args.workers)  # the API processes read it too
        get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValueError as e:
        raise SystemExit(f"sift serve: {e}") from None
    # Before any module makes a metric (prometheus_client reads the folder then).
    _prepare_metrics_dir(settings.api_workers)
    if settings.env == "development":  # production migrates separately (`sift migrate`)
        _prepare_local_storage()
        key = local_api_key()
        print(f"API key: `export SIFT_API_KEY=$(cat {settings.api_key_file})` ({key[:12]}...)")
    worker = embedded_worker() if settings.embedded_worker else contextlib.nullcontext()
    with worker:
        uvicorn.run(
            "service.main:app", host=args.host, port=args.port, workers=settings.api_workers
        )


PROMETHEUS_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def _prepare_metrics_dir(workers: int) -> None:
    """Several API processes share their Prometheus samples through files in
    ``PROMETHEUS_MULTIPROC_DIR`` (``service.observability``): made here when unset, emptied
    of a previous run's samples (which must not count) when set."""
    name = MULTIPROCESS_DIR_ENV
    if not os.environ.get(name) and workers == 1:
        return  # one process, one in-memory registry
    folder = Path(os.environ.get(name) or tempfile.mkdtemp(prefix="sift-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in PROMETHEUS_FILES:
        for stale in folder.glob(pattern):
            stale.unlink()
    os.environ[name] = str(folder)


def cmd_worker(args: argparse.Namespace) -> None:
    from workers.celery_app import QUEUES, celery_app

    queues = args.queues or ",".join(QUEUES)
    celery_app.worker_main(
        [
            "worker",
            "--loglevel",
            args.loglevel,
            "--queues",
            queues,
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--hostname",
            args.hostname,
        ]
    )


def cmd_keys(args: argparse.Namespace) -> None:
    """Operator key management, straight on the database (no API key needed)."""
    from service.auth import keys
    from service.db.models import Tenant
    from service.db.session import session_scope
    from service.errors import SiftError

    _prepare_local_storage()
    try:
        with session_scope() as session:
            if args.action == "create":
                tenant = keys.get_or_create_tenant(session, args.tenant)
                row, key = keys.create_key(session, tenant.id, name=args.name, role=args.role)
                out: Any = {"id": row.id, "tenant": tenant.name, "tenant_id": tenant.id}
                out |= {"role": row.role, "name": row.name, "key": key}
            elif args.action == "list":
                names = {t.id: t.name for t in session.query(Tenant)}
                tenant_id = None
                if args.tenant:
                    tenant_id = next((i for i, n in names.items() if n == args.tenant), "-")
                out = [
                    {
                        "id": k.id,
                        "tenant": names.get(k.tenant_id, k.tenant_id),
                        "name": k.name,
                        "role": k.role,
                        "prefix": k.prefix,
                        "created_at": k.created_at.isoformat(),
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    }
                    for k in keys.list_keys(session, tenant_id)
                ]
            else:
                row = keys.revoke_key(session, args.key_id)
                out = {
                    "id": row.id,
                    "revoked_at": row.revoked_at and row.revoked_at.isoformat(),
                    "note": "API processes that verified this key lately refuse it within "
                    f"SIFT_API_KEY_CACHE_S ({get_settings().api_key_cache_s:g} s)",
                }
    except SiftError as e:
        raise SystemExit(f"sift keys {args.action}: {e.message}") from None
    print(json.dumps(out, indent=2))


def cmd_secrets(args: argparse.Namespace) -> None:
    """Operator: let a tenant use one worker environment variable, by a secret name."""
    from service.auth import keys
    from service.db.session import session_scope
    from service.errors import SiftError
    from service.tenant_secrets import service as tenant_secrets

    _prepare_local_storage()
    try:
        with session_scope() as session:
            tenant = keys.get_or_create_tenant(session, args.tenant)
            tenant_secrets.grant_env(session, tenant.id, args.name, args.env, args.host)
    except SiftError as e:
        raise SystemExit(f"sift secrets grant: {e.message}") from None
    print(
        f"tenant {args.tenant!r} may now name secret {args.name!r} (worker variable {args.env}) "
        f"for {', '.join(args.host)}"
    )


def cmd_secret_key(_: argparse.Namespace) -> None:
    from service.secrets import new_key

    print(new_key())


def cmd_migrate(_: argparse.Namespace) -> None:
    _prepare_local_storage()
    print("database is at the latest migration")


def cmd_datasets_import(args: argparse.Namespace) -> None:
    """Read a local table, map its columns, upload it to the API as streamed JSONL."""
    from service.datasets import client_import
    from service.errors import SiftError

    try:
        mapping = client_import.parse_map_args(args.map or [])
        key = client_import.api_key_from_env(args.api_key, get_settings().api_key_file)
        url = args.url or os.environ.get("SIFT_URL") or client_import.DEFAULT_URL
        body = client_import.import_to_api(
            Path(args.source),
            args.name,
            mapping,
            base_url=url,
            api_key=key,
            fmt=args.format,
            split=args.split,
        )
    except SiftError as e:
        raise SystemExit(f"sift datasets import: {e.message}") from None
    sent, seconds = body.pop("_sent_records"), body.pop("_seconds")
    print(json.dumps(body, indent=2))
    print(
        f"imported {body['n_records']} records ({body['n_duplicates']} exact duplicates "
        f"skipped) of {sent} rows as dataset {body['id']} in {seconds:.1f}s",
        file=sys.stderr,
    )


# --- demo -------------------------------------------------------------------------------------

DEMO_SETTINGS: dict[str, Any] = {
    "warmup": {
        "fraction": 0.5,
        "epochs": 3,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.03,
        "batch_size": 8,
        "seed": 0,
    },
    "lora": {"r": 8, "alpha": 32},
    "projection": {"dim": 2048, "seed": 0},
    "max_length": 96,
    "batch_size": 16,
    "shard_size": 256,
}


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        request = response.request
        raise SystemExit(
            f"{request.method} {request.url} → {response.status_code}: {response.text}"
        )
    return response.json() if response.content else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_demo(base_url: str, api_key: str, top: int = 40) -> float:
    """Upload the bundled pool and probes, value the pool, print the top records; return the
    fraction of the top records that come from the probes' task."""
    import httpx

    pool_path, probes_path = DEMO_DATA / "pool.jsonl", DEMO_DATA / "probes.jsonl"
    auth = {"authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, timeout=60, headers=auth) as http:
        uploads = {}
        for name, path in (("demo-pool", pool_path), ("demo-probes", probes_path)):
            with path.open("rb") as f:
                uploads[name] = _check(
                    http.post("/v1/datasets", files={"file": f}, data={"name": name})
                )
        pool, probes = uploads["demo-pool"], uploads["demo-probes"]
        print(
            f"uploaded pool: {pool['n_records']} records ({pool['n_duplicates']} exact duplicates "
            f"skipped); probes: {probes['n_records']} records"
        )
        tiny = "builtin:tiny-llama"
        models = _check(http.get("/v1/models"))["items"]
        model = next((m for m in models if m["source"] == tiny), None) or _check(
            http.post("/v1/models", json={"name": "tiny-llama", "source": tiny})
        )
        request = {
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probes["id"],
            "method": "less",
            "settings": DEMO_SETTINGS,
        }
        valuation = _check(http.post("/v1/valuations", json=request))
        vid = valuation["id"]
        print(f"valuation {vid} queued; polling")
        last = None
        while valuation["status"] in ("queued", "running"):
            time.sleep(1)
            valuation = _check(http.get(f"/v1/valuations/{vid}"))
            progress = valuation["progress"]
            stage = valuation["stage"] or valuation["status"]
            line = f"  {stage:<20} {progress['done']}/{progress['total']}"
            if line != last:
                print(line)
                last = line
        if valuation["status"] != "succeeded":
            raise SystemExit(f"valuation {valuation['status']}: {valuation['error']}")
        for note in valuation["notes"]:
            print(f"  note: {note}")

        selection = _check(
            http.post(f"/v1/valuations/{vid}/selections", json={"rule": "top_k", "value": top})
        )
        export_url = f"/v1/selections/{selection['id']}/export?format=jsonl"
        exported = http.get(export_url)
        if exported.status_code >= 400:
            _check(exported)
        records = [json.loads(line) for line in exported.text.splitlines() if line.strip()]
        scores = _check(http.get(f"/v1/valuations/{vid}/scores", params={"limit": top}))["items"]

    probe_task = _read_jsonl(probes_path)[0]["metadata"]["task"]
    pool_tasks = [r["metadata"]["task"] for r in _read_jsonl(pool_path)]
    print(f"\ntop {top} of {pool['n_records']} pool records by LESS influence on the probes:")
    for item, record in zip(scores[:10], records[:10], strict=False):
        task, prompt = record["metadata"]["task"], record["prompt"]
        print(f"  #{item['rank'] + 1:<3} {item['score']:+.4f}  [{task}] {prompt[:60]!r}")
    print("  ...")
    hits = sum(1 for r in records if r["metadata"]["task"] == probe_task)
    fraction = hits / max(len(records), 1)
    share = pool_tasks.count(probe_task) / len(pool_tasks)
    print(
        f"\n{hits}/{len(records)} = {fraction:.0%} of the top selections come from the probes' "
        f"task '{probe_task}' (its share of the pool: {share:.0%})"
    )
    print(f"the selected records, verbatim: GET {base_url}{export_url}")
    return fraction


def cmd_demo(args: argparse.Namespace) -> None:
    settings = get_settings()
    if not settings.embedded_worker:
        raise SystemExit("the demo runs on the embedded default; unset SIFT_EMBEDDED_WORKER")
    _prepare_local_storage()
    print(
        f"embedded default: {settings.database_url}, blobs {settings.blob_url}, in-process worker"
    )
    api_key = local_api_key()
    started = time.monotonic()
    with embedded_worker(), _api_in_thread(_free_port()) as base_url:
        logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own progress
        run_demo(base_url, api_key, top=args.top)
    print(f"done in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sift",
        description=" ".join(__doc__.split("\n\n")[0].split()).replace("``", ""),
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the API (with an in-process worker on the embedded default)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (default SIFT_API_WORKERS, 1); more than one needs a real broker "
        "and SIFT_EMBEDDED_WORKER=false",
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker process")
    worker.add_argument("--queues", default=None, help="comma-separated (default: all)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--hostname", default="sift@%h")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="upgrade the database to the latest migration").set_defaults(
        func=cmd_migrate
    )
    keys = sub.add_parser(
        "keys",
        help="create, list or revoke API keys (operator; works on the database directly)",
        description="Examples: sift keys create --tenant team-a --role member --name ci; "
        "sift keys list --tenant team-a; sift keys revoke KEY_ID",
    )
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="a new key (printed once) of a tenant")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--role", default="admin", choices=["admin", "member", "read_only"])
    create.add_argument("--name", default="cli")
    listing = keys_sub.add_parser("list", help="keys (never the keys themselves)")
    listing.add_argument("--tenant", default=None)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)
    grant = sub.add_parser(
        "secrets", help="operator: grant a tenant a worker environment variable as a secret"
    )
    grant_sub = grant.add_subparsers(dest="action", required=True)
    g = grant_sub.add_parser(
        "grant",
        help="e.g. --tenant team-a --name openai --env OPENAI_API_KEY --host api.openai.com",
    )
    g.add_argument("--tenant", required=True)
    g.add_argument("--name", required=True, help="the secret name requests use")
    g.add_argument("--env", required=True, help="the worker's environment variable")
    g.add_argument(
        "--host", required=True, action="append", help="a host it may be sent to (repeatable)"
    )
    grant.set_defaults(func=cmd_secrets)
    sub.add_parser("secret-key", help="print a new SIFT_SECRET_KEY (Fernet key)").set_defaults(
        func=cmd_secret_key
    )
    data = sub.add_parser(
        "datasets", help="upload, import (a local table), list, get, delete datasets (API)"
    )
    data_sub = data.add_subparsers(dest="action", required=True)
    imp = data_sub.add_parser(
        "import",
        help="a load_from_disk folder, parquet, CSV or JSONL (.gz) file, with a column mapping",
        description="Example: sift datasets import gsm8k.parquet --name gsm8k "
        "--map prompt=question --map response=answer --map metadata=level,type. Uploads to "
        "SIFT_URL (default http://127.0.0.1:8000) with SIFT_API_KEY or .sift/api-key.",
    )
    imp.add_argument("source", help="a file or a datasets.save_to_disk folder")
    imp.add_argument("--name", required=True, help="the dataset's name")
    imp.add_argument(
        "--map",
        action="append",
        metavar="FIELD=COLUMN",
        help="FIELD is prompt, response, messages, subtask, id or metadata (repeatable; "
        "metadata=a,b copies several columns)",
    )
    imp.add_argument("--split", default=None, help="the split of a DatasetDict folder")
    imp.add_argument(
        "--format", default="auto", choices=["auto", "hf_disk", "parquet", "csv", "jsonl"]
    )
    imp.add_argument("--url", default=None, help="the API (default SIFT_URL or 127.0.0.1:8000)")
    imp.add_argument("--api-key", default=None, help="default SIFT_API_KEY, or .sift/api-key")
    imp.set_defaults(func=cmd_datasets_import)
    add_api_commands(sub, data_sub)
    demo = sub.add_parser("demo", help="value the bundled synthetic pool on the builtin tiny model")
    demo.add_argument("--top", type=int, default=40)
    demo.set_defaults(func=cmd_demo)
    integrations_cli.register(sub)  # sift label-studio ..., sift argilla ...
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
