"""Run untrusted Python (model-written programs and their tests) inside a bubblewrap sandbox.

The ``python_tests`` reward executes code that a model (or a client) wrote, so the candidate
must not see or touch the host and the worker must survive anything the candidate does. The
boundary is the kernel's namespaces and credentials, set up by bubblewrap (``bwrap``); if
``bwrap`` is missing or cannot create namespaces, :func:`run_python` raises
:class:`~workers.engine.errors.EngineError` and runs nothing (it never falls back to running
the candidate unsandboxed).

What one call of :func:`run_python` gives the candidate:

* **Its own namespaces**: user (``--unshare-user`` with ``--disable-userns``: it cannot create
  further user namespaces, so it cannot get capabilities anywhere or mount anything), PID (it
  sees only its own processes; the worker and everything else on the host are not there to be
  signalled), network (only a loopback of its own: no route to the host or elsewhere, and no
  abstract Unix sockets of the host), IPC, UTS, cgroup and mount.
* **An unprivileged uid**: when the worker is root, every run gets a fresh uid/gid, picked at
  random from a high unused range, with no supplementary groups; it is that uid outside the
  user namespace too (``/proc/<pid>/status`` on the host shows it; its own ``uid_map`` reads
  ``U 0 1``, 0 being bwrap's intermediate namespace), so ``RLIMIT_NPROC`` and
  file permissions are real, and after the run every process of that uid is swept. No
  capabilities (``CapEff``/``CapBnd`` 0), ``NoNewPrivs`` 1. A non-root worker keeps its own uid
  (still inside the user namespace, with all of the rest).
* **A filesystem of its own**: a read-only ``/usr`` (with the ``/bin``, ``/lib``... links),
  the interpreter's prefix read-only at its own path, ``/proc`` of its own PID namespace, a
  minimal read-only ``/dev`` (``null``, ``zero``, ``full``, ``random``, ``urandom``, ``tty``,
  ``pts``), and a scratch tmpfs at ``/sandbox`` (cwd, ``HOME`` and ``TMPDIR``, holding
  ``candidate.py``) of ``2 * max_file_mb`` MiB plus the program's size. No ``/etc``, ``/home``,
  ``/tmp``, ``/var``, ``/run`` or ``/sys``, and of ``/root`` at most the path down to an
  interpreter that lives there; ``/`` itself is read-only. Nothing is written to the host's
  disk, so there is no host path to race for and nothing to clean up.
* **Bounded inodes** when the worker is root and may mount (*staged* mode): a helper (the
  worker's interpreter, as root, in a private mount namespace of its own) mounts the scratch
  tmpfs with ``nr_inodes`` = :data:`SCRATCH_INODES`, ``noexec``, owned by the run's uid, and
  stages the interpreter's prefix where the unprivileged uid can bind it (pyenv lives under
  ``/root``, mode 0700), then drops to the uid and ``exec``s bwrap. Without that privilege
  (*direct* mode: a non-root worker, or a container without ``CAP_SYS_ADMIN``) bwrap mounts the
  scratch itself: its size is bounded, its inode count only by CPU time (about 150k empty
  files per CPU second, ~1 KiB of kernel memory each), and the interpreter must be readable by
  the run's uid. Which mode is used is probed once per interpreter (:func:`isolation`).
* **A seccomp filter** (x86_64 and aarch64) that fails with ``EPERM`` the syscalls that could
  hold memory outside every limit below (``memfd_create``, SysV ``shmget``/``shmat``) or that
  only widen the kernel's attack surface (``io_uring``, ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``ptrace``, ``keyctl``, the mount and namespace calls, ...), and every
  syscall made through another ABI (i386, x32).
* **rlimits**, set by the bootstrap before the candidate's first line, soft = hard so they
  cannot be raised back: ``RLIMIT_CPU`` (soft ``cpu_time_s``, hard one second later),
  ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_NPROC`` (``max_processes``, counted in the run's own
  user namespace), ``RLIMIT_FSIZE`` (``max_file_mb``), ``RLIMIT_NOFILE``
  (:data:`MAX_OPEN_FILES`), ``RLIMIT_CORE`` 0.
* **An environment** of only ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG``; stdin ``/dev/null``;
  ``python -I -S -B`` (no ``PYTHON*`` variables, no site-packages: stdlib only, no .pyc).
* **The audit hook** of earlier versions stays as a second, in-process layer (it reports
  ``killed_reason="blocked"`` for sockets, process creation, signals, writes outside the cwd
  ...); it is bypassable in principle and is no longer what the promises above rest on.

The parent reads stdout/stderr through pipes, keeping the first 64 KiB of each and draining the
rest; at the wall-clock deadline it ``SIGKILL``s the process group of bwrap, whose death kills
the sandbox's PID namespace (``--die-with-parent``; the sandbox's init takes every process in
it along), then reaps it; the run's uid is swept afterwards. Whatever the candidate does ends
as a :class:`SandboxResult`; bwrap reports a signal death as exit status ``128 + signal``,
which is turned back into a signal here (so a candidate that itself exits with 137 reads as
killed; it fails either way).

Not promised: protection from kernel bugs (the candidate still makes most syscalls against the
host kernel; use gVisor/Firecracker/a VM for that), from CPU or memory-bandwidth contention
with the worker, or from kernel memory held through pipes and sockets (bounded only by
``MAX_OPEN_FILES * max_processes`` buffers). The interpreter's prefix and ``/usr`` are
readable, and so are host-wide ``/proc`` files (``cpuinfo``, ``meminfo``, ``sys/``): keep no
secrets there. Total memory is bounded per process (``RLIMIT_AS``) and by the scratch size,
not per run; a memory cgroup around the worker is the operator's job.
Requirements: Linux with unprivileged user namespaces, ``bwrap`` on ``PATH`` (Debian package
``bubblewrap``), and in a container a seccomp/AppArmor profile that allows ``unshare``/``mount``
and an unmasked ``/proc`` (plus ``CAP_SYS_ADMIN`` for staged mode; see docker-compose.yml).
"""

