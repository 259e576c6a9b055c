import json
import time

import nbformat
from tqdm import tqdm

from tunebook import reports


def test_progress_bars_collapse_to_their_last_state():
    bars = "load:   0%|   | 0/3\rload:  67%|## | 2/3\rload: 100%|###| 3/3\nnext line\r\n"
    assert reports.collapse_carriage_returns(bars) == "load: 100%|###| 3/3\nnext line\n"


def test_progress_bars_leave_stderr_and_warnings_stay():
    bar = (
        "Map:  50%|#####     | 1/2 [00:00<00:00, 9.1 examples/s]\r"
        "Map: 100%|##########| 2/2 [00:00<00:00, 9.3 examples/s]\n"
        "Generating train split: 455 examples [00:00, 3023.49 examples/s]\n"
        "evaluating: 10%|#   | 1/10 [00:01<00:09, 1.0it/s]\r                                   \r\n"  # leave=False
    )
    outputs = [nbformat.v4.new_output("stream", name="stderr", text=bar + "UserWarning: something to read\n")]
    moved = reports.progress_apart(outputs)
    assert [(o["name"], o["text"]) for o in moved] == [
        (
            "stdout",
            "Map: 100%|##########| 2/2 [00:00<00:00, 9.3 examples/s]\n"
            "Generating train split: 455 examples [00:00, 3023.49 examples/s]\n",
        ),
        ("stderr", "UserWarning: something to read\n"),
    ]
    # a bar printed on stdout stays where it is; a stderr with no bar is untouched
    untouched = [nbformat.v4.new_output("stream", name="stdout", text="12it [00:01, 3.2it/s]\n")]
    assert reports.progress_apart(untouched) == untouched


def test_render_html_hides_code_unless_asked(tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Title"),
            nbformat.v4.new_code_cell(
                "secret_sauce = 1",
                outputs=[
                    nbformat.v4.new_output("stream", name="stderr", text="a 0%\ra 50%\ra 100%\n"),
                    # a bar redrawn from a worker thread: one output per redraw
                    *(nbformat.v4.new_output("stream", name="stderr", text=f"\rb {i}0%") for i in range(1, 10)),
                ],
            ),
        ]
    )
    path = tmp_path / "00_ingest.ipynb"
    nbformat.write(notebook, path)
    html = reports.render_html(path).read_text()
    assert "Title" in html and "secret_sauce" not in html
    assert "a 100%" in html and "a 50%" not in html
    assert "b 90%" in html and "b 80%" not in html
    assert "secret_sauce" in reports.render_html(path, show_code=True).read_text()


def test_index_and_runs_table_from_manifests(workdir):
    for run_id, status, failed in [("good", "completed", None), ("bad", "failed", {"stage": "sft", "cell": 7})]:
        manifest = {
            "run_id": run_id,
            "name": run_id,
            "params_file": "params/x.yaml",
            "status": status,
            "failed": failed,
            "started": f"2026-01-0{1 if run_id == 'good' else 2}T10:00:00+00:00",
            "stages": {"ingest": {"status": "completed"}, "generate": {"status": "completed"}},
            "headline": {"sft": {"f1": 12.345, "rouge_l": 30.0}} if status == "completed" else {},
        }
        (workdir / "reports" / run_id).mkdir(parents=True)
        (workdir / "reports" / run_id / "run.json").write_text(json.dumps(manifest))
    table = reports.runs_table()
    assert table["run"].tolist() == ["bad", "good"]  # newest first
    assert table.iloc[0]["status"] == "failed (sft, cell 7)"
    assert table.iloc[1]["metrics"] == "sft f1=12.3 rouge_l=30.0"
    assert table.iloc[1]["stage"] == "generate"
    html = reports.write_index().read_text()
    assert 'href="good/00_ingest.html"' in html and "failed: sft, cell 7" in html and "12.3" in html


def test_runs_table_shows_the_progress_of_a_running_stage(workdir):
    manifest = {"run_id": "live", "status": "running", "stages": {"generate": {"status": "running"}}}
    (workdir / "reports" / "live").mkdir(parents=True)
    (workdir / "reports" / "live" / "run.json").write_text(json.dumps(manifest))
    assert reports.runs_table().iloc[0]["stage"] == "generate"  # no progress reported yet
    stage_dir = workdir / "data" / "runs" / "live" / "generate"
    stage_dir.mkdir(parents=True)
    (stage_dir / "progress.json").write_text(json.dumps({"done": 15, "total": 16, "rate_per_s": 0.5, "eta_s": 42}))
    assert reports.runs_table().iloc[0]["stage"] == "generate 15/16, ETA 0:00:42"


