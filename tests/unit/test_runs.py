"""Runs side by side and runs that die: the run lock, the shared registry and response cache, a dead kernel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tunebook import paths, registry, runner
from tunebook.cli import main
from tunebook.llm import ResponseCache
from tunebook.params import load_params

CI = str(paths.project_root() / "params" / "ci.yaml")

HOLD_LOCK = """
import sys, time
from tunebook import runner
with runner.run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""

# Each writer waits for the go file, so they all write at once instead of one after the other as they start.
REGISTER = """
import sys, time
from pathlib import Path
from tunebook import registry
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
for i in range(30):
    registry.register(f"writer{sys.argv[1]}-{i}", "sft", {"adapter": f"adapter-{i}", "base_model": "tiny"})
"""

PUT = """
import sys, time
from pathlib import Path
from tunebook.llm import Reply, ResponseCache
from tunebook.llm.cache import request_key
cache = ResponseCache(Path(sys.argv[3]))
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
keys = [f"shared-{i}" for i in range(5)] + [f"{sys.argv[1]}-{i}" for i in range(5)]
for _ in range(20):
    for key in keys:
        cache.put(request_key("hf", "tiny", [{"role": "user", "content": key}], {}), Reply(sys.argv[1] * 50_000))
"""

# Two variants of a sweep asking for one tiny model at once: each says whether it trained it.
BUILD_TINY = """
import sys, time
from pathlib import Path
from tunebook import tiny
from tunebook.params import TinyParams
trained = tiny.pretrain
tiny.pretrain = lambda *args: print("trained", flush=True) or trained(*args)
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
texts = ["\\n".join(" ".join(f"word{(n * i + j) % 97}" for j in range(12)) for i in range(40)) for n in range(30)]
cfg = TinyParams(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, context_length=32,
                 steps=30, batch_size=4)
print(tiny.build_tiny(texts, Path(sys.argv[1]), cfg, progress=False), flush=True)
"""


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], **popen)


def write_notebook(path: Path, code: str) -> None:
    """A stage notebook as small as papermill takes: a parameters cell and one cell of work."""
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_id = 'demo'  # the run")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": runner.KERNEL, "display_name": "Python (tunebook)", "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture
def stage_notebooks(tmp_path, monkeypatch) -> Path:
    """Every stage runs a trivial notebook from this directory instead of the real one."""
    directory = tmp_path / "notebooks"
    directory.mkdir()
    for stage in paths.STAGES:
        write_notebook(directory / f"{stage}.ipynb", f"print('{stage} done')")
    monkeypatch.setattr(paths, "notebook_path", lambda stage: directory / f"{stage}.ipynb")
    monkeypatch.setattr(runner, "_resolve_tiny", lambda *args: None)  # no stub loads a model: no tiny to build
    return directory


def tunebook_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tunebook:")]


