"""Run untrusted Python (model-written programs and their tests) in a throwaway child process.

The ``python_tests`` reward executes code that a model wrote, so the parent must survive
anything that code does, and the code must not reach the network, other processes, the
worker's secrets or files outside its scratch directory. One call of :func:`run_python`:

* makes a fresh ``tempfile.TemporaryDirectory`` (the child's cwd, ``HOME`` and ``TMPDIR``),
  writes the source there as ``candidate.py``, and removes the directory afterwards;
* starts ``<python> -I -S -B -c <bootstrap>`` (``-I``: no ``PYTHON*`` variables, no user site;
  ``-S``: no site-packages, stdlib only; ``-B``: no .pyc writes) with stdin ``/dev/null``, an
  environment of only ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG`` (nothing inherited, so no
  secrets), in a new session (its own process group); no ``preexec_fn`` is used, so calling it
  from threads is safe;
* the bootstrap sets ``RLIMIT_CPU`` (soft = ``cpu_time_s``, hard one second later),
  ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE`` and ``RLIMIT_CORE = 0`` (soft = hard, so
  they cannot be raised back), then installs an audit hook, then compiles and ``exec``s the
  candidate as ``__main__``;
* the parent reads stdout/stderr through pipes, keeping the first 64 KiB of each and draining
  the rest, so a candidate that prints forever costs neither memory nor disk; at the wall-clock
  deadline it ``SIGKILL``s the whole process group and reaps it. Whatever the candidate does
  ends as a :class:`SandboxResult` (``passed`` False, ``killed_reason`` when known).

Isolation layers (probed once per interpreter and cached; see :func:`isolation`):

1. **Network namespace.** If ``unshare -rn <python> -c pass`` works, every run is prefixed with
   ``unshare -rn``: a new user + network namespace with no interface up, so no TCP/UDP at all
   (filesystem Unix sockets are not covered by a network namespace; layer 3 blocks those).
2. **Unprivileged uid.** When the worker runs as root and a dropped uid can start the
   interpreter, the child runs (via ``Popen(user=, group=, extra_groups=[])``) as a fresh
   uid/gid picked at random from a high, unused range — one per run, not ``nobody``, so
   ``RLIMIT_NPROC`` counts only this run's processes and every process of that uid can be
   swept (``pidfd`` + ``SIGKILL``) afterwards, even ones that left the process group. Root
   ignores ``RLIMIT_NPROC`` and file permissions, so this is what makes those limits real.
   It is not possible when the interpreter lives under a root-only directory (e.g. pyenv in
   ``/root``, as on the dev box): then the child stays uid 0 (inside a user namespace when
   ``unshare`` works, which maps it to the real root), ``RLIMIT_NPROC`` is void, the audit
   hook alone stops fork bombs and writes, and a warning is logged once. A non-root worker
   keeps its own uid: file permissions protect the system, not the worker's own files.
3. **Audit hook** (always; :pep:`578` hooks cannot be removed once added). It raises
   ``PermissionError("sift-sandbox: blocked <event>")`` for: every ``socket.*`` event;
   process creation (``os.system``, ``os.fork``, ``os.forkpty``, ``os.exec*``,
   ``os.posix_spawn*``, ``os.spawn*``, ``subprocess.Popen``; ``_posixsubprocess`` is replaced
   by a stub because its ``fork_exec`` raises no event); ``os.kill``, ``os.killpg``,
   ``signal.pthread_kill``; every ``ctypes.*`` event and importing ``ctypes``/``_ctypes``,
   sub-interpreter and ``_test*`` modules (hooks are per interpreter); ``resource.setrlimit``/
   ``prlimit``; ``gc.get_objects``/``get_referrers``/``get_referents`` (the plain way to
   reach the hook's closure); ``open`` in a writing mode (``w``/``a``/``x``/``+``, i.e. write flags)
   of a path that resolves (symlinks followed by the hook's own resolver) outside the working
   directory (``/dev/null`` excepted), and a relative ``os.open`` for writing (``dir_fd`` is
   invisible to the hook); ``os.open`` of a directory outside the working directory (so every
   ``dir_fd`` names a directory inside it); opening device nodes other than ``/dev/{null,zero,
   full,random,urandom}``; reading ``/proc/<pid>`` of any other process (the worker's
   ``environ``); ``os.remove/rmdir/mkdir/rename/link/symlink/chmod/chown/utime/truncate/
   *xattr/*chflags`` outside the working directory (a ``dir_fd`` is resolved through
   ``/proc/self/fd``) or on a file descriptor (``ftruncate`` excepted); a symlink whose target
   is outside. Reading files is allowed (imports need it). The hook only uses C functions and
   constants it captured before the candidate ran, so monkeypatching ``os``/``builtins`` does
   not change its decisions.
4. **rlimits** bound CPU, memory, file size and (with layer 2) processes; the wall-clock
   deadline and process-group kill bound everything else.

Caveat, honestly: this is defence in depth for code that is *probably* benign (model output),
not a security boundary for hostile code. An audit hook is bypassable in principle (races on
paths between the check and the syscall from threads, interpreter bugs, anything that corrupts
memory), and without layer 2 a bypass runs as root; reading files is allowed, so a candidate
as root can read anything on the filesystem (only its pass/fail leaves the worker). Run workers
that score untrusted programs in a container with no credentials mounted, as non-root or with a
Python the dropped uid can execute, and preferably under gVisor/Firecracker or seccomp.
"""

