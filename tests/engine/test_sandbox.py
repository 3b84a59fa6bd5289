"""The sandbox really enforces each limit, and the test process (the worker) always survives.

Most tests go through ``run_python`` (all layers, the audit hook included). The hostile tests
below call ``_run(..., audit=False)``: they switch the in-process audit hook off to show that
the kernel's namespaces, the dropped uid, seccomp and rlimits hold on their own, which is what
the sandbox promises. Each of them fails against the previous sandbox (a root child with
rlimits and an audit hook). They need bwrap; CI installs it (``.ci/run``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from workers.engine import sandbox
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.sandbox import OUTPUT_CAP, SandboxResult, run_python

LIMITS = {"timeout_s": 3.0, "cpu_time_s": 1, "memory_mb": 256, "max_processes": 4, "max_file_mb": 1}
SYSTEM_PYTHON = "/usr/bin/python3"
ROOT = os.geteuid() == 0


def run(source: str, **overrides: float) -> SandboxResult:
    return run_python(source, **{**LIMITS, **overrides})  # type: ignore[arg-type]


def hostile(source: str, **overrides: float) -> SandboxResult:
    """A run with the audit hook off: only the OS layers stand between it and the host."""
    limits = sandbox._Limits(**{**LIMITS, **overrides})  # type: ignore[arg-type]
    return sandbox._run(source, limits, python=sys.executable, audit=False)


def uid_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


@pytest.fixture
def run_uids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The uids the sandbox picks, in order (only a root worker drops to one)."""
    if not ROOT:
        pytest.skip("a fresh uid per run needs a root worker")
    sandbox.isolation()  # probe first: its own run would be recorded too
    picked: list[int] = []
    original = sandbox._pick_uid

    def pick() -> int | None:
        uid = original()
        if uid is not None:
            picked.append(uid)
        return uid

    monkeypatch.setattr(sandbox, "_pick_uid", pick)
    return picked


def no_processes_left(uid: int) -> bool:
    return not sandbox._uid_pids(uid)


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
        "    'pids': (os.getpid(), os.getppid(),\n"
        "             sorted(p for p in os.listdir('/proc') if p.isdigit())),\n"
        "    'stdin': sys.stdin.read(), 'files': os.listdir('.')}))\n"
        "print(open('/proc/self/environ', 'rb').read())\n"
    )
    before = set(os.listdir(tempfile.gettempdir()))
    result = run(source)
    assert result.passed, result.stderr
    assert "s3cr3t" not in result.stdout and "SIFT_SECRET" not in result.stdout
    seen = json.loads(result.stdout.splitlines()[0])
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"] == sandbox.SANDBOX_DIR
    assert seen["pids"] == [2, 1, ["1", "2"]]  # its own PID namespace: bwrap's init and itself
    assert seen["stdin"] == ""
    assert seen["files"] == ["candidate.py"]
    assert not os.path.exists(seen["cwd"])  # a tmpfs of its own, not a host directory
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - before if "sift" in n}