def test_the_terminal_mirrors_a_running_stage_progress(tmp_path, capsys):
    from tunebook.runner import _stage_progress

    (tmp_path / "progress.json").write_text(json.dumps({"done": 1, "total": 9}))  # left by a crashed run
    # papermill's bar of cells is open meanwhile, as in a run
    with _stage_progress(tmp_path, "generate", show=True), tqdm(total=5, desc="cells"):
        (tmp_path / "progress.json").write_text(json.dumps({"done": 3, "total": 4, "eta_s": 2}))
        time.sleep(1.2)
    err = capsys.readouterr().err
    assert "generate progress" in err and "3/4" in err and "1/9" not in err
    assert "\x1b[A" not in err  # no cursor moves when stderr is a log, not a terminal


def test_headline_metrics_add_the_dpo_model_from_its_re_evaluation(workdir):
    import json

    from tunebook import paths
    from tunebook.files import write_atomic
    from tunebook.reports import headline_metrics

    def metrics(stage: str, systems: dict) -> None:
        record = {"models": systems, "headline": ["f1"]}
        write_atomic(paths.run_dir("r") / stage / "metrics.json", json.dumps(record))

    metrics("evaluate", {"base": {"f1": 1.0, "bleu": 0}, "sft": {"f1": 5.0, "bleu": 0}})
    assert headline_metrics("r") == {"base": {"f1": 1.0}, "sft": {"f1": 5.0}}
    metrics("dpo/evaluation", {"base": {"f1": 1.5}, "sft": {"f1": 5.5}, "dpo": {"f1": 7.0}})
    assert headline_metrics("r") == {"base": {"f1": 1.0}, "sft": {"f1": 5.0}, "dpo": {"f1": 7.0}}


def test_the_summary_box_opens_the_report_and_links_relative_to_it(workdir, tmp_path):
    from tunebook import paths

    box = reports.summary(
        "sft",
        "r1",
        {"eval loss": "1.234", "registered as": "r1:sft"},
        ["resumed from checkpoint-20"],
        inputs={"train split": paths.stage_dir("r1", "generate") / "train.jsonl"},
        outputs={"model": paths.stage_dir("r1", "sft") / "adapter"},
    )
    assert "eval loss" in box.data and "1.234" in box.data and "resumed from checkpoint-20" in box.data
    assert 'href="../../data/runs/r1/generate/train.jsonl"' in box.data  # from reports/r1/02_sft.html
    cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output("stream", name="stdout", text="BODY-7f3a\n")]),
        nbformat.v4.new_code_cell(
            "box",
            metadata={"tags": ["summary"]},
            outputs=[nbformat.v4.new_output("display_data", data={"text/html": box.data})],
        ),
    ]
    path = tmp_path / "02_sft.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    html = reports.render_html(path).read_text()
    assert html.index("<h1") < html.index("tunebook-summary") < html.index("BODY-7f3a")


def test_the_index_plots_each_runs_domain_gain_against_its_general_loss(workdir):
    import json

    from tunebook import paths, reports
    from tunebook.files import write_atomic

    def metrics(run: str, stage: str, systems: dict) -> None:
        write_atomic(paths.run_dir(run) / stage / "metrics.json", json.dumps({"models": systems, "headline": ["f1"]}))

    base = {"f1": 10.0, "general_perplexity": 100.0}
    metrics("a", "evaluate", {"base": base, "base+rag": base, "sft": {"f1": 30.0, "general_perplexity": 150.0}})
    metrics("b", "evaluate", {"base": base, "sft": {"f1": 25.0, "general_perplexity": 120.0}})
    metrics("b", "rl/evaluation", {"base": base, "rl": {"f1": 28.0, "general_perplexity": 110.0}})
    metrics("c", "evaluate", {"base": {"f1": 10.0}, "sft": {"f1": 20.0}})  # evaluated before general perplexity
    assert reports.tradeoff("a") == {
        "run": "a",
        "model": "sft",
        "domain gain (F1 points)": 20.0,
        "general loss (perplexity %)": 50.0,
    }
    assert reports.tradeoff("b")["model"] == "rl" and round(reports.tradeoff("b")["general loss (perplexity %)"]) == 10
    assert reports.tradeoff("c") is None
    assert reports.tradeoff_plot([{"run_id": r} for r in "abc"]).startswith("data:image/png;base64,")
    assert reports.tradeoff_plot([{"run_id": "c"}]) is None
