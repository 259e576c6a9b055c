"""Model-written Python, run in a sandbox: bubblewrap's namespaces, an unprivileged uid, rlimits and a timeout.

Inside, the code sees no network (a network namespace of its own, with a loopback of its own), no other
process (a pid namespace) and a read-only root in which /tmp and the home directories are empty, with the Python
install bound back read-only. It may write in its working directory only, and each process is limited in address
space, CPU time, file size and open files; together they are limited in processes and wall-clock time. When its
time is up, the sandbox's pid 1 is killed, and the kernel kills everything else in its pid namespace with it.

RLIMIT_NPROC does not apply to root, so as root the code runs as a uid of its own (drawn per run, so that
concurrent runs do not share the count) after bubblewrap, still root, has set up the mounts. As anyone else,
bubblewrap makes a user namespace, and the count is that namespace's own.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunebook.params.safety import UNSANDBOXED_CHECKS, opted_in

BWRAP = "bwrap"
MISSING = (
    "python checks run in bubblewrap, which is not installed: apt-get install bubblewrap "
    f"(or set {UNSANDBOXED_CHECKS}=1 to run them under rlimits and a timeout only)"
)
# No account owns these (systemd's table of uid ranges marks 2^31 and above unused), so the code owns no file
# outside its working directory.
SANDBOX_UIDS = range(2**31, 2**31 + 2**24)
MB = 2**20


class SandboxError(RuntimeError):
    """The sandbox cannot run here, and the user did not opt out of it."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float  # wall clock, for everything the code starts
    memory_mb: int = 512  # address space, per process
    processes: int = 32  # processes and threads at once, all together
    file_mb: int = 16  # the largest file it may write, stdout and stderr included
    open_files: int = 128  # per process


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    stopped: str | None  # why the sandbox stopped the code (a limit, the timeout) as far as it can tell, or None


def run_python(args: list[str], workdir: Path, limits: Limits) -> Outcome:
    """`python -I ARGS` in `workdir`, a scratch directory, the only place the code may write (as root, it is
    handed to the sandbox's uid). The environment holds PATH, HOME, TMPDIR and LANG only, so the code never sees
    the API keys the teachers and judges read. Raises SandboxError when bubblewrap cannot run here, unless the
    user set TUNEBOOK_UNSANDBOXED_CHECKS=1: then the code runs under the rlimits and the timeout only."""
    problem = _sandbox_problem()
    if problem is not None and not opted_in(UNSANDBOXED_CHECKS):
        raise SandboxError(problem)
    return _run(args, workdir.resolve(), limits, sandboxed=problem is None)


@functools.cache
def _sandbox_problem() -> str | None:
    """Why the sandbox cannot run here (bubblewrap is missing, or cannot make its namespaces), or None."""
    if shutil.which(BWRAP) is None:
        return MISSING
    with tempfile.TemporaryDirectory(prefix="tunebook-sandbox-") as workdir:
        outcome = _run(["-c", "pass"], Path(workdir), Limits(timeout_s=30), sandboxed=True)
    if outcome.returncode == 0:
        return None
    lines = outcome.stderr.strip().splitlines()
    why = outcome.stopped or (lines[-1] if lines else f"exit code {outcome.returncode}")
    return (
        f"python checks run in bubblewrap, which cannot sandbox them here: {why} "
        f"(or set {UNSANDBOXED_CHECKS}=1 to run them under rlimits and a timeout only)"
    )


def _run(args: list[str], workdir: Path, limits: Limits, *, sandboxed: bool) -> Outcome:
    python = [sys.executable, "-I", *args]  # -I: no PYTHON* variables, user site or script directory
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
    info_read, info_write = os.pipe()
    # stdout and stderr go to files, not pipes: RLIMIT_FSIZE then bounds what the code can make us hold.
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr, open(info_read, "rb") as info:
        try:
            if sandboxed:
                command = _sandboxed(python, workdir, limits, info_write)
            else:
                # No process limit: outside a sandbox, RLIMIT_NPROC counts every process of the user.
                command = [*_rlimits(limits, processes=False), *python]
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(info_write,) if sandboxed else (),
                start_new_session=True,
            )
        finally:
            os.close(info_write)
        init, timed_out = None, False
        try:
            # bubblewrap writes the host pid of the sandbox's pid 1 here as soon as it exists (long before the code
            # could have ended, so the pid is still that process's).
            init_pid = json.loads(info.read() or b"{}").get("child-pid")
            init = os.pidfd_open(init_pid) if init_pid else None
            process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _stop(process, init)
        stdout.seek(0)
        stderr.seek(0)
        out, err = (stream.read().decode("utf-8", errors="replace") for stream in (stdout, stderr))
    return Outcome(process.returncode, out, err, _stopped(process.returncode, err, timed_out, limits, sandboxed))


