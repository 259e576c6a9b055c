"""The whole chain through the real CLI: papermill, notebooks, cache, manifest, index, failure and resume."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tunebook import paths, reports, runner
from tunebook.cli import main

CI = str(paths.project_root() / "params" / "ci.yaml")


# All tests here share one workdir: they read the run the first one makes.
pytestmark = pytest.mark.shared_workdir


@pytest.fixture(scope="module")
def first_run(shared_workdir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOOK_WORKDIR", str(shared_workdir))
        code = main(["run", CI])
    return code, json.loads((shared_workdir / "reports" / "ci" / "run.json").read_text())


def test_run_completes_with_reports_and_manifest(first_run, workdir):
    code, manifest = first_run
    assert code == 0
    assert manifest["status"] == "completed" and manifest["failed"] is None
    report_dir = workdir / "reports" / "ci"
    for stage, notebook in paths.NOTEBOOKS.items():
        assert manifest["stages"][stage]["status"] == "completed"
        assert manifest["stages"][stage]["outputs_hash"]
        html = (report_dir / f"{notebook}.html").read_text()
        assert "<html" in html and "hl-ipython3" not in html  # code hidden by default (no highlighted source)
        # small enough to mail: nbconvert's own styles are 0.3 MB; plots are thumbnails, tables are heads
        assert len(html) < 1_000_000, f"{notebook}.html is {len(html) / 1e6:.1f} MB"
        # finished progress bars are not painted like errors
        assert "100%|" not in "".join(
            re.findall(r'data-mime-type="application/vnd.jupyter.stderr".*?</pre>', html, re.S)
        )
        executed = json.loads((report_dir / f"{notebook}.ipynb").read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert manifest["packages"]["transformers"] and manifest["python"]
    assert set(manifest["git"]) == {"sha", "dirty"}
    assert manifest["params"]["run"]["id"] == "ci"


def test_sft_beats_base_on_f1_and_rouge(first_run, workdir):
    headline = first_run[1]["headline"]
    assert headline["sft"]["f1"] > headline["base"]["f1"]
    assert headline["sft"]["rouge_l"] > headline["base"]["rouge_l"]


def test_index_links_every_stage_report(first_run, workdir):
    index = (workdir / "reports" / "index.html").read_text()
    for notebook in paths.NOTEBOOKS.values():
        assert f'href="ci/{notebook}.html"' in index
    assert "completed" in index


def test_second_run_reuses_every_stage(first_run, workdir, capsys):
    assert main(["plan", CI]) == 0
    out = capsys.readouterr().out
    cached = ["ingest", "generate", "sft", "evaluate", "dpo", "rl", "export"]
    assert ", ".join(f"{stage} [cached]" for stage in cached) in out
    assert main(["run", CI]) == 0
    manifest = json.loads((workdir / "reports" / "ci" / "run.json").read_text())
    assert {s["status"] for s in manifest["stages"].values()} == {"cached"}


def test_changed_param_reruns_that_stage_and_downstream_only(first_run, capsys):
    assert main(["plan", CI, "--set", "evaluate.changed_most=3"]) == 0  # DPO and RL read nothing of evaluate's
    assert "sft [cached], evaluate [run], dpo [cached], rl [cached], export [cached]" in capsys.readouterr().out
    assert main(["plan", CI, "--set", "generate.extractive_answer_chars=250"]) == 0
    assert (
        "ingest [cached], generate [run], sft [run], evaluate [run], dpo [run], rl [run], export [run]"
        in capsys.readouterr().out
    )


def test_failure_names_stage_and_cell_then_from_resumes(first_run, workdir, capsys):
    assert main(["run", CI, "--stages", "export", "--set", "export.model=nope"]) == 1
    err = capsys.readouterr().err
    assert "stage export failed in cell" in err and "--from export" in err
    manifest = json.loads((workdir / "reports" / "ci" / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed"]["stage"] == "export"
    assert isinstance(manifest["failed"]["cell"], int)
    assert "failed" in reports.runs_table().iloc[0]["status"]
    assert main(["run", CI, "--from", "export"]) == 0
    manifest = json.loads((workdir / "reports" / "ci" / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["stages"]["export"]["status"] == "completed"
    assert "error" not in manifest["stages"]["export"]


def test_runs_lists_the_run(first_run, capsys):
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "ci" in out and "completed" in out and "sft f1=" in out


def test_show_code_keeps_inputs(first_run, workdir):
    report = workdir / "reports" / "ci" / "01_generate.html"
    assert main(["run", CI, "--stages", "generate", "--force", "--show-code"]) == 0
    assert "plan_jobs" in report.read_text() and "hl-ipython3" in report.read_text()
    # a reused stage's report follows the flag too
    assert main(["run", CI, "--stages", "generate"]) == 0
    assert "plan_jobs" not in report.read_text()
    assert main(["run", CI, "--stages", "generate", "--show-code"]) == 0
    assert "plan_jobs" in report.read_text()


def test_the_same_params_and_seed_give_the_same_dataset_and_metrics(first_run, tmp_path_factory, monkeypatch):
    """A second ci.yaml run from scratch, in a workdir of its own: the same data, the same scores."""
    first, again = paths.workdir(), tmp_path_factory.mktemp("pipeline-again")
    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(again))
    assert main(["run", CI, "--stages", "ingest,generate,sft,evaluate"]) == 0
    runs = [workdir / "data" / "runs" / "ci" for workdir in (first, again)]
    cards = [json.loads((run / "generate" / "card.json").read_text()) for run in runs]
    assert cards[0]["dataset_hash"] == cards[1]["dataset_hash"] and cards[0]["split_hashes"] == cards[1]["split_hashes"]
    scores = [json.loads((run / "evaluate" / "metrics.json").read_text()) for run in runs]
    for key in ("headline", "deltas", "judge"):
        assert scores[0][key] == scores[1][key], key


def test_another_run_with_the_same_ingest_and_generate_params_shares_their_outputs(first_run, workdir, capsys):
    """The work of a sweep's variants that differ only after generate is done once: their cache keys leave the
    run's name out, so another run copies a completed run's ingest and generate instead of redoing them."""
    assert main(["plan", CI, "--set", "run.id=ci-other"]) == 0
    out = capsys.readouterr().out
    assert "ingest [shared from ci], generate [shared from ci], sft [run]" in out
    assert main(["run", CI, "--set", "run.id=ci-other", "--stages", "ingest,generate"]) == 0
    manifest = json.loads((workdir / "reports" / "ci-other" / "run.json").read_text())
    original = json.loads((workdir / "reports" / "ci" / "run.json").read_text())
    for stage in ("ingest", "generate"):
        record = manifest["stages"][stage]
        assert record["status"] == "shared" and record["shared_from"] == "ci"
        assert (
            record["outputs_hash"]
            == original["stages"][stage]["outputs_hash"]
            == runner.outputs_hash("ci-other", stage)
        )
        assert (workdir / "reports" / "ci-other" / f"{paths.NOTEBOOKS[stage]}.html").is_file()
    assert "[ingest] the same work as run ci's" in capsys.readouterr().err
    # Shared once, the stages are this run's own: reused next time, and what follows runs here.
    assert main(["plan", CI, "--set", "run.id=ci-other"]) == 0
    assert "ingest [cached], generate [cached], sft [run]" in capsys.readouterr().out
    # A changed generate param shares ingest only.
    assert main(["plan", CI, "--set", "run.id=ci-third", "--set", "generate.extractive_answer_chars=250"]) == 0
    assert re.search(r"ingest \[shared from ci(-other)?\], generate \[run\]", capsys.readouterr().out)


def test_plain_papermill_runs_a_stage_notebook(first_run, workdir, tmp_path):
    """The README's `papermill notebooks/03_evaluate.ipynb /tmp/eval.ipynb -p max_examples 20`, on this workdir's
    run (the defaults name run `demo`), whose test split has 10 items. Last in this module: it rewrites the run's
    evaluation."""
    papermill = Path(sys.executable).parent / "papermill"
    command = [
        papermill,
        "notebooks/03_evaluate.ipynb",
        tmp_path / "eval.ipynb",
        "-p",
        "run_id",
        "ci",
        "-p",
        "max_examples",
        "5",
    ]
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(workdir)}
    done = subprocess.run(command, cwd=paths.project_root(), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    executed = nbformat.read(tmp_path / "eval.ipynb", as_version=4)
    assert "items: 5 systems: ['base', 'base+rag', 'sft', 'sft+rag']" in executed.cells[-2].outputs[0]["text"]
    assert json.loads((workdir / "data" / "runs" / "ci" / "evaluate" / "metrics.json").read_text())["models"]