from __future__ import annotations

import errno
import functools
import grp
import logging
import math
import os
import pwd
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from workers.engine.errors import EngineError, InvalidInput

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024
"""Bytes of stdout and of stderr kept; the rest is read and dropped."""

SCRATCH_INODES = 4096
"""Files + directories the scratch tmpfs holds in staged mode (the kernel memory they pin)."""

MAX_OPEN_FILES = 64
"""``RLIMIT_NOFILE`` of every sandboxed process."""

BWRAP_MISSING = "python_tests needs bubblewrap (bwrap) on the worker; apt-get install bubblewrap"

SANDBOX_DIR = "/sandbox"
"""The scratch tmpfs inside the sandbox: cwd, HOME and TMPDIR of the candidate."""

_DRAIN_GRACE_S = 1.0
"""How long pipes are drained after bwrap died (the sandbox dies with it; this is a bound)."""

_BLOCKED_MARKER = "sift-sandbox: blocked"

_READY = b"sift-sandbox: ready\n"
"""Written to stderr by the bootstrap before the candidate runs, then stripped by the parent:
without it the sandbox itself failed (an EngineError), not the candidate."""

_SETUP_FAILED = 125
"""Exit status of the staging helper when it could not set up the sandbox."""

_STAGE_DIR = "/tmp"
"""Where the staging helper mounts its own tmpfs, in its private mount namespace only."""

_CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

