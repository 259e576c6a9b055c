"""A stage's cache key covers the code it runs, not the whole package: an edit to plots.py reuses sft, an edit to
sft.py re-runs sft and what follows, and an evaluate param does not re-run DPO. No notebook is executed: the
manifest is the one a run of every stage leaves, written by hand."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_tiny import CFG, stdlib_docs
from test_tiny_resolution import NO_TINY, write_chunks

from tunebook import paths, runner, tiny
from tunebook.params import load_params

CI = str(paths.project_root() / "params" / "ci.yaml")


@pytest.fixture
def library(tmp_path, monkeypatch) -> Path:
    """A copy of the installed package, which the runner keys stages on: edits to it touch no other test."""
    copy = tmp_path / "lib" / "tunebook"
    shutil.copytree(runner.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "PACKAGE", copy)
    return copy


def completed_run(params) -> None:
    """The manifest a run of every stage leaves, each stage with one output file."""
    stages = {}
    for stage in paths.STAGES:
        (paths.stage_dir(params.run.id, stage) / "out.txt").write_text(stage)
        stages[stage] = {
            "status": "completed",
            "cache_key": runner.cache_key(params, stage, stages),
            "outputs_hash": runner.outputs_hash(params.run.id, stage),
        }
    runner._save({"run_id": params.run.id, "stages": stages})


def reused(params) -> dict[str, bool]:
    return {plan.stage: plan.cached for plan in runner.plan_stages(params, list(paths.STAGES))}


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_each_stage_runs_its_own_module_and_no_report_drawing():
    for stage in paths.STAGES:
        modules = runner.stage_modules(stage, runner.PACKAGE)
        assert {"tunebook", f"tunebook.{stage}", "tunebook.params"} <= set(modules), stage
        assert not runner.PRESENTATION & set(modules), f"{stage} runs {runner.PRESENTATION & set(modules)}"
    assert {"tunebook.sft", "tunebook.models"} <= set(runner.stage_modules("sft", runner.PACKAGE))
    # the run builds tiny before the stages, which are given its directory: none runs the builder
    assert not any("tunebook.tiny" in runner.stage_modules(stage, runner.PACKAGE) for stage in paths.STAGES)
    # inference never reaches the trainers, so retraining code does not re-export
    assert not {"tunebook.sft", "tunebook.dpo", "tunebook.reward"} & set(runner.stage_modules("export", runner.PACKAGE))
    # nor the judge, the human sheet or the campaign, which export never runs: a judge edit re-exports nothing
    assert not {"tunebook.judge", "tunebook.human", "tunebook.generate"} & set(
        runner.stage_modules("export", runner.PACKAGE)
    )


def test_the_closure_holds_every_tunebook_module_the_notebooks_imports_load():
    """What sft's notebook's import lines really load, less the report drawing, is in its static closure."""
    cells = nbformat.read(paths.notebook_path("sft"), as_version=4).cells
    lines = [line for cell in cells if cell.cell_type == "code" for line in cell.source.splitlines()]
    imports = [line for line in lines if line.startswith(("from tunebook", "import tunebook"))]
    probe = "\n".join([*imports, "import sys", "print(*(m for m in sys.modules if m.split('.')[0] == 'tunebook'))"])
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert "tunebook.sft" in loaded and "tunebook.plots" in loaded
    assert set(loaded) - runner.PRESENTATION <= set(runner.stage_modules("sft", runner.PACKAGE))


def test_lazy_and_relative_imports_inside_packages_count(library):
    (library / "probe").mkdir()
    (library / "probe" / "__init__.py").write_text('"""A package."""\n')
    (library / "probe" / "pool.py").write_text("def chat():\n    from .. import stats\n    from .limits import rate\n")
    (library / "probe" / "limits.py").write_text("rate = 1\n")
    (library / "probe" / "unused.py").write_text("")
    append(library / "sft.py", "\n\ndef _probe():\n    import tunebook.probe.pool\n")
    modules = set(runner.stage_modules("sft", library))
    assert {"tunebook.probe", "tunebook.probe.pool", "tunebook.probe.limits", "tunebook.stats"} <= modules
    assert "tunebook.probe.unused" not in modules


def test_an_edit_to_plots_reuses_every_stage_and_an_edit_to_sft_reruns_sft_and_what_follows(library):
    params = load_params(CI)
    completed_run(params)
    assert all(reused(params).values())
    append(library / "plots.py", "\n# a docstring fixed\n")
    append(library / "reports.py", "\n# a summary box restyled\n")
    assert all(reused(params).values())
    append(library / "sft.py", "\n# a training change\n")
    assert reused(params) == {
        "ingest": True,
        "generate": True,
        "sft": False,
        "evaluate": False,
        "dpo": False,
        "rl": False,
        "export": False,
    }


def test_an_evaluate_param_reruns_evaluate_only():
    """DPO and RL train on train prompts and read nothing evaluate writes."""
    completed_run(load_params(CI))
    assert reused(load_params(CI, ["evaluate.judge.fail_below=3"])) == {
        "ingest": True,
        "generate": True,
        "sft": True,
        "evaluate": False,
        "dpo": True,
        "rl": True,
        "export": True,
    }


def test_a_tiny_param_reruns_the_stages_that_name_tiny_and_what_follows():
    """They are given one directory whichever build it links, so the build's key is among their inputs."""
    write_chunks("ci", stdlib_docs())
    params = load_params(CI)
    completed_run(params)
    assert runner.input_hashes(params, "sft", {})["tiny"] == tiny.build_key(stdlib_docs(), params.tiny)
    assert all(reused(params).values())
    rebuilt = reused(load_params(CI, ["tiny.steps=151"]))
    assert rebuilt == {
        "ingest": True,
        "generate": False,
        "sft": False,
        "evaluate": False,
        "dpo": False,
        "rl": False,
        "export": False,
    }
    extractive = ["generate.teachers=[{name: extractive, backend: extractive}]"]
    completed_run(load_params(CI, extractive))
    assert reused(load_params(CI, [*extractive, "tiny.steps=151"]))["generate"]  # its teachers do not name tiny


def test_without_tiny_the_tiny_params_rerun_nothing():
    write_chunks("ci", stdlib_docs())
    completed_run(load_params(CI, NO_TINY))
    overrides = [f"tiny.{key}={value}" for key, value in CFG.model_dump().items()]
    assert all(reused(load_params(CI, [*NO_TINY, *overrides])).values())


def test_dpo_starts_without_an_evaluation_but_not_without_sft():
    done = {stage: {"status": "completed"} for stage in ("ingest", "generate", "sft")}
    runner._missing_upstream("ci", ["dpo", "rl", "export"], {"stages": done})
    with pytest.raises(runner.RunError, match="stage dpo needs sft"):
        runner._missing_upstream("ci", ["dpo"], {"stages": {**done, "sft": {"status": "failed"}}})
