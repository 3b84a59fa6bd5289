"""The sandbox really enforces each limit, and the test process always survives.

Most tests go through ``run_python`` (all layers). The ``_run(..., audit=False)`` tests switch
the audit hook off to show that the OS layers (network namespace, per-run uid + RLIMIT_NPROC)
hold on their own; they skip where this machine lacks them.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from workers.engine import sandbox
from workers.engine.errors import InvalidInput
from workers.engine.sandbox import OUTPUT_CAP, SandboxResult, run_python

LIMITS = {"timeout_s": 3.0, "cpu_time_s": 1, "memory_mb": 256, "max_processes": 4, "max_file_mb": 1}
SYSTEM_PYTHON = "/usr/bin/python3"


def run(source: str, **overrides: float) -> SandboxResult:
    return run_python(source, **{**LIMITS, **overrides})  # type: ignore[arg-type]


def gone(pid: int, wait_s: float = 3.0) -> bool:
    """True once ``pid`` no longer exists or is a zombie (orphans are reaped by init later)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                state = next(line for line in f if line.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):
            return True
        if "Z" in state.split()[1]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.fixture
def listener():
    """A listening TCP socket on 127.0.0.1 that should never see a connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.3)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        sock.accept()


def test_passing_program() -> None:
    result = run("print('hello')")
    assert result == SandboxResult(0, False, "hello\n", "", None)
    assert result.passed


def test_failing_assert() -> None:
    result = run("assert 1 + 1 == 3, 'arithmetic'")
    assert not result.passed
    assert result.exit_code == 1 and not result.timed_out
    assert "AssertionError: arithmetic" in result.stderr
    assert result.killed_reason is None


def test_syntax_error() -> None:
    result = run("def broken(:\n    pass\n")
    assert not result.passed and result.exit_code == 1
    assert "SyntaxError" in result.stderr


def test_fresh_cwd_minimal_env_own_process_group_devnull_stdin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIFT_SECRET", "s3cr3t")
    source = (
        "import json, os, sys\n"
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),\n"
        "    'leader': os.getpgid(0) == os.getpid() == os.getsid(0),\n"
        "    'stdin': sys.stdin.read(), 'files': os.listdir('.')}))\n"
        "print(open('/proc/self/environ', 'rb').read())\n"
    )
    result = run(source)
    assert result.passed, result.stderr
    assert "s3cr3t" not in result.stdout and "SIFT_SECRET" not in result.stdout
    import json

    seen = json.loads(result.stdout.splitlines()[0])
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"]
    assert seen["leader"] is True
    assert seen["stdin"] == ""
    assert seen["files"] == ["candidate.py"]
    assert seen["cwd"] != os.getcwd()
    assert not os.path.exists(seen["cwd"])  # the throwaway directory is removed


def test_worker_environment_unreachable_through_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_SECRET", "s3cr3t")
    result = run(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    assert not result.passed
    assert "s3cr3t" not in result.stdout + result.stderr
    assert result.killed_reason == "blocked"


def test_resource_limits_are_set_in_the_child() -> None:
    source = (
        "import resource as r\n"
        "for n in ('CPU', 'AS', 'NPROC', 'FSIZE', 'CORE'):\n"
        "    print(n, *r.getrlimit(getattr(r, 'RLIMIT_' + n)))\n"
    )
    result = run(source, cpu_time_s=2, memory_mb=300, max_processes=3, max_file_mb=5)
    assert result.passed, result.stderr
    limits = {
        line.split()[0]: tuple(map(int, line.split()[1:])) for line in result.stdout.splitlines()
    }
    assert limits == {
        "CPU": (2, 3),
        "AS": (300 * 2**20, 300 * 2**20),
        "NPROC": (3, 3),
        "FSIZE": (5 * 2**20, 5 * 2**20),
        "CORE": (0, 0),
    }
    raised = run("import resource as r\nr.setrlimit(r.RLIMIT_CPU, (100, 100))\n")
    assert not raised.passed and raised.killed_reason == "blocked"


def test_infinite_loop_hits_the_cpu_limit() -> None:
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout_s=5, cpu_time_s=1)
    assert not result.passed
    assert result.killed_reason == "cpu" and not result.timed_out
    assert result.exit_code is None
    assert time.monotonic() - start < 4


def test_sleep_hits_the_wall_clock_and_the_group_is_killed() -> None:
    source = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(100)\n"
    start = time.monotonic()
    result = run(source, timeout_s=1)
    assert time.monotonic() - start < 3
    assert result.timed_out and result.killed_reason == "timeout" and not result.passed
    pid = int(result.stdout.split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_fork_bomb_is_stopped() -> None:
    source = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    os.fork()\n"
    result = run(source)
    assert not result.passed and result.killed_reason == "blocked"
    assert "os.fork" in result.stderr
    assert gone(int(result.stdout.split()[0]))


@pytest.mark.parametrize(
    "source",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import os\nos.spawnv(os.P_WAIT, '/bin/true', ['true'])",
        "import pty\npty.fork()",
        "import _posixsubprocess\n_posixsubprocess.fork_exec(*[None] * 23)",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import ctypes\nctypes.CDLL(None).fork()",
        "import os\nos.kill(1, 0)",
    ],
)
def test_process_creation_and_escapes_are_blocked(source: str) -> None:
    result = run(source)
    assert not result.passed
    assert result.killed_reason == "blocked", result.stderr


def test_memory_hog_gets_memory_error() -> None:
    result = run("x = bytearray(10**10)\n", memory_mb=256)
    assert not result.passed and result.killed_reason == "memory"
    assert "MemoryError" in result.stderr
    grower = run("xs = []\nwhile True:\n    xs.append(' ' * 10**6)\n", memory_mb=128)
    assert not grower.passed and grower.killed_reason == "memory"


def test_socket_is_blocked(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
    assert not result.passed and result.killed_reason == "blocked"
    assert_no_connection(listener)


def test_write_outside_cwd_is_blocked() -> None:
    target = f"/tmp/sift-sandbox-escape-{uuid.uuid4().hex}"
    result = run(f"open({target!r}, 'w').write('escaped')\n")
    assert not result.passed and result.killed_reason == "blocked"
    assert not os.path.exists(target)
    for source in (  # the usual detours end the same way
        f"import os\nos.chdir('/tmp')\nopen({os.path.basename(target)!r}, 'w')\n",
        f"import os\nos.symlink('/tmp', 'link')\nopen('link/{os.path.basename(target)}', 'w')\n",
        f"import os\nos.open({target!r}, os.O_WRONLY | os.O_CREAT)\n",
        "import os\nfd = os.open('/tmp', os.O_RDONLY)\nos.mkdir('x', dir_fd=fd)\n",
        f"import os, posixpath\nposixpath.realpath = lambda p, **k: 'in'\nopen({target!r}, 'w')\n",
    ):
        detour = run(source)
        assert not detour.passed and detour.killed_reason == "blocked", (source, detour.stderr)
    assert not os.path.exists(target)


def test_writing_inside_cwd_works() -> None:
    source = (
        "import os, pathlib, shutil, tempfile\n"
        "pathlib.Path('out.txt').write_text('kept')\n"
        "os.makedirs('a/b')\n"
        "with open('a/b/c.txt', 'a') as f:\n"
        "    f.write('x')\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    pathlib.Path(d, 'f').write_bytes(b'1')\n"
        "shutil.rmtree('a')\n"
        "open(os.devnull, 'w').write('discarded')\n"
        "print(open('out.txt').read(), sorted(os.listdir('.')))\n"
    )
    result = run(source)
    assert result.passed, result.stderr
    assert result.stdout == "kept ['candidate.py', 'out.txt']\n"


def test_huge_file_write_fails() -> None:
    result = run("open('big.bin', 'wb').write(b'x' * (3 * 2**20))\n", max_file_mb=1)
    assert not result.passed and result.killed_reason == "file_size"
    assert "File too large" in result.stderr


def test_output_flood_is_bounded_and_killed() -> None:
    source = "while True:\n    print('x' * 1000)\n"
    result = run(source, timeout_s=1, cpu_time_s=30)
    assert result.timed_out and not result.passed and result.killed_reason == "timeout"
    assert len(result.stdout) == OUTPUT_CAP and set(result.stdout) <= {"x", "\n"}
    noisy = run(
        "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n", timeout_s=1, cpu_time_s=30
    )
    assert noisy.timed_out and len(noisy.stderr) == OUTPUT_CAP


def test_bad_limits_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="timeout_s"):
        run("pass", timeout_s=0)
    with pytest.raises(InvalidInput, match="memory_mb"):
        run("pass", memory_mb=0)


def test_non_utf8_and_surrogates_never_raise() -> None:
    result = run("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')\nprint('\\udcff')\n")
    assert "ok" in result.stdout  # undecodable output is replaced, not an error
    assert run("print('\ud800')").exit_code is not None  # lone surrogate in the source


# --- the OS layers on their own (audit hook off) -----------------------------------------------


def test_network_namespace_blocks_sockets_without_the_hook(listener: socket.socket) -> None:
    if sandbox.isolation().unshare is None:
        pytest.skip("unshare -rn does not work on this machine")
    port = listener.getsockname()[1]
    source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    limits = sandbox._Limits(**LIMITS)  # type: ignore[arg-type]
    result = sandbox._run(source, limits, python=sys.executable, audit=False)
    assert not result.passed
    assert "unreachable" in result.stderr or "refused" in result.stderr, result.stderr
    assert_no_connection(listener)


def dropped_uid_python() -> str:
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("uid dropping needs root and a world-executable python")
    if not sandbox.isolation(SYSTEM_PYTHON).drop_uid:
        pytest.skip(f"a dropped uid cannot run {SYSTEM_PYTHON} here")
    return SYSTEM_PYTHON


OUTER_UID = (
    "import os\n"
    "inner = os.getuid()\n"
    "for line in open('/proc/self/uid_map'):\n"
    "    a, b, n = map(int, line.split())\n"
    "    if a <= inner < a + n:\n"
    "        outer = b + inner - a\n"
    "print('outer', outer, flush=True)\n"
    "if outer == 0:\n"
    "    raise SystemExit('still root')\n"
)


def test_root_worker_runs_candidates_as_a_fresh_uid() -> None:
    python = dropped_uid_python()
    limits = sandbox._Limits(**LIMITS)  # type: ignore[arg-type]
    first = sandbox._run(OUTER_UID, limits, python=python, audit=True)
    second = sandbox._run(OUTER_UID, limits, python=python, audit=True)
    assert first.passed and second.passed, first.stderr + second.stderr
    uids = {int(first.stdout.split()[1]), int(second.stdout.split()[1])}
    assert len(uids) == 2 and 0 not in uids  # one unprivileged uid per run


def test_rlimit_nproc_contains_a_real_fork_bomb_under_a_dropped_uid() -> None:
    python = dropped_uid_python()
    source = OUTER_UID + (
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid:\n"
        "        print(pid, flush=True)\n"
    )
    limits = sandbox._Limits(**{**LIMITS, "timeout_s": 1.5, "max_processes": 4})  # type: ignore[arg-type]
    result = sandbox._run(source, limits, python=python, audit=False)
    assert not result.passed and result.timed_out
    assert result.stdout.startswith("outer ") and not result.stdout.startswith("outer 0\n")
    children = {int(p) for p in result.stdout.split()[2:]}
    assert 1 <= len(children) <= 3  # RLIMIT_NPROC=4 counts the leader too
    assert all(gone(pid) for pid in children)


def test_dropped_uid_cannot_read_root_only_files(tmp_path: Path) -> None:
    python = dropped_uid_python()
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    secret.chmod(0o600)
    limits = sandbox._Limits(**LIMITS)  # type: ignore[arg-type]
    result = sandbox._run(f"print(open({str(secret)!r}).read())", limits, python=python, audit=True)
    assert not result.passed and "PermissionError" in result.stderr
    assert "s3cr3t" not in result.stdout