def _sandboxed(python: list[str], workdir: Path, limits: Limits, info_fd: int) -> list[str]:
    hidden = _hidden_dirs()
    command = [BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for directory in hidden:
        command += ["--tmpfs", directory]
    # --dir first: the directories bubblewrap makes on the way to a mount point are 0700, closed to the code's uid.
    for prefix in _python_prefixes():
        command += ["--perms", "0755", "--dir", prefix, "--ro-bind", prefix, prefix]
    command += ["--perms", "0755", "--dir", str(workdir), "--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    # Made read-only once the mount points in them exist: in a user namespace their owner is the code's uid.
    for directory in [*hidden, "/dev"]:
        command += ["--remount-ro", directory]
    command += ["--die-with-parent", "--new-session", "--info-fd", str(info_fd)]
    if os.geteuid() != 0:
        return [*command, "--unshare-all", "--unshare-user", "--disable-userns", "--", *_rlimits(limits), *python]
    uid = SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))]
    os.chown(workdir, uid, uid)
    # No user namespace: the uid setpriv switches to must be a real one for RLIMIT_NPROC to count it.
    namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    return [*command, *namespaces, "--", *_rlimits(limits), *drop, "--no-new-privs", "--", *python]


def _rlimits(limits: Limits, *, processes: bool = True) -> list[str]:
    """prlimit, soft and hard limits alike unless said."""
    # CPU time gets a second over the timeout, so that a busy loop is reported as timed out; the limit stops what
    # the clock does not: several threads burning several cores at once.
    cpu = math.ceil(limits.timeout_s) + 1
    options = [f"--as={limits.memory_mb * MB}", f"--cpu={cpu}:{cpu + 1}", f"--fsize={limits.file_mb * MB}"]
    options += [f"--nofile={limits.open_files}", "--core=0"]
    if processes:
        options.append(f"--nproc={limits.processes}")
    return ["prlimit", *options, "--"]


def _hidden_dirs() -> list[str]:
    """/tmp, and the home directories (no reading ~/.ssh), outermost only."""
    candidates = {Path("/tmp"), Path("/root"), Path("/home"), Path.home()}
    found = {path.resolve() for path in candidates if path.is_dir() and path.resolve() != Path("/")}
    return sorted(str(path) for path in found if not any(other in path.parents for other in found))


def _python_prefixes() -> list[str]:
    """The directories the interpreter and its packages live in: a venv, its base install, the real binary's."""
    binary_prefix = Path(os.path.realpath(sys.executable)).parent.parent
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), binary_prefix}
    return sorted(str(prefix) for prefix in prefixes if prefix != Path("/"))


def _stop(process: subprocess.Popen, init: int | None) -> None:
    """Kill what is left of the run. `init` is a pidfd of the sandbox's pid 1: killing it makes the kernel kill
    everything in its pid namespace, and it reads as ended once they all have. bubblewrap itself may exit first,
    as soon as the code's main process has, leaving what that process started to the same end."""
    if init is None:
        if process.poll() is None:  # without a sandbox, the session is what can be reached (the code may leave it)
            os.killpg(process.pid, signal.SIGKILL)
    else:
        try:
            signal.pidfd_send_signal(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
        select.select([init], [], [])
        os.close(init)
    process.wait()


def _stopped(returncode: int, stderr: str, timed_out: bool, limits: Limits, sandboxed: bool) -> str | None:
    limit = None if returncode == 0 and not timed_out else _limit_hit(returncode, stderr, limits, sandboxed)
    if timed_out:
        return f"timed out after {limits.timeout_s:g} s" + (f" at {limit}" if limit else "")
    return f"exceeded {limit}" if limit else None


def _limit_hit(returncode: int, stderr: str, limits: Limits, sandboxed: bool) -> str | None:
    """The limit the code ran into, told by how it died or by Python's last words (it ignores SIGXFSZ)."""
    # bubblewrap exits 128 + the signal that killed the code, as a shell does.
    signalled = -returncode if returncode < 0 else returncode - 128 if sandboxed and returncode > 128 else None
    if signalled == signal.SIGXCPU:
        return f"the CPU-time limit ({math.ceil(limits.timeout_s) + 1} s)"
    lines = stderr.strip().splitlines()
    if (lines and lines[-1].startswith("MemoryError")) or "[Errno 12] Cannot allocate memory" in stderr:
        return f"the memory limit ({limits.memory_mb} MB)"
    if signalled == signal.SIGXFSZ or "[Errno 27] File too large" in stderr:
        return f"the file-size limit ({limits.file_mb} MB)"
    if "[Errno 24] Too many open files" in stderr:
        return f"the open-files limit ({limits.open_files})"
    if "[Errno 11] Resource temporarily unavailable" in stderr or "can't start new thread" in stderr:
        return f"the process limit ({limits.processes})" if sandboxed else None
    return None
