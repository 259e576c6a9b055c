"""`tunebook compare`: two runs' params diff and their evaluations side by side, with paired CIs."""

import errno
import json
import os

import pandas as pd
from test_evaluate import QA, rows

from tunebook import evaluate, paths
from tunebook.cli import main
from tunebook.files import jsonl_text, write_atomic
from tunebook.params import EvaluateParams


def fake_run(run_id: str, lora_r: int, sft_answers: list[str]) -> None:
    """A run's manifest and evaluation outputs, made by the evaluate stage's own functions."""
    items = evaluate.test_items(rows(), EvaluateParams())
    frames = [
        evaluate._answers(items, "base", "closed_book", ["no idea"] * 6, [True] * 6),
        evaluate._answers(items, "sft", "closed_book", sft_answers, [True] * 6),
    ]
    examples = evaluate._score(pd.concat(frames, ignore_index=True), EvaluateParams(), None, [])
    summary, _ = evaluate.summarize(examples)
    deltas = evaluate.compare(examples, EvaluateParams(), seed=0)
    out = paths.run_dir(run_id) / "evaluate"
    metrics = {
        "models": json.loads(summary.set_index("system").to_json(orient="index")),
        "deltas": json.loads(deltas.to_json(orient="records")),
        "headline": ["f1", "rouge_l"],
    }
    write_atomic(out / "metrics.json", json.dumps(metrics))
    write_atomic(out / "predictions.jsonl", jsonl_text(examples.drop(columns=["check"]).to_dict("records")))
    manifest = {"run_id": run_id, "params": {"sft": {"lora_r": lora_r, "method": "lora"}, "seed": 0}}
    write_atomic(paths.reports_dir() / run_id / "run.json", json.dumps(manifest))


def test_compare_diffs_params_and_sets_the_runs_side_by_side_with_paired_cis(capsys):
    fake_run("a", 8, ["no idea"] * 6)
    fake_run("b", 16, [answer for _, answer in QA])
    assert main(["compare", "a", "b"]) == 0
    page = (paths.reports_dir() / "compare" / "a_vs_b.html").read_text()
    assert "sft.lora_r" in page and "sft.method" not in page  # only what differs
    assert "Each run minus a, paired by test item" in page and "[+" in page  # b's sft is better: a positive CI
    assert "Holm" not in page  # one comparison: nothing to correct
    assert '<img src="data:image/png;base64,' in page  # and the same deltas as a plot
    assert "a: each system vs its baseline" in page and "b: each system vs its baseline" in page
    assert "a_vs_b.html" in capsys.readouterr().out


def test_comparing_with_a_run_that_has_not_run_is_one_line(capsys):
    fake_run("a", 8, ["no idea"] * 6)
    assert main(["compare", "a", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run 'nope': no run.json" in err


def test_a_full_disk_is_one_line_and_leaves_no_page_behind(capsys, monkeypatch):
    fake_run("a", 8, ["no idea"] * 6)
    fake_run("b", 16, [answer for _, answer in QA])

    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    assert main(["compare", "a", "b"]) == 1
    page = paths.reports_dir() / "compare" / "a_vs_b.html"
    assert capsys.readouterr().err == f"tunebook: compare failed (ENOSPC: No space left on device, {page})\n"
    assert list(page.parent.iterdir()) == []


def test_compare_pairs_each_models_general_perplexity_by_text_when_both_runs_measured_it():
    from tunebook import compare

    fake_run("a", 8, ["no idea"] * 6)
    fake_run("b", 16, [answer for _, answer in QA])
    assert compare.general_deltas(["a", "b"], 1000, 0).empty  # neither measured it

    def general(run: str, sft_nll: float) -> None:
        rows = [
            {"model": model, "id": f"t{i}", "nll": (sft_nll if model == "sft" else 20.0) + i % 3, "tokens": 10}
            for model in ("base", "sft")
            for i in range(12)
        ]
        write_atomic(paths.run_dir(run) / "evaluate" / evaluate.GENERAL_FILE, jsonl_text(rows))

    general("a", 30.0)  # a forgot more: its sft's general text is less likely
    general("b", 22.0)
    found = compare.general_deltas(["a", "b"], 1000, 0).set_index("system")
    assert found.loc["base", "delta"] == 0 and round(found.loc["sft", "delta"], 2) == -0.8
    assert found.loc["sft", "ci_high"] < 0 and found.loc["sft", "significant"]
    assert main(["compare", "a", "b"]) == 0
    assert "general_log_ppl" in (paths.reports_dir() / "compare" / "a_vs_b.html").read_text()


def test_compare_takes_n_runs_each_against_the_first_with_holm_corrected_p_values(capsys):
    from tunebook import compare

    fake_run("a", 8, ["no idea"] * 6)
    fake_run("b", 16, [answer for _, answer in QA])
    fake_run("c", 32, [answer for _, answer in QA[:3]] + ["no idea"] * 3)
    assert main(["compare", "a", "b", "c"]) == 0
    page = (paths.reports_dir() / "compare" / "a_vs_b_vs_c.html").read_text()
    assert "Holm" in page and "p_holm" in page and "sft.lora_r" in page
    paired = compare.paired_deltas(["a", "b", "c"], 1000, 0)
    assert set(paired["model"]) == {"b", "c"} and (paired["p_holm"] >= paired["p_value"]).all()
    table = compare.params_diff({"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}, "c": {"x": 1}})
    assert table.to_dict("records") == [{"key": "y", "a": "2", "b": "3", "c": "-"}]
    assert main(["compare", "a"]) == 2 and "two or more different runs" in capsys.readouterr().err
