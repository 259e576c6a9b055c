"""The runs index (reports/index.html), the `tunebook runs` table and headline metrics of a run."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from functools import cache
from pathlib import Path

import nbformat
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from nbconvert import HTMLExporter

from tunebook import paths
from tunebook.files import read_progress, write_atomic


@cache
def templates() -> Environment:
    """The page templates of tunebook/templates (runs index, summary box, compare page)."""
    # The templates are named *.html.j2, which select_autoescape's defaults (html, htm, xml) would leave unescaped.
    return Environment(loader=PackageLoader("tunebook"), autoescape=select_autoescape(["html", "j2"]))


# What a stage's record says once its outputs are there: run, reused from the run's last time, or shared by another.
DONE = ("completed", "cached", "shared")


# Where a run's models are scored beside the base, in the order the stages run: a stage's own model is kept from
# its re-evaluation (None: every model of the evaluate stage).
EVALUATIONS = (("evaluate", None), ("dpo/evaluation", "dpo"), ("rl/evaluation", "rl"))


def headline_metrics(run_id: str) -> dict:
    """The headline scores per system, e.g. {'sft': {'f1': 41.2, ...}}: the evaluate stage's, and the DPO and RL
    models' from their stages' re-evaluations."""
    return {system: {k: scores[k] for k in headline} for system, (scores, headline) in _evaluated(run_id).items()}


def evaluated_models(run_id: str) -> dict[str, dict]:
    """Every score of each system, from the evaluation that scored it (as headline_metrics), in the stages' order:
    the last system without `+rag` is the run's final model."""
    return {system: scores for system, (scores, _) in _evaluated(run_id).items()}


def _evaluated(run_id: str) -> dict[str, tuple[dict, list[str]]]:
    found = {}
    for stage, keep in EVALUATIONS:
        path = paths.run_dir(run_id) / stage / "metrics.json"
        if path.exists():
            result = json.loads(path.read_text(encoding="utf-8"))
            found |= {
                system: (scores, result["headline"])
                for system, scores in result["models"].items()
                if keep in (None, system)
            }
    return found


def final_model(systems: list[str]) -> str | None:
    """The trained model a run ends with, among the systems its evaluations scored (in the stages' order)."""
    return next((name for name in reversed(systems) if "+" not in name and name != BASELINE), None)


def item_scores(run_id: str, system: str) -> pd.DataFrame:
    """One row per test item that `system` answered in the evaluation that scored it: id and per-item scores."""
    for stage, keep in reversed(EVALUATIONS):
        path = paths.run_dir(run_id) / stage / "predictions.jsonl"
        if keep in (None, system) and path.exists():
            rows = pd.read_json(path, lines=True)
            if len(found := rows[rows["system"] == system]):
                return found.reset_index(drop=True)
    return pd.DataFrame()


