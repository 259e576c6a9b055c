"""General ability, beside the domain: what a fine-tune may have forgotten.

Two measures for every registry model the evaluate stage scores:
- perplexity on held-out general text (a JSONL of {"id", "text"}), per text, so that models compare by paired
  bootstrap;
- lm-evaluation-harness tasks through its Python API (`lm_eval.simple_evaluate` with its HF model class), loaded
  from the registry as tunebook loads them: the base, the adapter on top, and the tokenizer (so the chat template)
  the model was trained with. A task is an lm-eval task name (`arc_easy`, `hellaswag`... on a machine with the hub)
  or a task YAML file; a YAML's `data_files` are read next to it, so a task ships as YAML over JSONL and runs
  offline (params/general/: the demo's, from Python standard-library modules outside its domain).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import yaml

from tunebook import models, paths, registry, stats
from tunebook.files import read_complete_lines
from tunebook.params import EvaluateParams


def read_texts(path: str | Path) -> pd.DataFrame:
    """The general text: id and text per line of a JSONL file (relative paths from the workdir, then the checkout)."""
    found = located(path)
    rows = read_complete_lines(found)
    if not rows or any(not isinstance(row.get("text"), str) for row in rows):
        raise ValueError(f"{found}: expected JSONL lines with a text field")
    return pd.DataFrame(
        {"id": [row.get("id", str(i)) for i, row in enumerate(rows)], "text": [r["text"] for r in rows]}
    )


def located(path: str | Path) -> Path:
    """A file params name (paths.locate), or a one-line error naming where it was looked for."""
    if found := paths.locate(path):
        return found
    raise ValueError(f"{path}: no such file (looked in {paths.workdir()} and {paths.project_root()})")


@torch.inference_mode()
def text_nll(loaded: models.LoadedModel, texts: list[str], batch_size: int) -> pd.DataFrame:
    """Per text: summed negative log-likelihood of its tokens after the first, and how many were scored; a text
    longer than the model's context is cut to it."""
    tokenizer, rows = loaded.tokenizer, []
    limit = getattr(loaded.model.config, "max_position_embeddings", None) or 4096
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"][:limit] for text in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else models.end_ids(tokenizer)[-1]
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=models.device())
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=models.device())
        logits = loaded.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        rows += [(float(loss.sum()), int(count)) for loss, count in zip(losses, mask[:, 1:].sum(1), strict=True)]
    return pd.DataFrame(rows, columns=["nll", "tokens"])


def task_config(task: str) -> str | dict:
    """An lm-eval task as simple_evaluate takes it: a name as it is, a YAML file as its config with data_files
    read next to the file."""
    if not task.endswith((".yaml", ".yml")):
        return task
    path = located(task)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    for split, name in files.items():
        files[split] = str((path.parent / name).resolve())
    return config


def model_args(spec: dict) -> dict:
    """lm-eval's HF model arguments for a registry model (registry.resolve): the base, the adapter as `peft`, and
    the tokenizer (with its chat template) the model was trained with."""
    tokenizer = spec["adapter"] or spec["tokenizer"] or spec["base_model"]
    args = {"pretrained": spec["base_model"], "tokenizer": str(tokenizer), "dtype": "auto"}
    return args | ({"peft": str(spec["adapter"])} if spec["adapter"] else {})


def lm_eval_scores(
    spec: dict, tasks: list[str], batch_size: int, limit: int | None = None, chat_template: bool = True
) -> pd.DataFrame:
    """Each task's metrics for one registry model: model, task, metric, value, stderr (lm-eval's own)."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(spec),
        tasks=[task_config(task) for task in tasks],
        batch_size=batch_size,
        device=str(models.device()),
        limit=limit or None,
        apply_chat_template=chat_template,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return scores_table(spec["name"], results["results"])


def scores_table(model: str, results: dict) -> pd.DataFrame:
    """lm-eval's results dict ({task: {"acc,none": 0.3, "acc_stderr,none": 0.05, "alias": ...}}) as rows."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, _ = key.partition(",")
            # sample_len is how many items ran, not a score
            if name.endswith("_stderr") or name == "sample_len" or not isinstance(value, int | float):
                continue
            stderr = metrics.get(key.replace(name, f"{name}_stderr", 1))
            rows.append({"model": model, "task": task, "metric": name, "value": value, "stderr": _number(stderr)})
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value", "stderr"])


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def task_scores(params: EvaluateParams, run_id: str) -> pd.DataFrame:
    """Every registry model of the evaluation on every task of `forgetting.tasks` (empty without tasks)."""
    tables = [
        lm_eval_scores(
            registry.resolve(name, run_id),
            params.forgetting.tasks,
            params.batch_size,
            params.forgetting.limit,
            params.forgetting.chat_template,
        )
        for name in (params.models if params.forgetting.tasks else [])
    ]
    return (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["model", "task", "metric", "value", "stderr"])
    )


def forgetting(
    general_nll: pd.DataFrame,
    scores: pd.DataFrame,
    params: EvaluateParams,
    seed: int,
    comparison: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per model other than the baseline, its domain gain beside what it lost on general ability: its domain F1
    against the baseline's (closed-book, from the evaluation's comparison, with its CI), its general perplexity
    against the baseline's, as the paired-bootstrap difference of mean log-perplexity per text (nats per token;
    above 0 is worse), and each lm-eval metric's difference in points with the two stderrs combined into a 95%
    interval. `flagged` when a drop exceeds `forgetting.max_drop`: points on a task, percent on perplexity."""
    rows = []
    if comparison is not None:
        gains = comparison[(comparison["metric"] == "f1") & comparison["system"].isin(params.models)]
        for row in gains.itertuples():
            rows.append(
                {
                    "model": row.system,
                    "measure": "domain f1",
                    "change": f"{row.delta:+.1f} points",
                    "95% CI": f"[{row.ci_low:+.1f}, {row.ci_high:+.1f}]",
                    "flagged": False,
                }
            )
    if not general_nll.empty and params.baseline in set(general_nll["model"]):
        per_text = general_nll.assign(log_ppl=general_nll["nll"] / general_nll["tokens"].clip(lower=1))
        compared = stats.compare(per_text, params.baseline, ["log_ppl"], resamples=params.resamples, seed=seed)
        for row in compared.itertuples():
            rise = (math.exp(row.delta) - 1) * 100
            rows.append(
                {
                    "model": row.model,
                    "measure": "general perplexity",
                    "change": f"{rise:+.1f}%",
                    "95% CI": f"[{(math.exp(row.ci_low) - 1) * 100:+.1f}%, {(math.exp(row.ci_high) - 1) * 100:+.1f}%]",
                    "flagged": rise > params.forgetting.max_drop,
                }
            )
    base = scores[scores["model"] == params.baseline].set_index(["task", "metric"])
    for row in scores[scores["model"] != params.baseline].itertuples():
        if (row.task, row.metric) not in base.index:
            continue
        before = base.loc[(row.task, row.metric)]
        delta = (row.value - before["value"]) * 100
        spread = 1.96 * math.hypot(row.stderr or 0, before["stderr"] or 0) * 100
        rows.append(
            {
                "model": row.model,
                "measure": f"{row.task} {row.metric}",
                "change": f"{delta:+.1f} points",
                "95% CI": f"[{delta - spread:+.1f}, {delta + spread:+.1f}]",
                "flagged": -delta > params.forgetting.max_drop,
            }
        )
    return pd.DataFrame(rows, columns=["model", "measure", "change", "95% CI", "flagged"])
