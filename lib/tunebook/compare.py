"""`tunebook compare RUN_A RUN_B`: one HTML page with what differs between two runs' params, and their
evaluations side by side, with paired-bootstrap CIs for run B minus run A wherever both runs answered the
same test items, and on general text (what each model forgot) wherever both measured it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tunebook import evaluate, paths, plots, reports, stats
from tunebook.files import read_complete_lines, write_atomic
from tunebook.params import ParamsError

SCORES = [*evaluate.SCORES, "bleu", "general_perplexity"]


def compare_runs(run_a: str, run_b: str, resamples: int = 1000, seed: int = 0) -> Path:
    """reports/compare/RUN_A_vs_RUN_B.html; a run without a manifest or an evaluation is a one-line error."""
    manifests = {run: _read(paths.reports_dir() / run / "run.json", run) for run in (run_a, run_b)}
    evaluations = {run: _read(paths.run_dir(run) / "evaluate" / "metrics.json", run) for run in (run_a, run_b)}
    page = {
        "run_a": run_a,
        "run_b": run_b,
        "params": params_diff(manifests[run_a]["params"], manifests[run_b]["params"]),
        "scores": side_by_side(evaluations[run_a], evaluations[run_b], run_a, run_b),
        "deltas": {run: _deltas(evaluations[run]) for run in (run_a, run_b)},
    }
    paired = paired_deltas(run_a, run_b, resamples, seed)
    page["paired"] = _paired_table(paired, run_a, run_b)
    title = f"{run_b} minus {run_a}, paired by test item, with 95% CIs"
    plot = plots.data_uri(plots.deltas(paired, title, "B minus A (points)")) if len(paired) else None
    tables = {k: _html(v) for k, v in page.items() if isinstance(v, pd.DataFrame)}
    html = reports.templates().get_template("compare.html.j2").render(**page, tables=tables, plot=plot)
    out = paths.reports_dir() / "compare" / f"{run_a}_vs_{run_b}.html"
    write_atomic(out, html)
    return out


def _read(path: Path, run: str) -> dict:
    if not path.is_file():
        raise ParamsError(f"run {run!r}: no {path.name} at {path} (has it run, and its evaluate stage?)")
    return json.loads(path.read_text(encoding="utf-8"))


def params_diff(a: dict, b: dict) -> pd.DataFrame:
    """The params keys (dotted) whose values differ between two runs."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    keys = sorted(set(flat_a) | set(flat_b))
    differ = [k for k in keys if flat_a.get(k) != flat_b.get(k)]
    rows = [{"key": k, "A": flat_a.get(k, "-"), "B": flat_b.get(k, "-")} for k in differ]
    return pd.DataFrame(rows, columns=["key", "A", "B"])


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def side_by_side(a: dict, b: dict, run_a: str, run_b: str) -> pd.DataFrame:
    """Each system's mean scores in both runs (points)."""
    frames = []
    for run, result in ((run_a, a), (run_b, b)):
        table = pd.DataFrame(result["models"]).T.reindex(columns=SCORES)
        frames.append(table.add_prefix(f"{run} "))
    return pd.concat(frames, axis=1).rename_axis("system").reset_index()


def _deltas(result: dict) -> pd.DataFrame:
    table = pd.DataFrame(result.get("deltas", []))
    if table.empty:
        return table
    table["delta [95% CI]"] = table.apply(stats.format_ci, axis=1)
    return table[["system", "baseline", "metric", "delta [95% CI]", "significant"]]


def paired_deltas(run_a: str, run_b: str, resamples: int, seed: int) -> pd.DataFrame:
    """Run B minus run A per system and score, paired by test item (empty when no item is shared)."""
    frames = []
    for run in (run_a, run_b):
        rows = read_complete_lines(paths.run_dir(run) / "evaluate" / "predictions.jsonl")
        frames.append(pd.DataFrame(rows).assign(model=run))
    both = pd.concat(frames, ignore_index=True)
    shared = set(frames[0]["id"]) & set(frames[1]["id"])
    if not shared:
        return pd.DataFrame()
    both = both[both["id"].isin(shared) & both["system"].isin(set(frames[0]["system"]) & set(frames[1]["system"]))]
    scores = stats.compare(both, run_a, list(evaluate.SCORES), by=["system"], resamples=resamples, seed=seed, scale=100)
    return pd.concat([scores, general_deltas(run_a, run_b, resamples, seed)], ignore_index=True)


def general_deltas(run_a: str, run_b: str, resamples: int, seed: int) -> pd.DataFrame:
    """Run B minus run A per model on general text: the mean log-perplexity per text (nats per token; above 0, B
    forgot more), paired by text; empty unless both runs measured it."""
    files = [paths.run_dir(run) / "evaluate" / evaluate.GENERAL_FILE for run in (run_a, run_b)]
    if not all(path.is_file() for path in files):
        return pd.DataFrame()
    frames = [
        pd.DataFrame(read_complete_lines(path)).assign(run=run) for path, run in zip(files, (run_a, run_b), strict=True)
    ]
    both = pd.concat(frames, ignore_index=True)
    both = both.assign(general_log_ppl=both["nll"] / both["tokens"].clip(lower=1), system=both["model"])
    shared = set(frames[0]["model"]) & set(frames[1]["model"])
    both = both[both["system"].isin(shared)].drop(columns=["model"]).rename(columns={"run": "model"})
    return stats.compare(both, run_a, ["general_log_ppl"], by=["system"], resamples=resamples, seed=seed)


def _paired_table(paired: pd.DataFrame, run_a: str, run_b: str) -> pd.DataFrame:
    if paired.empty:
        return paired
    table = paired.assign(**{"B - A [95% CI]": paired.apply(stats.format_ci, axis=1)})
    return table[["system", "metric", "mean_baseline", "mean_model", "B - A [95% CI]", "significant", "n"]].rename(
        columns={"mean_baseline": run_a, "mean_model": run_b}
    )


def _html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-", border=0) if len(table) else ""