def read_manifest(run_id: str) -> dict:
    """A run's manifest (reports/<run>/run.json), or {} before it has one."""
    path = paths.reports_dir() / run_id / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def manifests() -> list[dict]:
    found = []
    for path in sorted(paths.reports_dir().glob("*/run.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            continue  # a manifest being replaced right now; the next index write picks it up
    return sorted(found, key=lambda m: m.get("started") or "", reverse=True)


def stage_reached(manifest: dict) -> str:
    done = [s for s in paths.STAGES if manifest.get("stages", {}).get(s, {}).get("status") in DONE]
    return done[-1] if done else "-"


def runs_table() -> pd.DataFrame:
    rows = []
    for manifest in manifests():
        headline = manifest.get("headline") or {}
        metrics = "  ".join(
            f"{model} " + " ".join(f"{k}={v:.1f}" for k, v in scores.items()) for model, scores in headline.items()
        )
        failed = manifest.get("failed") or {}
        running = [s for s, r in manifest.get("stages", {}).items() if r.get("status") == "running"]
        rows.append(
            {
                "run": manifest["run_id"],
                "status": manifest["status"] + (f" ({failed['stage']}, cell {failed['cell']})" if failed else ""),
                "stage": _running(manifest["run_id"], running[0]) if running else stage_reached(manifest),
                "started": (manifest.get("started") or "")[:16].replace("T", " "),
                "sweep": (manifest.get("sweep") or {}).get("id", "-"),
                "metrics": metrics or "-",
            }
        )
    return pd.DataFrame(rows, columns=["run", "status", "stage", "started", "sweep", "metrics"])


def _running(run_id: str, stage: str) -> str:
    """A running stage, with its progress when it reports any: `generate 15/16, ETA 0:00:42`."""
    progress = read_progress(paths.run_dir(run_id) / stage)
    if not progress:
        return stage
    eta = progress.get("eta_s")
    eta_text = f", ETA {timedelta(seconds=round(eta))}" if eta is not None else ""
    return f"{stage} {progress['done']}/{progress['total']}{eta_text}"


BASELINE = "base"  # headline deltas are against the base model of the same run


def headline_cells(headline: dict) -> list[dict]:
    """Each model's headline scores, and for every model but the base their difference from the base."""
    base = headline.get(BASELINE, {})
    return [
        {
            "model": model,
            "scores": [
                (metric, value, None if model == BASELINE or metric not in base else value - base[metric])
                for metric, value in scores.items()
            ],
        }
        for model, scores in headline.items()
    ]


def headline_plot(runs: list[dict]) -> str | None:
    """Headline metrics across runs (oldest first) as an inline PNG; None before any run has scores."""
    rows = [
        {"run": run["run_id"], "model": model, "metric": metric, "score": value}
        for run in reversed(runs)
        for model, scores in (run.get("headline") or {}).items()
        for metric, value in scores.items()
    ]
    if not rows:
        return None
    from tunebook import plots  # matplotlib only once there is something to draw

    return plots.data_uri(plots.runs_headline(pd.DataFrame(rows)))


def tradeoff(run_id: str) -> dict | None:
    """A run's final model: its domain gain (F1 points over base) and its general loss (general perplexity, percent
    over base's), from the latest evaluation that scored both; None when none did."""
    for stage, model in reversed(EVALUATIONS):  # the latest stage's model first
        path = paths.run_dir(run_id) / stage / "metrics.json"
        if not path.exists():
            continue
        scored = json.loads(path.read_text(encoding="utf-8"))["models"]
        trained = model or final_model(list(scored))
        base, final = scored.get(BASELINE, {}), scored.get(trained, {})
        if base.get("general_perplexity") and final.get("general_perplexity") and trained != BASELINE:
            return {
                "run": run_id,
                "model": trained,
                "domain gain (F1 points)": final["f1"] - base["f1"],
                "general loss (perplexity %)": (final["general_perplexity"] / base["general_perplexity"] - 1) * 100,
            }
    return None


def tradeoff_plot(runs: list[dict]) -> str | None:
    """Domain gain against general loss, one point per run, as an inline PNG; None before any run has both."""
    points = [point for run in runs if (point := tradeoff(run["run_id"]))]
    if not points:
        return None
    from tunebook import plots

    return plots.data_uri(plots.gain_vs_loss(pd.DataFrame(points)))


def write_index() -> Path:
    """reports/index.html: every run, its status (and where it failed), headline metrics with their deltas vs
    base, links to its stage reports, a plot of the metrics across runs, and one of domain gain against general
    loss. The table sorts by any column with a click, and the page needs no server: its script, style and plots
    are inline."""
    runs = []
    for manifest in manifests():
        stages = manifest.get("stages", {})
        cells = headline_cells(manifest.get("headline") or {})
        trained = next((c for c in cells if c["model"] != BASELINE), None)
        runs.append(
            {
                **manifest,
                "reached": stage_reached(manifest),
                "headline_cells": cells,
                # what the metrics column sorts by: the first trained model's first headline score
                "sort_score": trained["scores"][0][1] if trained and trained["scores"] else -1,
                "links": [
                    (
                        stage,
                        f"{manifest['run_id']}/{paths.NOTEBOOKS[stage]}.html",
                        stages[stage].get("status"),
                    )
                    for stage in paths.STAGES
                    if stage in stages
                ],
            }
        )
    html = (
        templates()
        .get_template("index.html.j2")
        .render(
            runs=runs,
            sweeps=sweep_records(),
            stages=paths.STAGES,
            plot=headline_plot(runs),
            tradeoff=tradeoff_plot(runs),
        )
    )
    path = paths.reports_dir() / "index.html"
    write_atomic(path, html)
    return path


def sweep_records() -> list[dict]:
    """The sweeps' records (reports/sweeps/<id>.json, tunebook.sweep), newest first."""
    found = []
    for path in (paths.reports_dir() / "sweeps").glob("*.json"):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            continue  # being replaced right now
    return sorted(found, key=lambda record: record.get("started") or "", reverse=True)


SUMMARY_TAG = "summary"  # the cell whose output opens the stage's HTML report


def summary(
    stage: str,
    run_id: str,
    numbers: dict[str, object],
    warnings: list[str] | None = None,
    inputs: dict[str, Path] | None = None,
    outputs: dict[str, Path] | None = None,
):
    """The box a stage report opens with: what ran, its key numbers, its warnings, and links to what it read
    and wrote (relative to the report, so the page works wherever reports/ and data/ sit side by side). The
    stage notebook shows it in its last cells, tagged `summary`, and render_html moves it to the top."""
    from IPython.display import HTML

    here = paths.reports_dir() / run_id

    def links(found: dict[str, Path] | None) -> list[tuple[str, str, str]]:
        return [(name, os.path.relpath(path, here), str(path)) for name, path in (found or {}).items()]

    html = (
        templates()
        .get_template("summary.html.j2")
        .render(
            stage=stage,
            run_id=run_id,
            numbers=numbers,
            warnings=warnings or [],
            inputs=links(inputs),
            outputs=links(outputs),
        )
    )
    return HTML(html)


def render_html(notebook_path: Path, show_code: bool = False) -> Path:
    """NN_stage.html beside the executed notebook; code cells are hidden unless asked for, and the summary
    box (the cell tagged `summary`) comes first, under the title."""
    notebook = nbformat.read(notebook_path, as_version=4)
    boxes = [cell for cell in notebook.cells if SUMMARY_TAG in cell.get("metadata", {}).get("tags", [])]
    rest = [cell for cell in notebook.cells if cell not in boxes]
    notebook.cells = rest[:1] + boxes + rest[1:]
    for cell in notebook.cells:
        cell["outputs"] = progress_apart(merge_streams(cell.get("outputs", [])))
    exporter = HTMLExporter(exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    html_path = notebook_path.with_suffix(".html")
    write_atomic(html_path, body)
    return html_path


def merge_streams(outputs: list) -> list:
    """Consecutive writes to one stream as one output, as a terminal would show them. A bar drawn from a
    worker thread reaches the notebook as one output per redraw, which would otherwise render as a line each."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.get("output_type") == previous.get("output_type") == "stream"
            and output["name"] == previous["name"]
        ):
            previous["text"] += output["text"]
        else:
            merged.append(output)
    return merged


# A tqdm bar: "desc: 100%|█████| 455/455 [00:00<00:00, 3023.49 examples/s]", or with no total "12it [00:01, ...]"
# and "455 examples [00:00, ...]".
_PROGRESS_LINE = re.compile(r"\d+%\|.*\[\d+:\d\d|\d ?[\w/]* \[\d+:\d\d(:\d\d)?, ")


def progress_apart(outputs: list) -> list:
    """Streams as a terminal ends up showing them (each bar at its last state), with the progress bars that
    libraries draw on stderr moved to a plain output of their own: nbconvert paints stderr like an error,
    and a finished bar is not one. Whatever else went to stderr (warnings) stays there."""
    result: list = []
    for output in outputs:
        if output.get("output_type") != "stream":
            result.append(output)
            continue
        output["text"] = collapse_carriage_returns(output["text"])
        lines = output["text"].splitlines(keepends=True)
        bars = [line for line in lines if output["name"] == "stderr" and _PROGRESS_LINE.search(line)]
        # a bar drawn with leave=False ends as a line of spaces
        rest = [line for line in lines if line not in bars and (output["name"] == "stdout" or line.strip())]
        if bars:
            result.append(nbformat.v4.new_output("stream", name="stdout", text="".join(bars)))
        if rest:
            result.append({**output, "text": "".join(rest)})
    return result


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows: a progress bar redrawn with \r ends as its last state, not 100 lines."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