_BOOTSTRAP = r"""
import sys

READY = b"sift-sandbox: ready\n"


def _sift_setup():
    import posix
    import resource

    posix.write(2, READY)
    import os

    os.environ.pop("PWD", None)  # bwrap sets it after --chdir; the environment stays minimal
    cpu, mem, nproc, fsize, nofile, audit = (int(a) for a in sys.argv[1:7])

    def limit(which, soft, hard):
        cur = resource.getrlimit(which)[1]
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(which, (soft, hard))

    limit(resource.RLIMIT_CORE, 0, 0)
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    limit(resource.RLIMIT_FSIZE, fsize, fsize)
    limit(resource.RLIMIT_NPROC, nproc, nproc)
    limit(resource.RLIMIT_NOFILE, nofile, nofile)
    limit(resource.RLIMIT_AS, mem, mem)
    with open("candidate.py", "rb") as f:
        source = f.read()
    if audit:
        def fork_exec(*args, **kwargs):
            raise PermissionError("sift-sandbox: blocked _posixsubprocess.fork_exec")

        stub = type(sys)("_posixsubprocess")
        stub.fork_exec = fork_exec
        sys.modules["_posixsubprocess"] = stub
        sys.addaudithook(_sift_hook(posix.getcwd(), posix.getpid(), posix))
    return source


def _sift_hook(root, pid, posix):
    lstat, stat, readlink, getcwd = posix.lstat, posix.stat, posix.readlink, posix.getcwd
    isinstance_, str_, bytes_, int_ = isinstance, str, bytes, int
    Denied, OSError_, ValueError_ = PermissionError, OSError, ValueError
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_APPEND | posix.O_CREAT | posix.O_TRUNC
    inside = root + "/"
    own_proc = str(pid)
    devices_ok = frozenset(("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"))
    deny_events = frozenset((
        "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
        "os.startfile", "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
        "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "cpython.PyInterpreterState_New",
        "sys.remote_exec",
    ))
    deny_prefixes = ("socket.", "ctypes.", "_ctypes.", "os.exec", "os.spawn", "os.posix_spawn")
    deny_imports = frozenset((
        "ctypes", "_ctypes", "_ctypes_test", "_posixsubprocess", "_xxsubinterpreters",
        "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues",
        "concurrent.interpreters", "_testcapi", "_testinternalcapi", "_testmultiphase",
        "_testsinglephase", "_testbuffer", "_testimportmultiple", "_testclinic",
        "_testexternalinspection", "_remote_debugging", "_xxtestfuzz",
    ))
    # event -> ((index of a path argument, index of its dir_fd argument or None), ...)
    fs_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.truncate": ((0, None),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
        "os.symlink": ((1, 2),), "os.chflags": ((0, None),), "os.lchflags": ((0, None),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    }

    def deny(what):
        raise Denied("sift-sandbox: blocked " + what)

    def resolve(path, event, base=None):
        if isinstance_(path, bytes_):
            path = path.decode("utf-8", "surrogateescape")
        elif not isinstance_(path, str_):
            deny(event + " on a non-path argument")
        if not path.startswith("/"):
            path = (getcwd() if base is None else base) + "/" + path
        todo = path.split("/")
        todo.reverse()
        done = []
        hops = 0
        while todo:
            part = todo.pop()
            if part == "" or part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            here = "/" + "/".join(done + [part])
            try:
                mode = lstat(here).st_mode
            except (OSError_, ValueError_):
                done.append(part)
                continue
            if mode & 0o170000 == 0o120000:
                hops += 1
                if hops > 40:
                    deny(event + " through a symlink loop")
                target = readlink(here)
                if target.startswith("/"):
                    done = []
                parts = target.split("/")
                parts.reverse()
                todo.extend(parts)
            else:
                done.append(part)
        return "/" + "/".join(done)

    def contained(resolved):
        return resolved == root or resolved.startswith(inside)

    def check_open(path, mode, flags):
        if isinstance_(path, int_):
            return  # an already open descriptor (stdout, os.pipe, ...)
        real = resolve(path, "open")
        if real.startswith("/proc/"):
            first = real[6:].split("/", 1)[0]
            if first.isdigit() and first != own_proc:
                deny("open of another process's /proc entry")
        try:
            kind = stat(real).st_mode & 0o170000
        except (OSError_, ValueError_):
            kind = 0
        if (kind == 0o020000 or kind == 0o060000) and real not in devices_ok:
            deny("open of device " + real)
        if mode is None and kind == 0o040000 and not contained(real):
            deny("os.open of a directory outside the working directory")  # no foreign dir_fd
        if not isinstance_(flags, int_) or flags & write_flags:
            if mode is None and not real_is_absolute(path):
                deny("os.open for writing of a relative path")  # its dir_fd is not in the event
            if not contained(real) and real != "/dev/null":
                deny("open for writing outside the working directory: " + real)

    def real_is_absolute(path):
        if isinstance_(path, bytes_):
            return path.startswith(b"/")
        return isinstance_(path, str_) and path.startswith("/")

    def dir_of(event, dir_fd):
        # the directory a dir_fd names (only directories inside root can be os.open-ed)
        if dir_fd is None or dir_fd == -1:
            return None
        if not isinstance_(dir_fd, int_):
            deny(event + " with an odd dir_fd")
        try:
            where = readlink("/proc/self/fd/" + str_(dir_fd))
        except (OSError_, ValueError_):
            deny(event + " with an unknown dir_fd")
        if not where.startswith("/"):
            deny(event + " with an unknown dir_fd")
        return where

    def check_fs(event, args, spec):
        for path_i, dir_i in spec:
            path = args[path_i]
            if isinstance_(path, int_):
                if event != "os.truncate":  # ftruncate needs a descriptor opened for writing
                    deny(event + " on a file descriptor")
                continue
            base = None if dir_i is None else dir_of(event, args[dir_i])
            real = resolve(path, event, base)
            if not contained(real):
                deny(event + " outside the working directory")
            if event == "os.symlink":
                target = args[0]
                if isinstance_(target, bytes_):
                    target = target.decode("utf-8", "surrogateescape")
                if not isinstance_(target, str_):
                    deny(event + " on a non-path argument")
                if not contained(resolve(target, event, real.rsplit("/", 1)[0] or "/")):
                    deny("os.symlink to outside the working directory")

    def hook(event, args):
        if event == "open":
            check_open(args[0], args[1], args[2])
        elif event == "import":
            if args[0] in deny_imports or args[0].split(".")[0] in deny_imports:
                deny("import of " + args[0])
        elif event in fs_events:
            check_fs(event, args, fs_events[event])
        elif event in deny_events or event.startswith(deny_prefixes):
            deny(event)

    return hook


_sift_code = compile(_sift_setup(), "candidate.py", "exec")
del _sift_setup, _sift_hook, READY
sys.argv = ["candidate.py"]
exec(_sift_code, {"__name__": "__main__", "__file__": "candidate.py"})
"""
"""Runs in the sandbox: the ready marker, limits, the audit hook, then the candidate (argv: cpu,
AS bytes, nproc, fsize bytes, nofile, audit 0/1). Module globals keep no reference to the hook."""

