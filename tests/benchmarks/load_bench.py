"""API under load: wrk against a real ``uvicorn service.main:app`` on loopback, on SQLite and on
Postgres, at 50, 200 and 1000 connections.

Run (the exact commands and the results are in docs/benchmarks.md):

    python -m tests.benchmarks.load_bench --backends sqlite postgres --out docs/benchmarks

For each backend it migrates a fresh database (SQLite: a temp file; Postgres:
``SIFT_TEST_DATABASE_URL``, else a private server from ``tests/integration/servers.py``), starts
the API (no embedded worker), seeds a tenant, an admin key and a finished valuation with
``--scores`` scores (the rows the worker would write), then runs wrk (``apt-get install wrk``)
for ``--duration`` seconds per point against ``GET /v1/valuations/{id}`` (status) and
``GET /v1/valuations/{id}/scores?limit=100`` (scores). Each point reports wrk's p50 / p99
latency (over every response, 503s included), requests/s, the status counts (a Lua
``response`` hook: 2xx, 503, other) and socket errors; meanwhile a probe reads ``/healthz``
every 100 ms (worst latency, failures), and right after the run it times ``/healthz`` and one
status read (``healthy_after_ms``). Every run is bounded: wrk's duration, a subprocess timeout,
a 5 s per-request timeout; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.auth import keys
from service.db.base import utcnow
from service.db.migrate import upgrade_head
from service.db.models import Job, JobStatus, Score, Valuation
from service.db.session import make_engine, normalize_database_url
from service.tenancy import tenant_scope
from tests.integration.servers import free_port

REPO = Path(__file__).resolve().parents[2]

WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %(key)s"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n2xx = 0; n503 = 0; nother = 0 end
function response(status, headers, body)
  if status >= 200 and status < 300 then n2xx = n2xx + 1
  elseif status == 503 then n503 = n503 + 1
  else nother = nother + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("n2xx"); b = b + t:get("n503"); c = c + t:get("nother")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"max_us": %%d, "n2xx": %%d, "n503": %%d, "nother": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, a, b, c, e.connect, e.read, e.write, e.timeout))
end
"""


