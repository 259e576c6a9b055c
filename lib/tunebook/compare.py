"""`tunebook compare RUN_A RUN_B [RUN ...]`: one HTML page with what differs between the runs' params, and their
evaluations side by side, with paired-bootstrap CIs for every other run minus the first wherever both answered the
same test items, and on general text (what each model forgot) wherever both measured it. With more than one
comparison, each p-value is also given Holm-corrected across all of them (statsmodels), and the page says so."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from statsmodels.stats.multitest import multipletests

from tunebook import evaluate, paths, plots, reports, stats
from tunebook.files import read_complete_lines, write_atomic
from tunebook.params import ParamsError

SCORES = [*evaluate.SCORES, "bleu", "general_perplexity"]


def compare_runs(runs: list[str], resamples: int = 1000, seed: int = 0) -> Path:
    """reports/compare/RUN_vs_RUN[_vs_RUN...].html, the first run the baseline of every paired comparison; a run
    without a manifest or an evaluation is a one-line error."""
    if len(runs) < 2 or len(set(runs)) != len(runs):
        raise ParamsError(f"compare takes two or more different runs, got {' '.join(runs)}")
    manifests = {run: _read(paths.reports_dir() / run / "run.json", run) for run in runs}
    evaluations = {run: _read(paths.run_dir(run) / "evaluate" / "metrics.json", run) for run in runs}
    page = {
        "runs": runs,
        "params": params_diff({run: manifest["params"] for run, manifest in manifests.items()}),
        "scores": side_by_side(evaluations),
        "deltas": {run: _deltas(evaluations[run]) for run in runs},
    }
    paired = paired_deltas(runs, resamples, seed)
    page["paired"] = _paired_table(paired)
    title = f"Each run minus {runs[0]}, paired by test item, with 95% CIs"
    plot = plots.data_uri(plots.deltas(paired, title, f"run minus {runs[0]} (points)")) if len(paired) else None
    tables = {k: _html(v) for k, v in page.items() if isinstance(v, pd.DataFrame)}
    html = reports.templates().get_template("compare.html.j2").render(**page, tables=tables, plot=plot)
    out = paths.reports_dir() / "compare" / f"{'_vs_'.join(runs)}.html"
    write_atomic(out, html)
    return out


def _read(path: Path, run: str) -> dict:
    if not path.is_file():
        raise ParamsError(f"run {run!r}: no {path.name} at {path} (has it run, and its evaluate stage?)")
    return json.loads(path.read_text(encoding="utf-8"))


def params_diff(params: dict[str, dict]) -> pd.DataFrame:
    """The params keys (dotted) whose values differ between runs: a column per run."""
    flat = {run: _flatten(tree) for run, tree in params.items()}
    keys = sorted(set().union(*flat.values()))
    rows = [
        {"key": key, **{run: values.get(key, "-") for run, values in flat.items()}}
        for key in keys
        if len({values.get(key) for values in flat.values()}) > 1
    ]
    return pd.DataFrame(rows, columns=["key", *params])


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def side_by_side(evaluations: dict[str, dict]) -> pd.DataFrame:
    """Each system's mean scores in every run (points)."""
    frames = [
        pd.DataFrame(result["models"]).T.reindex(columns=SCORES).add_prefix(f"{run} ")
        for run, result in evaluations.items()
    ]
    return pd.concat(frames, axis=1).rename_axis("system").reset_index()


def _deltas(result: dict) -> pd.DataFrame:
    table = pd.DataFrame(result.get("deltas", []))
    if table.empty:
        return table
    table["delta [95% CI]"] = table.apply(stats.format_ci, axis=1)
    return table[["system", "baseline", "metric", "delta [95% CI]", "significant"]]


def paired_deltas(runs: list[str], resamples: int, seed: int) -> pd.DataFrame:
    """Every other run minus the first, per system and score, paired by test item; then on general text. Each
    row's p-value is also Holm-corrected across every row (empty when no item is shared)."""
    frames = [
        pd.DataFrame(read_complete_lines(paths.run_dir(run) / "evaluate" / "predictions.jsonl")).assign(model=run)
        for run in runs
    ]
    both = pd.concat(frames, ignore_index=True)
    baseline = frames[0]
    both = both[both["id"].isin(set(baseline["id"])) & both["system"].isin(set(baseline["system"]))]
    scores = (
        stats.compare(both, runs[0], list(evaluate.SCORES), by=["system"], resamples=resamples, seed=seed, scale=100)
        if both["model"].nunique() > 1
        else pd.DataFrame()
    )
    tables = [table for table in (scores, general_deltas(runs, resamples, seed)) if len(table)]
    if not tables:
        return pd.DataFrame()
    paired = pd.concat(tables, ignore_index=True)
    paired["p_holm"] = multipletests(paired["p_value"], method="holm")[1]
    return paired


def general_deltas(runs: list[str], resamples: int, seed: int) -> pd.DataFrame:
    """Every other run minus the first per model on general text: the mean log-perplexity per text (nats per
    token; above 0, that run forgot more), paired by text; only the runs that measured it."""
    files = {run: paths.run_dir(run) / "evaluate" / evaluate.GENERAL_FILE for run in runs}
    if not files[runs[0]].is_file():
        return pd.DataFrame()
    frames = [pd.DataFrame(read_complete_lines(path)).assign(run=run) for run, path in files.items() if path.is_file()]
    if len(frames) < 2:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    both = both.assign(general_log_ppl=both["nll"] / both["tokens"].clip(lower=1), system=both["model"])
    both = both[both["system"].isin(set(frames[0]["model"]))].drop(columns=["model"]).rename(columns={"run": "model"})
    return stats.compare(both, runs[0], ["general_log_ppl"], by=["system"], resamples=resamples, seed=seed)


def _paired_table(paired: pd.DataFrame) -> pd.DataFrame:
    if paired.empty:
        return paired
    table = paired.assign(**{"difference [95% CI]": paired.apply(stats.format_ci, axis=1)})
    columns = ["model", "system", "metric", "mean_baseline", "mean_model", "difference [95% CI]", "significant"]
    return table[[*columns, "p_value", "p_holm", "n"]].rename(
        columns={"model": "run", "mean_baseline": "first run", "mean_model": "this run"}
    )


def _html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-", border=0) if len(table) else ""
