"""Hostile python checks: each is stopped, and nothing escapes the sandbox (tunebook.sandbox, through check_answer).

A hostile check names its processes with a marker (/proc/self/comm, which children inherit), so the test can see
them running from outside and see that none is left afterwards."""

import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tunebook import paths, sandbox
from tunebook.checks import Verdict, check_answer
from tunebook.params import CheckParams
from tunebook.params.safety import UNSANDBOXED_CHECKS


def python_check(**fields) -> CheckParams:
    return CheckParams(name="code", kind="python", expected="done", **fields)


@pytest.fixture
def mark() -> str:
    return "tbk" + secrets.token_hex(5)


def marking(mark: str) -> str:
    """Code that names its process `mark`, or fails."""
    return f"open('/proc/self/comm', 'w').write({mark!r})\nassert open('/proc/self/comm').read().strip() == {mark!r}\n"


def processes_named(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == mark:
                found.append(int(entry.name))
        except OSError:  # it ended while we looked
            pass
    return found


def check_watched(check: CheckParams, code: str, mark: str) -> Verdict:
    """check_answer, having seen the marked processes run while it waits: a test that finds none left afterwards
    then shows they were stopped, not that they never ran."""
    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(check_answer, check, code)
        assert _within(10, lambda: processes_named(mark) or verdict.done()), "the check ended at once"
        assert processes_named(mark), "the marked processes never showed"
        return verdict.result()


def _within(seconds: float, condition: Callable[[], object]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- what a check may do ---------------------------------------------------------------------------------


def test_a_normal_check_prints_imports_the_stdlib_and_writes_in_its_own_directory():
    code = (
        "import collections, json, math, pathlib, subprocess, sys, tempfile\n"
        "pathlib.Path('notes.txt').write_text('ok')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as f:\n"
        "    f.write('scratch')\n"
        "child = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout\n"
        "print(json.dumps([pathlib.Path('notes.txt').read_text(), pathlib.Path(f.name).read_text(), child.strip()]))"
    )
    assert check_answer(CheckParams(name="c", kind="python", expected='["ok", "scratch", "42"]'), code) == (
        True,
        "",
        True,
    )
    expression = CheckParams(name="c", kind="python", expression="math.comb(5, 2)", expected=10)
    assert check_answer(expression, "import math") == (True, "", True)


def test_the_home_directory_is_hidden():
    # Anything in our home but the way to the Python install, which the sandbox binds back.
    home = Path.home()
    prefixes = [Path(prefix) for prefix in sandbox._python_prefixes()]
    private = next((p for p in sorted(home.iterdir()) if not any(p in (x, *x.parents) for x in prefixes)), None)
    if private is None:
        pytest.skip(f"nothing in {home} to look for")
    code = f"import os\nprint(os.path.lexists({str(private)!r}))"
    assert check_answer(CheckParams(name="c", kind="python", expected=False), code) == (True, "", True)


# --- what it may not ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["tmp_path", "project", "beside its directory"])
def test_code_cannot_write_outside_its_directory(tmp_path, where):
    name = f"escaped-{secrets.token_hex(4)}.txt"
    target, seen_as = {
        "tmp_path": (tmp_path / name, tmp_path / name),
        "project": (paths.project_root() / name, paths.project_root() / name),
        "beside its directory": (Path("..") / name, Path(tempfile.gettempdir()) / name),
    }[where]
    verdict = check_answer(python_check(), f"open({str(target)!r}, 'w').write('out')\nprint('done')")
    assert not verdict.passed and not verdict.completed
    assert any(why in verdict.reason for why in ("Read-only file system", "Permission denied", "No such file"))
    assert not seen_as.exists()


def test_code_cannot_reach_a_server_on_the_hosts_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('done')"
        verdict = check_answer(python_check(), code)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever connected
            server.accept()
    assert not verdict.completed
    assert verdict.reason == "exited with code 1: ConnectionRefusedError: [Errno 111] Connection refused"


def test_a_fork_bomb_is_held_at_the_process_limit_then_stopped_and_leaves_no_process(mark):
    code = marking(mark) + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    verdict = check_watched(python_check(timeout_s=2, max_processes=16), code, mark)
    assert verdict == (False, "timed out after 2 s", False)
    assert processes_named(mark) == []
    assert subprocess.run(["true"]).returncode == 0  # the machine can still start processes


def test_a_fork_loop_that_gives_up_is_reported_at_the_process_limit(mark):
    code = marking(mark) + "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(100)\n"
    verdict = check_answer(python_check(max_processes=8), code)
    assert verdict.completed is False
    assert verdict.reason == "exceeded the process limit (8)"
    assert processes_named(mark) == []


def test_unbounded_allocation_is_stopped_at_the_memory_limit(tmp_path):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))\n    print(16 * len(chunks), flush=True)\n"
    assert check_answer(python_check(memory_mb=256), code) == (False, "exceeded the memory limit (256 MB)", False)
    # How far it got, in MB: up to the limit, not to the machine's memory.
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "answer.py").write_text(code)
    outcome = sandbox.run_python(["answer.py"], workdir, sandbox.Limits(timeout_s=10, memory_mb=256))
    assert 128 <= int(outcome.stdout.split()[-1]) <= 256