_STAGE = r"""
import ctypes, os, sys


def stage(cfg):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]

    def check(rc, what):
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, what + ": " + os.strerror(err))

    nosuid, nodev, noexec, bind, rec, private = 2, 4, 8, 4096, 16384, 1 << 18
    # argv: uid, scratch bytes, scratch inodes, source fd, n, stage dir, n runtime dirs, bwrap argv
    uid, size, inodes, source_fd, count = (int(a) for a in cfg[:5])
    stage_dir, runtime = cfg[5], cfg[6 : 6 + count]
    check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, rec | private, None), "make / private")
    # opened inside the new namespace, before anything is mounted over the stage directory
    fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in runtime]
    opts = "size=65536,nr_inodes=64,mode=0755"
    check(libc.mount(b"sift-stage", stage_dir.encode(), b"tmpfs", nosuid | nodev, opts.encode()),
          "mount the stage tmpfs")
    for i, fd in enumerate(fds):
        target = stage_dir + "/rt" + str(i)
        os.mkdir(target)
        check(libc.mount(("/proc/self/fd/" + str(fd)).encode(), target.encode(), None, bind | rec,
                         None), "bind " + runtime[i])
        os.close(fd)
    scratch = stage_dir + "/scratch"
    os.mkdir(scratch)
    opts = "size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d" % (size, inodes, uid, uid)
    check(libc.mount(b"sift-scratch", scratch.encode(), b"tmpfs", nosuid | nodev | noexec,
                     opts.encode()), "mount the scratch tmpfs")
    with os.fdopen(source_fd, "rb") as src:
        program = src.read()
    fd = os.open(scratch + "/candidate.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as dst:
        dst.write(program)
    os.chown(scratch + "/candidate.py", uid, uid)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
        raise OSError("the uid was not dropped")
    os.chdir("/")
    return cfg[6 + count :]


try:
    argv = stage(sys.argv[1:])
    os.execv(argv[0], argv)
except BaseException as exc:
    sys.stderr.write("sift-sandbox: setup failed: %r\n" % (exc,))
    sys.stderr.flush()
    os._exit(125)
"""
"""Staged mode's helper, run as root with ``python -I -S -B -c``: a private mount namespace with
a tmpfs over the stage directory holding the interpreter's prefix (bound through descriptors, so
no path under a root-only directory is walked by the unprivileged uid) and the inode-bounded
scratch with ``candidate.py``; then it drops to the run's uid and ``exec``s bwrap."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one run; ``exit_code`` is None when a signal (or the deadline) ended it."""

    exit_code: int | None
    timed_out: bool
    stdout: str
    stderr: str
    killed_reason: str | None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class Isolation:
    """How runs with one interpreter are sandboxed on this machine (probed once, cached)."""

    bwrap: str
    """Real path of the bubblewrap binary."""
    python: str
    """Real path of the interpreter; the sandbox sees it at the same path."""
    runtime: tuple[str, ...]
    """The interpreter's directories outside ``/usr``, bound read-only at their own paths."""
    staged: bool
    """True: a root helper mounts an inode-bounded scratch; False: bwrap's own tmpfs."""
    drop_uid: bool
    """Whether every run gets its own unprivileged uid (only when the worker is root)."""
    seccomp: bool
    """Whether the syscall filter is loaded (x86_64 and aarch64 only)."""


