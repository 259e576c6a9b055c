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


def paired_deltas(
    runs: list[str], resamples: int, seed: int, systems: list[str] | None = None, scores: list[str] | None = None
) -> pd.DataFrame:
    """Every other run minus the first, per system and score (all of the evaluate stage's, or these systems from
    the evaluation that scored each, on these per-item scores), paired by test item; then on general text. Each
    row's p-value is also Holm-corrected across every row (empty when no item is shared)."""
    if systems is None:
        frames = [
            pd.DataFrame(read_complete_lines(paths.run_dir(run) / "evaluate" / "predictions.jsonl")).assign(model=run)
            for run in runs
        ]
    else:
        frames = [pd.concat([reports.item_scores(run, system) for system in systems]).assign(model=run) for run in runs]
    both = pd.concat(frames, ignore_index=True)
    baseline = frames[0]
    both = both[both["id"].isin(set(baseline["id"])) & both["system"].isin(set(baseline["system"]))]
    metrics = scores or list(evaluate.SCORES)
    # A bootstrap p-value is at least 2/(resamples+1): with m comparisons Holm multiplies it by up to m, so enough
    # resamples that it could still fall under 0.05 (100 per comparison).
    comparisons = (len(runs) - 1) * both["system"].nunique() * (len(metrics) + 1)
    resamples = max(resamples, 100 * comparisons)
    items = (
        stats.compare(both, runs[0], metrics, by=["system"], resamples=resamples, seed=seed, scale=100)
        if both["model"].nunique() > 1
        else pd.DataFrame()
    )
    tables = [table for table in (items, general_deltas(runs, resamples, seed, systems)) if len(table)]
    if not tables:
        return pd.DataFrame()
    paired = pd.concat(tables, ignore_index=True)
    paired["p_holm"] = multipletests(paired["p_value"], method="holm")[1]
    return paired


def general_deltas(runs: list[str], resamples: int, seed: int, systems: list[str] | None = None) -> pd.DataFrame:
    """Every other run minus the first per model (or these) on general text: the mean log-perplexity per text (nats
    per token; above 0, that run forgot more), paired by text; only the runs that measured it."""
    files = {run: paths.run_dir(run) / "evaluate" / evaluate.GENERAL_FILE for run in runs}
    if not files[runs[0]].is_file():
        return pd.DataFrame()
    frames = [pd.DataFrame(read_complete_lines(path)).assign(run=run) for run, path in files.items() if path.is_file()]
    if len(frames) < 2:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    both = both.assign(general_log_ppl=both["nll"] / both["tokens"].clip(lower=1), system=both["model"])
    both = both[both["system"].isin(set(frames[0]["model"]) & set(systems or frames[0]["model"]))]
    both = both.drop(columns=["model"]).rename(columns={"run": "model"})
    if runs[0] not in set(both["model"]) or both["model"].nunique() < 2:
        return pd.DataFrame()
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


