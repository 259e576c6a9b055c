"""The notebooks' shape: one parameters cell whose defaults are what a run of the demo injects (`tiny` as the
run's model directory), no outputs, no long cells."""

import json

import papermill
import pytest

from tunebook import paths, runner, tiny
from tunebook.params import SHARED_SECTIONS, load_params, section

DEMO = load_params(paths.project_root() / "params" / "demo.yaml")
STAGED = tiny.staged(DEMO)


@pytest.mark.parametrize("stage", paths.STAGES)
def test_parameters_cell_defaults_are_the_demo(stage):
    notebook = paths.notebook_path(stage)
    inferred = papermill.inspect_notebook(str(notebook))
    expected = runner.stage_parameters(DEMO, stage)
    assert list(inferred) == list(expected)
    defaults = {name: eval(inferred[name]["default"]) for name in inferred}  # noqa: S307 - our own literals
    assert (defaults["run_id"], defaults["seed"]) == (DEMO.run.id, DEMO.seed)
    # Defaults may leave nested settings out (`prompts = {}`): what counts is what they validate to.
    for name in [stage, *SHARED_SECTIONS.get(stage, ())]:
        assert section(name, defaults) == getattr(STAGED, name), name
    for name in inferred:
        assert inferred[name]["help"], f"{name} has no comment"


@pytest.mark.parametrize("stage", paths.STAGES)
def test_committed_clean_and_thin(stage):
    cells = json.loads(paths.notebook_path(stage).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert [c for c in code if "parameters" in c["metadata"].get("tags", [])] == [code[0]]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert all(len("".join(c["source"]).splitlines()) < 60 for c in code)
    assert cells[0]["cell_type"] == "markdown" and "NBVAL_CHECK_OUTPUT" in "".join(
        code[-1]["source"] + code[-2]["source"]
    )
    sources = "".join("".join(c["source"]) for c in code)
    assert "sys.path" not in sources