@dataclass(frozen=True)
class _Limits:
    timeout_s: float
    cpu_time_s: int
    memory_mb: int
    max_processes: int
    max_file_mb: int

    def __post_init__(self) -> None:
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise InvalidInput(f"sandbox timeout_s must be a positive number, got {t!r}")
        for name in ("cpu_time_s", "memory_mb", "max_processes", "max_file_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInput(f"sandbox {name} must be an integer >= 1, got {v!r}")


_PROBE_LIMITS = _Limits(
    timeout_s=30.0, cpu_time_s=10, memory_mb=512, max_processes=8, max_file_mb=1
)


def run_python(
    source: str,
    *,
    timeout_s: float,
    cpu_time_s: int,
    memory_mb: int,
    max_processes: int,
    max_file_mb: int,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` in a fresh sandboxed interpreter (see the module doc).

    Raises only for bad limits (InvalidInput) or when the sandbox itself cannot be set up
    (EngineError, e.g. no bwrap); everything the candidate does is reported in the result.
    """
    limits = _Limits(timeout_s, cpu_time_s, memory_mb, max_processes, max_file_mb)
    return _run(source, limits, python=sys.executable, audit=True)


_ISOLATION: dict[tuple[str, bool | None], Isolation] = {}
_ISOLATION_LOCK = threading.Lock()


def isolation(python: str | None = None, *, staged: bool | None = None) -> Isolation:
    """Probe (once per interpreter, cached) how runs are sandboxed here, or raise EngineError.

    ``staged=None`` takes staged mode where it works, else direct mode; True/False insist on
    one (tests). Failures are not cached, so installing bwrap needs no worker restart.
    """
    python = python or sys.executable
    key = (python, staged)
    with _ISOLATION_LOCK:
        found = _ISOLATION.get(key)
        if found is None:
            found = _probe_isolation(python, staged)
            _ISOLATION[key] = found
            log.info("sandbox isolation for %s: %s", python, found)
            if not found.staged and staged is None:
                log.warning(
                    "python_tests sandbox in direct mode (the worker cannot mount as root): the "
                    "scratch tmpfs bounds bytes, but its inode count only by the CPU limit"
                )
            if not found.seccomp:
                log.warning(
                    "python_tests sandbox without a seccomp filter on %s", os.uname().machine
                )
        return found


def _probe_isolation(python: str, staged: bool | None) -> Isolation:
    bwrap = _find_bwrap()
    exe, runtime = _runtime(python)
    root = os.geteuid() == 0
    modes = [True, False] if staged is None else [staged]
    errors = []
    for mode in modes:
        if mode and not root:
            errors.append("staged: needs a root worker")
            continue
        iso = Isolation(bwrap, exe, runtime, mode, root, _seccomp_program() is not None)
        name = "staged" if mode else "direct"
        try:
            result = _launch("import sys\nsys.stdout.write('ok')\n", _PROBE_LIMITS, iso, False)
        except EngineError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if result.passed and result.stdout == "ok":
            return iso
        errors.append(f"{name}: exit {result.exit_code}, stderr {result.stderr[-500:]!r}")
    raise EngineError("python_tests cannot set up its sandbox here: " + "; ".join(errors))


def _find_bwrap() -> str:
    path = os.environ.get("PATH", os.defpath) + ":/usr/bin:/bin"
    found = shutil.which("bwrap", path=path)
    if found is None:
        raise EngineError(BWRAP_MISSING)
    return os.path.realpath(found)


def _runtime(python: str) -> tuple[str, tuple[str, ...]]:
    """The interpreter's real path and its directories that ``/usr`` does not already cover."""
    exe = os.path.realpath(python)
    code = (
        "import sys, sysconfig\n"
        "print('\\0'.join([sys.base_prefix, sys.base_exec_prefix, sysconfig.get_path('stdlib'),"
        " sysconfig.get_path('platstdlib')]))\n"
    )
    try:
        done = subprocess.run(
            [exe, "-I", "-S", "-c", code],
            env=_CHILD_ENV,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"cannot run the sandbox's interpreter {exe}: {exc}") from exc
    if done.returncode != 0:
        raise EngineError(f"cannot run the sandbox's interpreter {exe}: {done.stderr[-500:]}")
    paths = {os.path.realpath(p) for p in done.stdout.strip().split("\0") if p}
    paths.add(os.path.dirname(os.path.dirname(exe)))
    keep: list[str] = []
    for path in sorted(paths, key=len):
        if path == "/":
            raise EngineError(f"the interpreter {exe} lives in /, which the sandbox cannot bind")
        if not any(_within(path, k) for k in ["/usr", *keep]):
            keep.append(path)
    return exe, tuple(keep)


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _system_links() -> list[str]:
    """bwrap arguments recreating ``/bin``, ``/lib``... as on the host (links or read-only)."""
    args = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _run(
    source: str, limits: _Limits, *, python: str, audit: bool, staged: bool | None = None
) -> SandboxResult:
    """One sandboxed run; ``audit=False`` skips the hook (tests of the OS layers alone)."""
    return _launch(source, limits, isolation(python, staged=staged), audit)


def _launch(source: str, limits: _Limits, iso: Isolation, audit: bool) -> SandboxResult:
    uid = _pick_uid() if iso.drop_uid else None
    if iso.drop_uid and uid is None:
        raise EngineError("no free uid for the python sandbox")  # never run it as root
    program = source.encode("utf-8", "replace")
    scratch_bytes = 2 * limits.max_file_mb * 2**20 + len(program) + 64 * 1024
    scratch_bytes += -scratch_bytes % 4096
    seccomp = _seccomp_program() if iso.seccomp else None
    fds: list[int] = []
    try:
        fds.append(_memfd("sift-candidate", program))
        if seccomp is not None:
            fds.append(_memfd("sift-seccomp", seccomp))
        argv = _bwrap_argv(iso, limits, audit, scratch_bytes, fds[0], fds[1:])
        user = uid
        if iso.staged:
            config = [uid, scratch_bytes, SCRATCH_INODES, fds[0], len(iso.runtime), _STAGE_DIR]
            config += [*iso.runtime, *argv]
            argv, user = [iso.python, "-I", "-S", "-B", "-c", _STAGE, *map(str, config)], None
        proc = subprocess.Popen(
            argv,
            cwd="/",
            env=_CHILD_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=fds,
            user=user,
            group=user,
            extra_groups=None if user is None else [],
        )
    except (OSError, subprocess.SubprocessError) as exc:
        if uid is not None:
            _sweep_uid(uid)
        raise EngineError(f"could not start the python sandbox: {exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)
    try:
        out, err, status, cpu_s, timed_out = _supervise(proc, limits.timeout_s)
    finally:
        if uid is not None:
            _sweep_uid(uid)
    started = err.startswith(_READY)
    if started:
        err = err[len(_READY) :]
    elif not timed_out:
        tail = err.decode("utf-8", "replace")[-1000:]
        raise EngineError(f"the python sandbox did not start (bwrap or setup failed): {tail}")
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if status is None:  # reaped by someone else: the outcome is unknown, so it did not pass
        return SandboxResult(None, timed_out, stdout, stderr, "timeout" if timed_out else "lost")
    exit_code = os.waitstatus_to_exitcode(status)
    if 128 < exit_code <= 128 + 64:  # bwrap reports "killed by signal N" as exit 128 + N
        exit_code = 128 - exit_code
    reason = _killed_reason(exit_code, timed_out, cpu_s, limits, stderr)
    return SandboxResult(
        exit_code=None if timed_out or exit_code < 0 else exit_code,
        timed_out=timed_out,
        stdout=stdout,
        stderr=stderr,
        killed_reason=reason,
    )


def _bwrap_argv(
    iso: Isolation,
    limits: _Limits,
    audit: bool,
    scratch_bytes: int,
    source_fd: int,
    seccomp_fds: list[int],
) -> list[str]:
    argv = [
        iso.bwrap,
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sift-sandbox",
        "--clearenv",
    ]
    env = {**_CHILD_ENV, "HOME": SANDBOX_DIR, "TMPDIR": SANDBOX_DIR}
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr", *_system_links()]
    for i, path in enumerate(iso.runtime):
        argv += ["--ro-bind", f"{_STAGE_DIR}/rt{i}" if iso.staged else path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    if iso.staged:
        argv += ["--bind", f"{_STAGE_DIR}/scratch", SANDBOX_DIR]
    else:
        argv += ["--perms", "0700", "--size", str(scratch_bytes), "--tmpfs", SANDBOX_DIR]
        argv += ["--perms", "0600", "--file", str(source_fd), f"{SANDBOX_DIR}/candidate.py"]
    for fd in seccomp_fds:
        argv += ["--seccomp", str(fd)]
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_DIR, "--"]
    argv += [iso.python, "-I", "-S", "-B", "-c", _BOOTSTRAP]
    argv += [
        str(limits.cpu_time_s),
        str(limits.memory_mb * 2**20),
        str(limits.max_processes),
        str(limits.max_file_mb * 2**20),
        str(MAX_OPEN_FILES),
        "1" if audit else "0",
    ]
    return argv


def _memfd(name: str, data: bytes) -> int:
    """An anonymous file holding ``data``, read from offset 0 by the child (no disk, no path)."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _supervise(
    proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[bytes, bytes, int | None, float, bool]:
    """Drain the pipes until bwrap is gone; kill its process group at the deadline.

    Killing bwrap kills the sandbox's PID namespace with it (``--die-with-parent``). The leader
    is only reaped after ``killpg``: while it is a zombie its pid (the group id) cannot be
    reused, so the kill can never hit an unrelated process group. Returns stdout, stderr, the
    wait status (None if someone else reaped it), CPU seconds (the sandbox's, as bwrap reaped
    it), timed out.
    """
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    caps = {out_fd: OUTPUT_CAP, err_fd: OUTPUT_CAP + len(_READY)}  # the marker is stripped
    poller = select.poll()  # not select(): worker fds may be numbered above FD_SETSIZE
    for fd in kept:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    open_fds = len(kept)
    try:  # readable once the child exits: no polling interval between its exit and ours
        pidfd: int | None = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except OSError:
        pidfd = None
    deadline = time.monotonic() + timeout_s
    timed_out = False
    exited_at: float | None = None
    status: int | None = None
    cpu_s = 0.0
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
                _kill_group(proc.pid)  # stragglers of the group; the leader is a zombie
            if exited_at is None and now >= deadline:
                timed_out = True
                _kill_group(proc.pid)
                deadline = math.inf
            if exited_at is not None and (not open_fds or now - exited_at > _DRAIN_GRACE_S):
                break
            if not open_fds and pidfd is None:
                time.sleep(0.01)
                continue
            if exited_at is None:
                wait_s = min(deadline - now, 1.0) if pidfd is not None else 0.02
            else:
                wait_s = _DRAIN_GRACE_S - (now - exited_at)
            for fd, _ in poller.poll(max(1, math.ceil(wait_s * 1000))):
                if fd == pidfd:
                    poller.unregister(fd)  # it has exited; the top of the loop notices
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    open_fds -= 1
                    continue
                room = caps[fd] - len(kept[fd])
                if room > 0:
                    kept[fd] += chunk[:room]
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if exited_at is None:  # an exception in the loop: never leave the child behind
            _kill_group(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            cpu_s = usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): status unknown
            proc.returncode = -signal.SIGKILL
        proc.stdout.close()
        proc.stderr.close()
    return bytes(kept[out_fd]), bytes(kept[err_fd]), status, cpu_s, timed_out


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _killed_reason(
    exit_code: int, timed_out: bool, cpu_s: float, limits: _Limits, stderr: str
) -> str | None:
    """Best guess at why a run failed, from the deadline, the signal, CPU used and stderr."""
    memory = "MemoryError" in stderr or "Cannot allocate memory" in stderr
    if timed_out:
        return "timeout"
    if exit_code < 0:
        sig = -exit_code
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_time_s - 0.1):
            return "cpu"
        if memory:
            return "memory"
        if sig == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    if exit_code == 0:
        return None
    if memory:
        return "memory"
    if _BLOCKED_MARKER in stderr:
        return "blocked"
    if "File too large" in stderr:
        return "file_size"
    return None


# --- seccomp -----------------------------------------------------------------------------------

_SECCOMP_DENY = {
    # syscall: (x86_64 number, aarch64 number); fails with EPERM in the sandbox
    "memfd_create": (319, 279),  # anonymous files: memory outside RLIMIT_AS and the scratch
    "memfd_secret": (447, 447),
    "shmget": (29, 194),  # SysV shared memory outlives its attachments
    "shmat": (30, 196),
    "userfaultfd": (323, 282),  # the rest: attack surface no test program needs
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "unshare": (272, 97),
    "setns": (308, 268),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "lookup_dcookie": (212, 18),
    "iopl": (172, None),
    "ioperm": (173, None),
    "modify_ldt": (154, None),
    "uselib": (134, None),
}

_AUDIT_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}


@functools.cache
def _seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter for bwrap's ``--seccomp``, or None on other machines.

    Syscalls of another ABI (i386 ``int 0x80``, x32) fail with ENOSYS, the listed ones with
    EPERM, everything else is allowed.
    """
    found = _AUDIT_ARCH.get(os.uname().machine)
    if found is None:
        return None
    column, arch = found
    numbers = sorted({nrs[column] for nrs in _SECCOMP_DENY.values() if nrs[column] is not None})
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    enosys = 0x00050000 | errno.ENOSYS
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, enosys), (ld_abs, 0, 0, 0)]
    if column == 0:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, enosys)]  # __X32_SYSCALL_BIT
    for i, nr in enumerate(numbers):
        prog.append((jeq, len(numbers) - i, 0, nr))  # to the final "deny"
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *op) for op in prog)


# --- per-run uids ------------------------------------------------------------------------------

_UID_SPANS = ((100_000, 2**31 - 2), (10_000, 65_533))
"""Preferred range for per-run uids, then the fallback for small user-namespace maps."""


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """``[start, end)`` id ranges of this process's user namespace map (all ids if unreadable)."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        return [(int(r[0]), int(r[0]) + int(r[2])) for r in rows]
    except (OSError, ValueError, IndexError):
        return [(0, 2**32 - 1)]


def _pick_uid() -> int | None:
    """A random uid (= gid) that is mapped here, has no passwd/group entry and no processes."""
    mapped_u = _mapped_ranges("/proc/self/uid_map")
    mapped_g = _mapped_ranges("/proc/self/gid_map")
    rng = random.SystemRandom()
    for lo, hi in _UID_SPANS:
        spans = [
            (max(lo, a, c), min(hi, b, d))
            for a, b in mapped_u
            for c, d in mapped_g
            if max(lo, a, c) < min(hi, b, d)
        ]
        total = sum(b - a for a, b in spans)
        for _ in range(16 if total else 0):
            k = rng.randrange(total)
            for a, b in spans:
                if k < b - a:
                    uid = a + k
                    break
                k -= b - a
            if _id_is_free(uid):
                return uid
    return None


def _id_is_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return False
    except KeyError:
        pass
    return not _uid_pids(uid)


def _uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real or effective uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _proc_uid_matches(int(name), uid):
            found.append(int(name))
    return found


def _proc_uid_matches(pid: int, uid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return False
    fields = {}
    for line in status.split("\n", 10):  # State and Uid are among the first lines
        name, _, value = line.partition(":")
        fields[name] = value
    if fields.get("State", "").strip().startswith("Z"):
        return False
    uids = fields.get("Uid", "").split()
    return str(uid) in uids[:2]


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process of a per-run uid until none is left (bounded: ~2 s)."""
    for _ in range(200):
        pids = _uid_pids(uid)
        if not pids:
            return
        for pid in pids:
            _kill_pid_of(pid, uid)
        time.sleep(0.01)
    log.warning("sandbox uid %d still has processes after the sweep", uid)


def _kill_pid_of(pid: int, uid: int) -> None:
    """Kill ``pid`` if it still belongs to ``uid``; a pidfd makes pid reuse harmless."""
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, PermissionError):
        return
    except OSError:  # no pidfd support: plain kill after a re-check
        if _proc_uid_matches(pid, uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return
    try:
        if _proc_uid_matches(pid, uid):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)