def sweep_page(record: dict, resamples: int = 1000, seed: int = 0) -> Path:
    """reports/sweeps/<id>.html: every variant's settings, status and scores with CIs; each variant minus the baseline
    (the first) paired by test item, Holm-corrected across the page; the best variant on the target metric and the
    share of item resamples in which it stays the best; each score against each swept key; the params diff."""
    entries = record["variants"]
    completed = [entry["id"] for entry in entries if entry["status"] == "completed"]
    system, _, score = record["spec"]["metric"].rpartition(".")
    system = system or (reports.final_model(list(reports.evaluated_models(completed[0]))) if completed else None)
    items = {run: reports.item_scores(run, system) for run in completed}
    scored = [run for run in completed if len(items[run])]
    metrics = list(dict.fromkeys([score, *evaluate.SCORES[1:]]))  # the target first, then f1 and rouge_l
    summary = _variant_scores(items, scored, metrics, resamples, seed)
    baseline = entries[0]["id"]
    page = {
        "record": record,
        "system": system,
        "score": score,
        "baseline": baseline,
        "keys": list(record["spec"]["grid"] or record["spec"]["search"]),
        "rows": _variant_rows(entries, summary, metrics),
        "metrics": metrics,
        "best": _best(items, scored, score, record["spec"]["direction"], resamples, seed),
    }
    runs = [baseline, *(run for run in scored if run != baseline)] if baseline in scored else []
    try:
        paired = paired_deltas(runs, resamples, seed, [system], metrics) if len(runs) > 1 else pd.DataFrame()
    except ValueError:  # a variant sharing fewer than two test items with the baseline (its generate differed)
        paired = pd.DataFrame()
    page["comparisons"] = len(paired)
    page["paired"] = _html(_paired_table(paired).rename(columns={"run": "variant", "first run": baseline}))
    if page["best"] and len(paired):
        vs = paired[(paired["model"] == page["best"]["variant"]) & (paired["metric"] == score)]
        page["best"]["vs_baseline"] = vs.iloc[0].to_dict() if len(vs) else None
    manifests = {run: _read(paths.reports_dir() / run / "run.json", run) for run in completed}
    diff = params_diff({run: manifest["params"] for run, manifest in manifests.items()}) if manifests else None
    page["params"] = _html(diff[diff["key"] != "run.id"]) if diff is not None else ""
    settings = [{"variant": e["id"], **{k: _plain(v) for k, v in e["settings"].items()}} for e in entries]
    points = summary.merge(pd.DataFrame(settings, columns=["variant", *page["keys"]]), on="variant")
    figure = (
        plots.sweep_scores(points, page["keys"], metrics, f"{system}: each score against each swept key")
        if len(points)
        else None
    )
    page["plot"] = plots.data_uri(figure) if figure else None
    html = reports.templates().get_template("sweep.html.j2").render(**page)
    out = paths.reports_dir() / "sweeps" / f"{record['sweep_id']}.html"
    write_atomic(out, html)
    return out


def _variant_scores(items: dict, runs: list[str], metrics: list[str], resamples: int, seed: int) -> pd.DataFrame:
    """Each variant's mean per metric (points) with its bootstrap CI over the test items (long: variant, metric)."""
    rows = []
    for run in runs:
        for metric in metrics:
            mean, low, high = stats.mean_ci(items[run][metric].astype(float) * 100, resamples, seed)
            rows.append({"variant": run, "metric": metric, "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["variant", "metric", "mean", "low", "high"])


def _variant_rows(entries: list[dict], summary: pd.DataFrame, metrics: list[str]) -> list[dict]:
    """Each variant's record, with its scores and a link to the last stage report it has."""
    scores = {(row["variant"], row["metric"]): row for row in summary.to_dict("records")}
    rows = []
    for entry in entries:
        manifest = reports.read_manifest(entry["id"])
        reached = reports.stage_reached(manifest) if manifest else "-"
        report = f"../{entry['id']}/{paths.NOTEBOOKS[reached]}.html" if reached in paths.NOTEBOOKS else None
        rows.append({**entry, "report": report, "scores": [scores.get((entry["id"], metric)) for metric in metrics]})
    return rows


def _best(items: dict, runs: list[str], score: str, direction: str, resamples: int, seed: int) -> dict | None:
    """The best variant on the target score, and its share of resamples of the items all variants answered in
    which it stays the best."""
    if not runs:
        return None
    wide = pd.concat({run: items[run].set_index("id")[score].astype(float) for run in runs}, axis=1).dropna()
    if wide.empty:  # no test item every variant answered
        return None
    means = wide.mean() * 100
    best = means.idxmax() if direction == "maximize" else means.idxmin()
    shares = stats.best_probability(wide, resamples, seed, direction == "maximize") if len(wide) > 1 else None
    return {
        "variant": best,
        "mean": float(means[best]),
        "share": float(shares[best]) if shares is not None else None,
        "n_items": len(wide),
        "resamples": resamples,
        "shares": shares.sort_values(ascending=False).to_dict() if shares is not None else {},
    }


def _plain(value):
    """A setting as a plot axis can hold it: a list or a mapping (`evaluate.models`) as its text."""
    return json.dumps(value) if isinstance(value, list | dict) else value