from __future__ import annotations

import grp
import logging
import math
import os
import pwd
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from workers.engine.errors import EngineError, InvalidInput

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024
"""Bytes of stdout and of stderr kept; the rest is read and dropped."""

_DRAIN_GRACE_S = 1.0
"""How long pipes are drained after the child died (an escaped holder could keep them open)."""

_BLOCKED_MARKER = "sift-sandbox: blocked"

_BOOTSTRAP = r"""
import sys


def _sift_setup():
    import posix
    import resource

    cpu, mem, nproc, fsize, audit = (int(a) for a in sys.argv[1:6])

    def limit(which, soft, hard):
        cur = resource.getrlimit(which)[1]
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(which, (soft, hard))

    limit(resource.RLIMIT_CORE, 0, 0)
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    limit(resource.RLIMIT_FSIZE, fsize, fsize)
    limit(resource.RLIMIT_NPROC, nproc, nproc)
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
del _sift_setup, _sift_hook
sys.argv = ["candidate.py"]
exec(_sift_code, {"__name__": "__main__", "__file__": "candidate.py"})
"""
"""Runs in the child: limits, then the audit hook, then the candidate (argv: cpu, AS bytes,
nproc, fsize bytes, audit 0/1). Module globals keep no reference to the hook."""


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
    """The OS layers usable with one interpreter on this machine (probed once)."""

    unshare: str | None
    """Path of ``unshare`` when ``unshare -rn`` works, else None."""
    drop_uid: bool
    """Whether each run gets its own unprivileged uid (only possible when we are root)."""


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

    Raises only for bad limits (InvalidInput) or if no child can be started (EngineError);
    everything the candidate does is reported in the result.
    """
    limits = _Limits(timeout_s, cpu_time_s, memory_mb, max_processes, max_file_mb)
    return _run(source, limits, python=sys.executable, audit=True)


_ISOLATION: dict[str, Isolation] = {}
_ISOLATION_LOCK = threading.Lock()


def isolation(python: str | None = None) -> Isolation:
    """Probe (once per interpreter, cached) which OS layers work here."""
    python = python or sys.executable
    with _ISOLATION_LOCK:
        found = _ISOLATION.get(python)
        if found is None:
            found = _probe_isolation(python)
            _ISOLATION[python] = found
            log.info("sandbox isolation for %s: %s", python, found)
            if os.geteuid() == 0 and not found.drop_uid:
                log.warning(
                    "sandboxed code runs as root (%s): a uid cannot be dropped because the "
                    "interpreter is not executable by other users; only the audit hook stands "
                    "between a candidate and the filesystem",
                    python,
                )
        return found


def _probe_isolation(python: str) -> Isolation:
    drop_uid = False
    uid = None
    if os.geteuid() == 0:
        uid = _pick_uid()
        drop_uid = uid is not None and _probe([python, "-I", "-S", "-B", "-c", "pass"], uid)
    unshare = shutil.which("unshare", path=os.environ.get("PATH", os.defpath) + ":/usr/bin:/bin")
    if unshare is not None:
        argv = [unshare, "-rn", python, "-I", "-S", "-B", "-c", "pass"]
        if not _probe(argv, uid if drop_uid else None):
            unshare = None
    return Isolation(unshare=unshare, drop_uid=drop_uid)


def _probe(argv: list[str], uid: int | None) -> bool:
    """Whether ``argv`` exits 0 when started the way a run starts (same cwd kind, same ids)."""
    with tempfile.TemporaryDirectory(prefix="sift-sandbox-", ignore_cleanup_errors=True) as tmp:
        try:
            if uid is not None:
                os.chown(tmp, uid, uid)
            done = subprocess.run(
                argv,
                cwd=tmp,
                env=_child_env(tmp),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
                user=uid,
                group=uid,
                extra_groups=None if uid is None else [],
            )
        except (OSError, subprocess.SubprocessError, ValueError):
            return False
        finally:
            if uid is not None:
                _sweep_uid(uid)
    return done.returncode == 0


def _child_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _run(source: str, limits: _Limits, *, python: str, audit: bool) -> SandboxResult:
    """One sandboxed run; ``audit=False`` skips the hook (tests of the OS layers only)."""
    iso = isolation(python)
    uid = _pick_uid() if iso.drop_uid else None
    if iso.drop_uid and uid is None:
        log.warning("no free uid for the sandbox: this run keeps the worker's uid")
    with tempfile.TemporaryDirectory(prefix="sift-sandbox-", ignore_cleanup_errors=True) as tmp:
        work = os.path.realpath(tmp)
        with open(os.path.join(work, "candidate.py"), "wb") as f:
            f.write(source.encode("utf-8", "replace"))
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "candidate.py"), uid, uid)
        argv = [python, "-I", "-S", "-B", "-c", _BOOTSTRAP]
        argv += [
            str(limits.cpu_time_s),
            str(limits.memory_mb * 2**20),
            str(limits.max_processes),
            str(limits.max_file_mb * 2**20),
            "1" if audit else "0",
        ]
        if iso.unshare is not None:
            argv = [iso.unshare, "-rn", *argv]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env=_child_env(work),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                user=uid,
                group=uid,
                extra_groups=None if uid is None else [],
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if uid is not None:
                _sweep_uid(uid)
            raise EngineError(f"could not start the python sandbox: {exc}") from exc
        try:
            out, err, status, cpu_s, timed_out = _supervise(proc, limits.timeout_s)
        finally:
            if uid is not None:
                _sweep_uid(uid)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if status is None:  # reaped by someone else: the outcome is unknown, so it did not pass
        return SandboxResult(None, timed_out, stdout, stderr, "timeout" if timed_out else "lost")
    exit_code = os.waitstatus_to_exitcode(status)
    reason = _killed_reason(exit_code, timed_out, cpu_s, limits, stderr)
    return SandboxResult(
        exit_code=None if timed_out or exit_code < 0 else exit_code,
        timed_out=timed_out,
        stdout=stdout,
        stderr=stderr,
        killed_reason=reason,
    )


def _supervise(
    proc: subprocess.Popen[bytes], timeout_s: float
) -> tuple[bytes, bytes, int | None, float, bool]:
    """Drain the pipes until the child is gone; kill its process group at the deadline.

    The leader is only reaped after ``killpg``: while it is a zombie its pid (the group id)
    cannot be reused, so the kill can never hit an unrelated process group. Returns stdout,
    stderr, the wait status (None if someone else reaped the child), CPU seconds, timed out.
    """
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    poller = select.poll()  # not select(): worker fds may be numbered above FD_SETSIZE
    for fd in kept:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    open_fds = len(kept)
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
            if not open_fds:
                time.sleep(0.01)
                continue
            for fd, _ in poller.poll(20):
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    open_fds -= 1
                    continue
                room = OUTPUT_CAP - len(kept[fd])
                if room > 0:
                    kept[fd] += chunk[:room]
    finally:
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
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
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