@contextlib.contextmanager
def postgres_url(root: Path) -> Iterator[str]:
    """A fresh database on ``SIFT_TEST_DATABASE_URL``'s server, else on a private server."""
    base = os.environ.get("SIFT_TEST_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if not base:
            from tests.integration.servers import _postgres

            base = stack.enter_context(_postgres(root))
        name = f"sift_load_{os.getpid()}"
        admin = make_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield normalize_database_url(base).set(database=name).render_as_string(False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def seed(database_url: str, api: httpx.Client, n_scores: int) -> str:
    """A finished valuation of the key's tenant with ``n_scores`` scores; its id."""
    pool = [
        {"id": f"r{i}", "prompt": f"question {i}?", "response": f"answer {i}"}
        for i in range(n_scores)
    ]
    probe = [{"id": "p0", "prompt": "probe?", "response": "yes"}]
    ids = {}
    for name, recs in (("pool", pool), ("probe", probe)):
        r = api.post("/v1/datasets", json={"name": name, "records": recs})
        r.raise_for_status()
        ids[name] = r.json()["id"]
    model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
    model.raise_for_status()
    r = api.post(
        "/v1/valuations",
        json={
            "model_id": model.json()["id"],
            "pool_dataset_id": ids["pool"],
            "probe_dataset_id": ids["probe"],
        },
    )
    r.raise_for_status()
    valuation_id: str = r.json()["id"]
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            valuation = session.get(Valuation, valuation_id)
            assert valuation is not None  # created just above
            tenant_id = valuation.tenant_id
        with tenant_scope(tenant_id), Session(engine) as session:
            valuation = session.get(Valuation, valuation_id)
            job = session.get(Job, valuation.job_id) if valuation else None
            if valuation is None or job is None:
                raise RuntimeError("the seeded valuation has no job")
            job.status = JobStatus.succeeded.value
            job.started_at = job.started_at or utcnow()
            job.finished_at = utcnow()
            for rank in range(n_scores):
                score = 1.0 - rank / n_scores
                session.add(
                    Score(
                        valuation_id=valuation_id,
                        record_id=f"r{rank}",
                        rank=rank,
                        score=score,
                        per_subtask={"default": score},
                    )
                )
            valuation.n_scored = n_scores
            session.commit()
    finally:
        engine.dispose()
    return valuation_id


class HealthProbe:
    """``GET /healthz`` every 100 ms in a thread: worst latency and failures."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.worst_ms = 0.0
        self.failures = 0
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.wait(0.1):
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.base}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.probes += 1
                self.failures += 0 if ok else 1
                self.worst_ms = max(self.worst_ms, (time.perf_counter() - started) * 1000)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_wrk(
    url: str, script: Path, connections: int, duration_s: int, threads: int
) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections)]
    cmd += ["-d", f"{duration_s}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=duration_s + 60
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "ok_per_s": round(raw["n2xx"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "n_2xx": raw["n2xx"],
        "n_503": raw["n503"],
        "n_other": raw["nother"],
        "socket_errors": {k: raw[k] for k in ("connect", "read", "write", "timeout")},
    }


def after_ms(client: httpx.Client, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        status = client.get(path).status_code
    except httpx.HTTPError:
        status = 0
    return status, round((time.perf_counter() - started) * 1000, 1)


def bench_backend(backend: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            database_url = f"sqlite:///{work / 'sift.db'}"
        else:
            database_url = stack.enter_context(postgres_url(work))
        upgrade_head(database_url)
        engine = make_engine(database_url)
        with Session(engine) as session:
            tenant = keys.get_or_create_tenant(session, "bench")
            _, api_key = keys.create_key(session, tenant.id, name="bench", role="admin")
            session.commit()
        engine.dispose()

        port = free_port()
        env = {
            **os.environ,
            "SIFT_ENV": "development",
            "SIFT_DATABASE_URL": database_url,
            "SIFT_BLOB_URL": f"file://{work / 'blobs'}",
            "SIFT_BROKER_URL": "memory://",
            "SIFT_EMBEDDED_WORKER": "false",
            "SIFT_CHECK_MODEL_PATHS": "false",
            "SIFT_SECRET_KEY_FILE": str(work / "secret.key"),
            "SIFT_API_KEY_FILE": str(work / "api-key"),
            **dict(kv.split("=", 1) for kv in args.env),
        }
        cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--log-level", "warning", "--backlog", "4096"]
        cmd += ["--no-access-log", "--workers", str(args.workers)]
        log = (work / f"api-{backend}.log").open("wb")
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(server.wait, timeout=30)
        stack.callback(server.terminate)  # callbacks run last-in first-out
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("the API did not start")
        api = stack.enter_context(
            httpx.Client(base_url=base, headers={"authorization": f"Bearer {api_key}"}, timeout=10)
        )
        valuation_id = seed(database_url, api, args.scores)
        script = work / "auth.lua"
        script.write_text(WRK_SCRIPT % {"key": api_key})
        endpoints = {
            "status": f"/v1/valuations/{valuation_id}",
            "scores": f"/v1/valuations/{valuation_id}/scores?limit=100",
        }
        for path in endpoints.values():  # warm: imports, caches, pool
            for _ in range(20):
                api.get(path).raise_for_status()
        for name, path in endpoints.items():
            for connections in args.clients:
                with HealthProbe(base) as probe:
                    result = run_wrk(base + path, script, connections, args.duration, args.threads)
                health_status, health_ms = after_ms(api, "/healthz")
                read_status, read_ms = after_ms(api, path)
                row = {
                    "backend": backend,
                    "endpoint": name,
                    "clients": connections,
                    **result,
                    "healthz_during": {
                        "probes": probe.probes,
                        "failures": probe.failures,
                        "worst_ms": round(probe.worst_ms, 1),
                    },
                    "healthy_after_ms": health_ms if health_status == 200 else None,
                    "read_after": {"status": read_status, "ms": read_ms},
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                time.sleep(args.pause)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| backend | endpoint | clients | req/s | 2xx/s | p50 ms | p99 ms | 503 | other non-2xx "
        "| socket errors | /healthz worst during | after the run: /healthz, read |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        errors = sum(r["socket_errors"].values())
        lines.append(
            f"| {r['backend']} | {r['endpoint']} | {r['clients']} | {r['requests_per_s']:,.0f} "
            f"| {r['ok_per_s']:,.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['n_503']:,} "
            f"| {r['n_other']} | {errors} | {r['healthz_during']['worst_ms']} ms "
            f"({r['healthz_during']['failures']} failed) "
            f"| {r['healthy_after_ms']} ms, {r['read_after']['status']} in "
            f"{r['read_after']['ms']} ms |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--clients", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    parser.add_argument("--scores", type=int, default=200, help="scores of the valuation")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--env", nargs="*", default=[], help="extra SIFT_X=value for the API")
    parser.add_argument("--out", default=None, help="folder for load-<backends>.json/.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="sift-load-bench-"))
    try:
        rows = [row for b in args.backends for row in bench_backend(b, args, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        stem = Path(args.out) / f"load-{'-'.join(args.backends)}-{args.workers}proc"
        results = {"machine": f"{os.cpu_count()} cores", "args": vars(args), "rows": rows}
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        stem.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