def test_worker_environment_unreachable_through_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_SECRET", "s3cr3t")
    result = run(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    assert not result.passed
    assert "s3cr3t" not in result.stdout + result.stderr
    assert result.killed_reason == "blocked"


def test_resource_limits_are_set_in_the_child() -> None:
    source = (
        "import resource as r\n"
        "for n in ('CPU', 'AS', 'NPROC', 'FSIZE', 'NOFILE', 'CORE'):\n"
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
        "NOFILE": (sandbox.MAX_OPEN_FILES, sandbox.MAX_OPEN_FILES),
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


def test_sleep_hits_the_wall_clock_and_everything_is_killed(run_uids: list[int]) -> None:
    source = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(100)\n"
    start = time.monotonic()
    result = run(source, timeout_s=1)
    assert time.monotonic() - start < 3
    assert result.timed_out and result.killed_reason == "timeout" and not result.passed
    assert result.stdout == "2\n"
    assert no_processes_left(run_uids[-1])


def test_fork_bomb_is_stopped_by_the_hook() -> None:
    source = "import os\nwhile True:\n    os.fork()\n"
    result = run(source)
    assert not result.passed and result.killed_reason == "blocked"
    assert "os.fork" in result.stderr


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
    for source in (  # the usual detours end the same way (the hook; then a read-only /usr)
        "import os\nos.chdir('/usr')\nopen('x', 'w')\n",
        "import os\nos.symlink('/usr', 'link')\nopen('link/x', 'w')\n",
        f"import os\nos.open({target!r}, os.O_WRONLY | os.O_CREAT)\n",
        "import os\nfd = os.open('/usr', os.O_RDONLY)\nos.mkdir('x', dir_fd=fd)\n",
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


# --- hostile programs, audit hook off: the OS layers on their own ------------------------------


def test_host_files_are_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_SECRET", "s3cr3t")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    secret.chmod(0o644)  # world-readable: only the mount namespace keeps it out
    tmp_path.chmod(0o755)
    targets = [
        "/etc/shadow",
        "/etc/passwd",
        str(secret),
        str(Path(__file__).resolve()),
        "/root/.bashrc",
        f"/proc/{os.getpid()}/environ",
        f"/proc/{os.getppid()}/environ",
        "/proc/1/environ",
        "/proc/self/environ",
    ]
    source = (
        "import json, os\n"
        f"seen = {{}}\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        seen[path] = open(path, 'rb').read().decode('latin-1')\n"
        "    except OSError as exc:\n"
        "        seen[path] = type(exc).__name__\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            seen[pid] = open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1')\n"
        "        except OSError as exc:\n"
        "            seen[pid] = type(exc).__name__\n"
        "seen['/'] = sorted(os.listdir('/'))\n"
        "seen['/root'] = sorted(os.listdir('/root')) if os.path.isdir('/root') else []\n"
        "print(json.dumps(seen))\n"
    )
    result = hostile(source)
    assert result.passed, result.stderr
    assert "s3cr3t" not in result.stdout and "SIFT_SECRET" not in result.stdout
    seen = json.loads(result.stdout)
    for path in targets[:6]:
        assert seen[path] in ("FileNotFoundError", "PermissionError"), (path, seen[path][:200])
    assert "root:" not in result.stdout  # neither /etc/shadow nor /etc/passwd
    assert set(seen["/"]) <= {
        "usr",
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "dev",
        "sandbox",
        *{p.split("/")[1] for p in sandbox.isolation().runtime},
    }
    runtime = sandbox.isolation().runtime
    down_to_python = {p.split("/")[2] for p in runtime if p.startswith("/root/")}
    assert set(seen["/root"]) <= down_to_python  # at most the path down to the interpreter


def test_no_signal_reaches_the_worker_or_other_processes() -> None:
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        source = (
            "import os, signal\n"
            "if os.getpid() != 2:\n"  # not its own PID namespace: fail before any carnage
            "    raise SystemExit('not in a PID namespace of its own')\n"
            f"for pid in ({os.getpid()}, {sentinel.pid}, {os.getppid()}, os.getppid(), 1):\n"
            "    for send in (os.kill, os.killpg):\n"
            "        try:\n"
            "            send(pid, signal.SIGKILL)\n"
            "        except OSError as exc:\n"
            "            print(send.__name__, pid, exc.errno)\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"  # everything it may signal, but itself
            "except OSError as exc:\n"
            "    print('kill -1', exc.errno)\n"
            "print('alive')\n"
        )
        result = hostile(source)
        time.sleep(0.1)
        assert sentinel.poll() is None, "a process outside the sandbox was killed"
        assert os.getppid() != 1 and result.exit_code is not None, result  # we are still here
        assert result.passed and result.stdout.endswith("alive\n"), result
    finally:
        sentinel.kill()
        sentinel.wait()


@pytest.mark.parametrize("audit", [False, True], ids=["os-layers", "with-hook"])
def test_path_races_cannot_write_outside(tmp_path: Path, audit: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # writable by any uid that could reach it
    tmp_path.chmod(0o755)
    source = (
        "import os, threading, time\n"
        f"OUT = {str(outside)!r}\n"
        "os.mkdir('real')\n"
        "stop = time.monotonic() + 1.5\n"
        "wins = []\n"
        "def swapper():\n"
        "    i = 0\n"
        "    while time.monotonic() < stop:\n"
        "        i += 1\n"
        "        try:\n"
        "            os.symlink(OUT, f'l{i}')\n"
        "            os.replace(f'l{i}', 'link')\n"
        "            os.mkdir(f'd{i}')\n"
        "            os.replace(f'd{i}', 'link') if not os.path.islink('link') else None\n"
        "        except OSError:\n"
        "            pass\n"
        "        try:\n"
        "            os.rename('real', 'tmp'); os.symlink(OUT, 'real')\n"
        "            os.remove('real'); os.rename('tmp', 'real')\n"
        "        except OSError:\n"
        "            pass\n"
        "def writer(n):\n"
        "    while time.monotonic() < stop:\n"
        "        for path in ('link/escaped', 'real/escaped', OUT + '/escaped'):\n"
        "            try:\n"
        "                with open(path + str(n), 'w') as f:\n"
        "                    f.write('x')\n"
        "                wins.append(path)\n"
        "            except Exception:\n"
        "                pass\n"
        "threads = [threading.Thread(target=swapper)]\n"
        "threads += [threading.Thread(target=writer, args=(n,)) for n in range(3)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(len(wins))\n"
    )
    result = (hostile if not audit else run)(source, timeout_s=5, cpu_time_s=5)
    assert not result.timed_out, result
    assert list(outside.iterdir()) == []
    assert list(tmp_path.iterdir()) == [outside]


def test_disk_is_bounded_and_the_host_untouched(run_uids: list[int]) -> None:
    scratch_cap = 2 * 2**20 + 64 * 1024 + 8192  # 2 * max_file_mb, the program, rounding
    source = (
        "import ctypes, json, os\n"
        "report = {}\n"
        "def fill(make):\n"
        "    n = 0\n"
        "    try:\n"
        "        while n < 10**6:\n"
        "            make(n)\n"
        "            n += 1\n"
        "    except OSError as exc:\n"
        "        return n, exc.errno\n"
        "    return n, None\n"
        "def big(n):\n"
        "    with open(f'big{n}', 'wb') as f:\n"
        "        f.write(b'x' * (2**20 - 1))\n"  # just under RLIMIT_FSIZE each
        "report['big'] = fill(big)\n"
        "bigs = [p for p in os.listdir('.') if p.startswith('big')]\n"
        "report['bytes'] = sum(os.path.getsize(p) for p in bigs)\n"
        "for p in os.listdir('.'):\n"
        "    if p.startswith('big'):\n"
        "        os.remove(p)\n"
        "os.mkdir('many')\n"
        "def empty(n):\n"
        "    os.close(os.open(f'many/{n}', os.O_CREAT | os.O_WRONLY))\n"
        "report['empty'] = fill(empty)\n"
        "st = os.statvfs('.')\n"
        "report['statvfs'] = (st.f_blocks * st.f_frsize, st.f_files)\n"
        "report['elsewhere'] = {}\n"
        "for d in ('/', '/dev', '/dev/shm', '/usr', '/proc', '/root'):\n"
        "    try:\n"
        "        open(d + '/sift-fill', 'w').close()\n"
        "        report['elsewhere'][d] = 'written'\n"
        "    except OSError as exc:\n"
        "        report['elsewhere'][d] = exc.errno\n"
        "try:\n"
        "    os.memfd_create('x')\n"
        "    report['memfd'] = 'made'\n"
        "except OSError as exc:\n"
        "    report['memfd'] = exc.errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "report['shmget'] = (libc.shmget(0, 2**20, 0o1600), ctypes.get_errno())\n"
        "print(json.dumps(report))\n"
    )
    host_tmp = set(os.listdir(tempfile.gettempdir()))
    result = hostile(source, timeout_s=20, cpu_time_s=10, max_file_mb=1)
    assert result.passed, result.stderr
    report = json.loads(result.stdout)
    assert report["big"][1] == errno.ENOSPC and report["bytes"] <= scratch_cap
    assert report["empty"][1] == errno.ENOSPC and report["empty"][0] <= sandbox.SCRATCH_INODES
    assert report["statvfs"][0] <= scratch_cap and report["statvfs"][1] <= sandbox.SCRATCH_INODES
    assert "written" not in report["elsewhere"].values(), report["elsewhere"]
    assert report["memfd"] == errno.EPERM and report["shmget"] == [-1, errno.EPERM]
    assert {n for n in set(os.listdir(tempfile.gettempdir())) - host_tmp if "sift" in n} == set()
    assert not os.path.exists("/sift-fill") and no_processes_left(run_uids[-1])


def test_huge_single_file_is_refused() -> None:
    result = hostile("open('big.bin', 'wb').write(b'x' * (3 * 2**20))\n", max_file_mb=1)
    assert not result.passed and result.killed_reason == "file_size"


def test_fork_bomb_under_the_dropped_uid(run_uids: list[int]) -> None:
    source = (
        "import os, time\n"
        "children = 0\n"
        "stop = time.monotonic() + 1.0\n"
        "while time.monotonic() < stop:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        while True:\n"
        "            try:\n"
        "                os.fork()\n"
        "            except OSError:\n"
        "                time.sleep(0.01)\n"
        "    children += 1\n"
        "    print(pid, flush=True)\n"
        "seen = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('total', len(seen), flush=True)\n"
        "os.kill(-1, 9)\n"
    )
    result = hostile(source, timeout_s=4, cpu_time_s=3, max_processes=4)
    lines = result.stdout.split()
    assert "total" in lines, result
    total = int(lines[lines.index("total") + 1])
    assert total <= 4 + 1  # RLIMIT_NPROC=4 in its own user namespace, plus bwrap's init
    assert no_processes_left(run_uids[-1])


def test_no_network_and_no_host_sockets(listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    unix_path = tmp_path / "host.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen(1)
    unix.settimeout(0.3)
    os.chmod(unix_path, 0o777)
    tmp_path.chmod(0o755)
    abstract_name = f"\0sift-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen(1)
    abstract.settimeout(0.3)
    source = (
        "import socket\n"
        f"targets = [(socket.AF_INET, ('127.0.0.1', {port})),\n"
        f"           (socket.AF_UNIX, {str(unix_path)!r}), (socket.AF_UNIX, {abstract_name!r}),\n"
        "           (socket.AF_INET, ('1.1.1.1', 53))]\n"
        "for family, address in targets:\n"
        "    s = socket.socket(family)\n"
        "    s.settimeout(1)\n"
        "    try:\n"
        "        s.connect(address)\n"
        "        print('connected', address)\n"
        "    except OSError as exc:\n"
        "        print('failed', exc.errno)\n"
    )
    try:
        result = hostile(source)
        assert result.passed, result.stderr
        assert "connected" not in result.stdout, result.stdout
        assert_no_connection(listener)
        for sock in (unix, abstract):
            with pytest.raises(TimeoutError):
                sock.accept()
    finally:
        unix.close()
        abstract.close()


STATUS = (
    "import json, os, sys, time\n"
    "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()\n"
    "          if ':\\t' in l)\n"
    "info = {k: st[k].split() for k in ('Uid', 'Gid', 'Groups', 'CapEff', 'CapPrm', 'CapBnd',\n"
    "        'CapAmb', 'NoNewPrivs', 'Seccomp') if k in st}\n"
    "calls = (('setuid', lambda: os.setuid(0)), ('chown', lambda: os.chown('.', 0, 0)))\n"
    "for name, call in calls:\n"
    "    try:\n"
    "        call()\n"
    "        info[name] = 'allowed'\n"
    "    except OSError as exc:\n"
    "        info[name] = exc.errno\n"
    "print(json.dumps(info), flush=True)\n"
    "time.sleep(float(sys.argv[0] == 'candidate.py') * 1.5)\n"
)


def test_runs_as_a_fresh_unprivileged_uid_without_capabilities(run_uids: list[int]) -> None:
    seen_outside: list[dict[str, str]] = []
    done: list[SandboxResult] = []
    thread = threading.Thread(target=lambda: done.append(hostile(STATUS, timeout_s=5)))
    thread.start()
    while thread.is_alive():  # the kernel's view from the host, for as long as it runs
        for pid in sandbox._uid_pids(run_uids[0]) if run_uids else []:
            try:
                seen_outside.append(uid_status(pid))
            except OSError:
                pass
        time.sleep(0.02)
    thread.join()
    second = hostile(STATUS.replace("1.5", "0"))
    assert done and done[0].passed and second.passed, done
    uid = run_uids[0]
    assert uid >= 10_000 and run_uids[1] != uid  # a fresh high uid per run
    info = json.loads(done[0].stdout)
    assert info["Uid"] == [str(uid)] * 4 and info["Gid"] == [str(uid)] * 4
    assert info["Groups"] == []
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(info[cap][0], 16) == 0, cap
    assert info["NoNewPrivs"] == ["1"] and info["Seccomp"] == ["2"]
    # uid 0 is not even mapped in its user namespace (EINVAL); as root both would be allowed
    assert info["setuid"] in (errno.EPERM, errno.EINVAL)
    assert info["chown"] in (errno.EPERM, errno.EINVAL)
    # The candidate: a python inside a PID namespace (NSpid has two levels). A python seen at
    # one level is the staging process between dropping to the uid and exec'ing bwrap (a
    # window a loaded machine widens); it is checked for its uid below like bwrap.
    candidate = [
        st for st in seen_outside
        if st["Name"].startswith("python") and len(st["NSpid"].split()) > 1
    ]  # fmt: skip
    assert candidate, f"the candidate was not seen from the host in a PID namespace: {seen_outside}"
    for status in seen_outside:  # bwrap and the candidate: the same unprivileged uid outside
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
    for status in candidate:  # (bwrap's setup holds capabilities only in its own user ns)
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NSpid"].split()[-1] == "2"  # pid 2 of a PID namespace of its own
    assert no_processes_left(uid)


def test_host_mount_table_is_unchanged() -> None:
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    assert run("print('x')").passed
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


# --- failing closed ------------------------------------------------------------------------------


def test_missing_bwrap_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_ISOLATION", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: None)
    with pytest.raises(EngineError, match=r"needs bubblewrap \(bwrap\).*apt-get install"):
        run("print('never runs')")


def test_a_broken_sandbox_is_an_error_not_a_failed_candidate() -> None:
    iso = dataclasses.replace(sandbox.isolation(), bwrap="/nonexistent/bwrap")
    limits = sandbox._Limits(**LIMITS)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="did not start"):
        sandbox._launch("print('x')", limits, iso, True)


def test_direct_mode_holds_too(tmp_path: Path) -> None:
    """Without root mount rights bwrap mounts the scratch itself; the boundary is the same."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("direct mode as root needs an interpreter the dropped uid can read")
    try:
        iso = sandbox.isolation(SYSTEM_PYTHON, staged=False)
    except EngineError as exc:
        pytest.skip(f"direct mode unavailable here: {exc}")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    source = STATUS.replace("1.5", "0") + (
        f"try:\n    open({str(secret)!r}).read()\nexcept OSError as exc:\n    print(exc.errno)\n"
        "open('f', 'wb').write(b'x' * 2**20)\n"
        "try:\n    open('g', 'wb').write(b'x' * 2**20)\n    open('h', 'wb').write(b'x' * 2**20)\n"
        "except OSError as exc:\n    print(exc.errno)\n"
    )
    limits = sandbox._Limits(**{**LIMITS, "max_file_mb": 1})  # type: ignore[arg-type]
    result = sandbox._launch(source, limits, iso, False)
    assert result.passed, result.stderr
    info, *rest = result.stdout.splitlines()
    assert rest == [str(errno.ENOENT), str(errno.ENOSPC)]
    info_d = json.loads(info)
    assert int(info_d["CapEff"][0], 16) == 0 and info_d["NoNewPrivs"] == ["1"]
    if ROOT:
        assert info_d["Uid"][0] != "0"
