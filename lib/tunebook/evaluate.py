"""Stage 03: every model answers the test split; metrics per example and per model, and the worst cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook import metrics, models, registry
from tunebook.files import jsonl_text, write_atomic
from tunebook.params import EvaluateParams

HEADLINE = ("f1", "rouge_l")


@dataclass
class Evaluation:
    examples: pd.DataFrame  # one row per (model, test item): question, reference, prediction, scores
    summary: pd.DataFrame  # one row per model: mean scores (0-100), corpus BLEU, perplexity
    bleu_signature: str


def evaluate_models(test_rows: list[dict], params: EvaluateParams, run_id: str, progress: bool = True) -> Evaluation:
    rows = test_rows[: params.max_examples] if params.max_examples else test_rows
    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    frames, summaries, signature = [], [], ""
    for name in params.models:
        spec = registry.resolve(name, run_id)
        loaded = models.load_model(name, spec["base_model"], spec["adapter"])
        generations = models.generate(loaded, prompts, params.max_new_tokens, params.batch_size, progress)
        predictions = [g.text for g in generations]
        nll, tokens = models.reference_nll(loaded, [row["messages"] for row in rows], params.batch_size, progress)
        scores = metrics.score_examples(predictions, references)
        bleu, signature = metrics.corpus_bleu(predictions, references)
        frames.append(
            pd.DataFrame(
                {
                    "model": name,
                    "id": [row["id"] for row in rows],
                    "question": [p[-1]["content"] for p in prompts],
                    "reference": references,
                    "prediction": predictions,
                    "stopped": [g.stopped for g in generations],
                }
            ).join(scores)
        )
        means = (scores[["exact_match", "f1", "rouge_l"]].mean() * 100).round(2).to_dict()
        summaries.append(
            {
                "model": name,
                **means,
                "bleu": round(bleu, 2),
                "perplexity": round(models.perplexity(nll, tokens), 3),
            }
        )
        del loaded
    return Evaluation(pd.concat(frames, ignore_index=True), pd.DataFrame(summaries), signature)


def deltas(summary: pd.DataFrame, baseline: str = "base") -> pd.DataFrame:
    """Each model's scores minus the baseline's (positive is better, except perplexity)."""
    table = summary.set_index("model")
    return (table - table.loc[baseline]).drop(index=baseline).round(2)


def worst_examples(examples: pd.DataFrame, model: str, n: int) -> pd.DataFrame:
    columns = ["question", "reference", "prediction", "f1", "rouge_l"]
    return examples[examples["model"] == model].nsmallest(n, ["f1", "rouge_l"])[columns]


def beats(summary: pd.DataFrame, model: str, baseline: str = "base") -> dict[str, bool]:
    table = summary.set_index("model")
    return {metric: bool(table.loc[model, metric] > table.loc[baseline, metric]) for metric in HEADLINE}


def write_results(evaluation: Evaluation, out_dir: Path) -> None:
    """metrics.json (read by the runs index) and predictions.jsonl (every answer, for later analysis)."""
    summary = {
        row["model"]: {k: v for k, v in row.items() if k != "model"} for row in evaluation.summary.to_dict("records")
    }
    result = {"models": summary, "bleu_signature": evaluation.bleu_signature, "headline": list(HEADLINE)}
    write_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_atomic(out_dir / "predictions.jsonl", jsonl_text(evaluation.examples.to_dict("records")))