def test_run_refuses_while_another_holds_the_lock_and_a_killed_holder_releases_it(workdir, stage_notebooks, capsys):
    manifest = workdir / "reports" / "ci" / "run.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"run_id": "ci", "status": "completed", "stages": {}}))
    before = manifest.read_bytes()
    holder = python(HOLD_LOCK, "ci", stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", CI, "--stages", "ingest"]) == 1
        [line] = tunebook_lines(capsys.readouterr().err)
        assert f"run ci is already running (pid {holder.pid}, since " in line
        assert line.endswith("wait for it or stop it")
        assert manifest.read_bytes() == before
        assert not (workdir / "reports" / "ci" / "00_ingest.ipynb").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # as the OOM killer would: no cleanup of its own runs
        holder.wait()
        holder.stdout.close()
    with runner.run_lock("ci"):
        pass


def test_a_lock_left_by_a_dead_process_does_not_block(workdir):
    lock = runner.lock_path("ci")
    lock.parent.mkdir(parents=True)
    lock.write_text("pid 999999, since yesterday")
    with runner.run_lock("ci"):
        assert lock.read_text().startswith(f"pid {os.getpid()}, since ")


def test_lock_is_one_per_run_id(workdir):
    with runner.run_lock("ci"), runner.run_lock("demo"):
        with pytest.raises(runner.RunError, match="run ci is already running"):
            with runner.run_lock("ci"):
                pass


def test_concurrent_registrations_all_land(tmp_path):
    go = tmp_path / "go"
    writers = [python(REGISTER, str(n), str(go)) for n in range(2)]
    time.sleep(1)
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    models = json.loads(registry.registry_path().read_text())
    assert sorted(models) == sorted(f"writer{n}-{i}:sft" for n in range(2) for i in range(30))


def test_concurrent_cache_writers_leave_only_whole_responses(tmp_path):
    go, directory = tmp_path / "go", tmp_path / "responses"
    writers = [python(PUT, name, str(go), str(directory)) for name in ("a", "b")]
    time.sleep(1)
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert len(files) == 15 and all(p.suffix == ".json" and not p.name.startswith(".") for p in files)
    cache = ResponseCache(directory)
    for file in files:
        assert cache.get(json.loads(file.read_text())["key"]).text in ("a" * 50_000, "b" * 50_000)


def test_concurrent_builds_of_one_tiny_model_train_it_once(tmp_path):
    go, models = tmp_path / "go", tmp_path / "models"
    builders = [python(BUILD_TINY, str(models), str(go), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1)
    go.touch()
    outputs = [builder.communicate(timeout=300)[0].split() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0]
    assert sorted(len(output) for output in outputs) == [1, 2]  # one trained it, the other waited and reused it
    assert outputs[0][-1] == outputs[1][-1] and (Path(outputs[0][-1]) / "tiny.json").is_file()
    assert [path.name for path in models.iterdir() if not path.name.startswith(".")] == [Path(outputs[0][-1]).name]


def test_dead_kernel_fails_the_stage_at_its_cell_and_from_resumes(workdir, stage_notebooks, capsys):
    write_notebook(stage_notebooks / "ingest.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert main(["run", CI, "--stages", "ingest"]) == 1
    [line] = tunebook_lines(capsys.readouterr().err)
    # Cell 2 of the executed notebook: the parameters cell, then the cell papermill injects, then the killer.
    assert "stage ingest failed in cell 2: the kernel died" in line and line.endswith("resume with --from ingest)")
    manifest = runner.read_manifest("ci")
    assert manifest["status"] == "failed" and manifest["failed"] == {"stage": "ingest", "cell": 2}
    assert manifest["stages"]["ingest"]["status"] == "failed"
    assert manifest["stages"]["ingest"]["error"]["ename"] == "DeadKernelError"
    executed = nbformat.read(workdir / "reports" / "ci" / "00_ingest.ipynb", as_version=4)
    assert "os.kill" in executed.cells[2].source and executed.cells[2].metadata.papermill.status == "failed"
    assert "the kernel died" in (workdir / "reports" / "ci" / "00_ingest.html").read_text()

    write_notebook(stage_notebooks / "ingest.ipynb", "print('ingest done')")
    assert main(["run", CI, "--from", "ingest"]) == 0
    manifest = runner.read_manifest("ci")
    assert manifest["status"] == "completed" and manifest["failed"] is None
    assert {record["status"] for record in manifest["stages"].values()} == {"completed"}
    assert "error" not in manifest["stages"]["ingest"]


def test_any_error_in_a_stage_marks_the_run_failed(workdir, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_execute", interrupted)
    params = load_params(CI)
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(params, Path(CI), ["ingest"], progress=False)
    manifest = runner.read_manifest("ci")
    assert manifest["status"] == "failed" and manifest["failed"] == {"stage": "ingest", "cell": None}
    assert manifest["stages"]["ingest"]["status"] == "failed"
    assert manifest["stages"]["ingest"]["error"]["ename"] == "KeyboardInterrupt"
    with runner.run_lock("ci"):  # released on the way out
        pass


def test_stages_talk_to_their_kernel_over_private_sockets(workdir, stage_notebooks, capfd):
    write_notebook(
        stage_notebooks / "ingest.ipynb",
        "from ipykernel.kernelapp import IPKernelApp\nprint('transport', IPKernelApp.instance().transport)",
    )
    assert main(["run", CI, "--stages", "ingest"]) == 0
    executed = nbformat.read(workdir / "reports" / "ci" / "00_ingest.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "transport ipc\n"
    # ipykernel warns on every start over loopback TCP that the traffic is unencrypted
    assert "without encryption" not in capfd.readouterr().err


def test_the_manifest_and_the_index_record_the_overrides_of_a_run(workdir, stage_notebooks, capsys):
    prompt = "evaluate.rag_prompt=<b>{context}</b> {question}"
    assert (
        main(
            ["run", CI, "--stages", "ingest", "--set", "run.id=r8", "--set", "ingest.chunk_chars=500", "--set", prompt]
        )
        == 0
    )
    assert runner.read_manifest("r8")["overrides"] == ["run.id=r8", "ingest.chunk_chars=500", prompt]
    index = (workdir / "reports" / "index.html").read_text()
    assert "--set ingest.chunk_chars=500" in index and "--set run.id" not in index  # the id has its own column
    assert "&lt;b&gt;{context}&lt;/b&gt;" in index and "<b>{context}" not in index  # text, escaped
    capsys.readouterr()
    assert main(["runs"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["run", "status", "stage", "started", "sweep", "metrics"]
    assert row.startswith("r8   completed  ingest  ") and row.endswith("  -")  # left-aligned, no metrics yet