@pytest.mark.parametrize("forever", ["while True:\n    pass\n", "import time\ntime.sleep(1000)\n"])
def test_code_that_never_ends_is_stopped_at_the_timeout_and_leaves_no_process(mark, forever):
    verdict = check_watched(python_check(timeout_s=1), marking(mark) + forever, mark)
    assert verdict == (False, "timed out after 1 s", False)
    assert processes_named(mark) == []


def test_processes_the_code_leaves_behind_end_with_it(mark):
    code = marking(mark) + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\nprint('done')\n"
    assert check_answer(python_check(), code) == (True, "", True)
    assert processes_named(mark) == []


def test_output_without_end_is_stopped_at_the_file_size_limit():
    verdict = check_answer(python_check(), "while True:\n    print('x' * 1000)\n")
    assert verdict == (False, "exceeded the file-size limit (16 MB)", False)


# --- where there is no sandbox -------------------------------------------------------------------------------


@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "tunebook-no-such-bwrap")
    sandbox._sandbox_problem.cache_clear()
    yield
    monkeypatch.undo()
    sandbox._sandbox_problem.cache_clear()


def test_without_bubblewrap_a_python_check_is_one_clear_line(no_bwrap, monkeypatch):
    monkeypatch.delenv(UNSANDBOXED_CHECKS, raising=False)
    with pytest.raises(sandbox.SandboxError) as err:
        check_answer(python_check(), "print('done')")
    assert str(err.value) == (
        "python checks run in bubblewrap, which is not installed: apt-get install bubblewrap "
        "(or set TUNEBOOK_UNSANDBOXED_CHECKS=1 to run them under rlimits and a timeout only)"
    )
    assert check_answer(CheckParams(name="c", kind="contains", value="x"), "x") == (True, "", True)


def test_the_opt_out_runs_checks_without_bubblewrap_under_the_limits_and_the_timeout(no_bwrap, monkeypatch, tmp_path):
    monkeypatch.setenv(UNSANDBOXED_CHECKS, "1")
    outside = tmp_path / "outside.txt"
    # No sandbox: the code can write outside its directory, which is why it is an opt-out.
    assert check_answer(python_check(), f"open({str(outside)!r}, 'w').write('x')\nprint('done')") == (True, "", True)
    assert outside.exists()
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))\n"
    assert check_answer(python_check(memory_mb=128), hog) == (False, "exceeded the memory limit (128 MB)", False)
    assert check_answer(python_check(timeout_s=1), "import time\ntime.sleep(1000)\n") == (
        False,
        "timed out after 1 s",
        False,
    )
