"""Stage 03: every model answers every test item, closed-book and with retrieved chunks (RAG); scores,
paired-bootstrap confidence intervals for every difference, domain checks and contamination. The stage's
notebook adds the judge's verdicts and failure labels (`tunebook.judge`) and the blind sheet for people
(`tunebook.human`); DPO's re-evaluation and the export's checks use this module without them.

A "system" is a model under a condition: `sft` answers closed-book, `sft+rag` with the top-k chunks of the
run's Chroma collection in its prompt. Every system is compared with the baseline system (closed-book).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook import checks, chunking, dataset, general, ingest, llm, metrics, models, paths, quality, registry, stats
from tunebook.files import jsonl_text, write_atomic
from tunebook.llm import generations
from tunebook.params import ChromaParams, EndpointParams, EvaluateParams

SCORES = ("exact_match", "f1", "rouge_l")  # per example in [0, 1]; reported in points (x100)
HEADLINE = ("f1", "rouge_l")
GENERAL_FILE = "general.jsonl"
RAG = "+rag"


# --- what is evaluated ----------------------------------------------------------------------------------


@dataclass
class EvaluationSet:
    """The items every model answers, and what grading them needs beside the answers."""

    items: pd.DataFrame  # what every model answers: id, split, question, reference, chunk_id, check
    retrieved: pd.DataFrame | None  # the top-k chunks of each item, when a condition is rag
    train_texts: list[str]  # the train split, to flag test items that overlap it
    chunk_texts: dict[str, str]  # chunk id -> text: the source passage a judge is shown


def inputs(run_id: str, params: EvaluateParams, store: ChromaParams) -> EvaluationSet:
    """This run's test split (and benchmark file), retrieval from its collection, and its train split."""
    dataset_dir = paths.stage_dir(run_id, "generate")
    items = test_items(dataset.read_split(dataset_dir, "test"), params)
    if items.empty:  # a dataset written before every split was given rows, or edited by hand
        raise ValueError(
            f"nothing to evaluate: {dataset_dir / 'test.jsonl'} is empty and evaluate.benchmark_file unset"
        )
    ingest_dir = paths.stage_dir(run_id, "ingest")
    retrieved = None
    if "rag" in params.conditions:
        retrieved = retrieve(items, ingest.recorded_collection(ingest_dir, store), params.rag_k)
    train = dataset.read_split(dataset_dir, "train")
    train_texts = [quality.conversation_text(row) for row in train]
    chunk_texts = {chunk.id: chunk.text for chunk in chunking.read_chunks(ingest_dir / "chunks.jsonl")}
    return EvaluationSet(items, retrieved, train_texts, chunk_texts)


def test_items(test_rows: list[dict], params: EvaluateParams) -> pd.DataFrame:
    """One row per item: the test split (the first max_examples of it) and the user's benchmark file."""
    rows = test_rows[: params.max_examples] if params.max_examples else test_rows
    items = [_item(row, "test") for row in rows]
    if params.benchmark_file:
        items += [_item(row, "benchmark") for row in checks.read_benchmark(params.benchmark_file)]
    return pd.DataFrame(items)


def _item(row: dict, split: str) -> dict:
    return {
        "id": row["id"],
        "split": split,
        "question": row["messages"][-2]["content"],
        "reference": row["messages"][-1]["content"],
        "chunk_id": row.get("chunk_id"),
        "check": row.get("check"),
    }


def retrieve(items: pd.DataFrame, collection, k: int, batch_size: int = 64) -> pd.DataFrame:
    """The top-k chunks for each question: id, context (their texts), retrieved ids, and whether the chunk
    the item was written from is among them (missing for items without a source chunk)."""
    rows = []
    for start in range(0, len(items), batch_size):
        batch = items.iloc[start : start + batch_size]
        found = collection.query(query_texts=batch["question"].tolist(), n_results=k, include=["documents"])
        for (_, item), ids, texts in zip(batch.iterrows(), found["ids"], found["documents"], strict=True):
            hit = item["chunk_id"] in ids if item["chunk_id"] else None
            rows.append({"id": item["id"], "context": texts, "retrieved": ids, "hit": hit})
    return pd.DataFrame(rows)


def conversations(items: pd.DataFrame, retrieved: pd.DataFrame | None, params: EvaluateParams) -> list[list[dict]]:
    """The user turns a condition asks: the question alone, or the rag_prompt with retrieved chunks."""
    if retrieved is None:
        return [[{"role": "user", "content": q}] for q in items["question"]]
    contexts = retrieved.set_index("id").loc[items["id"], "context"]
    share = params.rag_max_chars // params.rag_k
    return [
        [{"role": "user", "content": params.rag_prompt.format(context=_context(chunks, share), question=q)}]
        for q, chunks in zip(items["question"], contexts, strict=True)
    ]


def _context(chunks: list[str], share: int) -> str:
    return "\n\n---\n\n".join(
        chunk if len(chunk) <= share else chunk[:share].rsplit(" ", 1)[0] + " ..." for chunk in chunks
    )


# --- answering and scoring ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    examples: pd.DataFrame  # one row per (system, item): prompt parts, prediction, scores, checks, overlap
    summary: pd.DataFrame  # one row per system: mean scores (points), corpus BLEU, perplexity, hit rate...
    models: pd.DataFrame  # one row per model: where it came from and the chat template it answered with
    bleu_signature: str
    decoding: dict  # the decoding every model used
    general_nll: pd.DataFrame  # per model and general text: nll, tokens (empty without evaluate.forgetting.text)


def evaluate_models(
    items: pd.DataFrame,
    params: EvaluateParams,
    run_id: str,
    retrieved: pd.DataFrame | None = None,
    train_texts: list[str] | None = None,
    progress: bool = True,
) -> Evaluation:
    """Every model answers every item under every condition (greedy, the same max_new_tokens); each
    answer is scored against its reference, checked, and flagged by its item's overlap with train_texts."""
    frames, model_rows, perplexities, general_rows = [], [], {}, []
    texts = general.read_texts(params.forgetting.text) if params.forgetting.text else None
    conditions = {c: conversations(items, retrieved if c == "rag" else None, params) for c in params.conditions}
    # Perplexity is measured on the references answering the bare questions, the same for every model.
    questions = conversations(items, None, params)
    references = [
        [*turns, {"role": "assistant", "content": reference}]
        for turns, reference in zip(questions, items["reference"], strict=True)
    ]
    for name in params.models:
        spec = registry.resolve(name, run_id)
        loaded = models.load_model(name, spec["base_model"], spec["adapter"], spec["tokenizer"])
        reused = 0
        for condition, asked in conditions.items():
            answers, cached = generations.greedy(
                loaded, spec["identity"], asked, params.max_new_tokens, params.batch_size, progress
            )
            reused += cached
            frames.append(_answers(items, name, condition, [a.text for a in answers], [a.stopped for a in answers]))
        model_rows.append(
            {
                "model": name,
                "source": spec["adapter"] or spec["base_model"],
                "chat template": template_id(loaded.tokenizer.chat_template),
                "answers": f"{reused} of {len(conditions)} conditions from the cache",
            }
        )
        nll, tokens = models.reference_nll(loaded, references, params.batch_size, progress)
        perplexities[name] = models.perplexity(nll, tokens)
        if texts is not None:
            scored = general.text_nll(loaded, texts["text"].tolist(), params.batch_size)
            general_rows.append(scored.assign(model=name, id=texts["id"].to_numpy()))
        del loaded
    for endpoint in params.endpoints:
        model_rows.append({"model": endpoint.name, "source": endpoint.base_url, "chat template": "the server's"})
        for condition, asked in conditions.items():
            texts, stopped = _ask_endpoint(endpoint, asked, params.max_new_tokens, progress)
            frames.append(_answers(items, endpoint.name, condition, texts, stopped))
    examples = _score(pd.concat(frames, ignore_index=True), params, retrieved, train_texts or [])
    general_nll = pd.concat(general_rows, ignore_index=True) if general_rows else pd.DataFrame()
    summary, signature = summarize(examples, perplexities, retrieved, general_nll)
    decoding = {
        "decoding": "greedy",
        "max_new_tokens": params.max_new_tokens,
        "batch_size": params.batch_size,
        "conditions": params.conditions,
        "rag_k": params.rag_k,
    }
    return Evaluation(examples, summary, pd.DataFrame(model_rows), signature, decoding, general_nll)


def template_id(template: str | None) -> str:
    return hashlib.sha256((template or "").encode()).hexdigest()[:12] if template else "none"


def _ask_endpoint(
    endpoint: EndpointParams, asked: list[list[dict]], max_new_tokens: int, progress: bool
) -> tuple[list[str], list[bool]]:
    answers = llm.chat_many(
        endpoint.chat_model(max_new_tokens), llm.Limits.of(endpoint), asked, f"generate {endpoint.name}", progress
    )
    texts = [a.reply.text.strip() if a.reply else "" for a in answers]
    # An answer the server garbled scores 0 like any wrong answer, and shows as not stopped.
    return texts, [bool(a.reply and a.reply.stopped) for a in answers]


def _answers(items: pd.DataFrame, model: str, condition: str, texts: list[str], stopped: list[bool]) -> pd.DataFrame:
    system = model + (RAG if condition == "rag" else "")
    frame = items[["id", "split", "question", "reference", "chunk_id", "check"]].copy()
    return frame.assign(system=system, model=model, condition=condition, prediction=texts, stopped=stopped)


def _score(
    examples: pd.DataFrame, params: EvaluateParams, retrieved: pd.DataFrame | None, train_texts: list[str]
) -> pd.DataFrame:
    scores = metrics.score_examples(examples["prediction"].tolist(), examples["reference"].tolist())
    examples = pd.concat([examples.reset_index(drop=True), scores], axis=1)
    examples["answer_words"] = examples["prediction"].str.split().str.len()
    texts = (examples["question"] + " " + examples["reference"]).tolist()
    examples["train_overlap"] = quality.ngram_overlap(texts, train_texts, params.contamination_ngram)
    if retrieved is not None:
        hits = retrieved.set_index("id")["hit"]
        examples["hit"] = examples["id"].map(hits).where(examples["condition"] == "rag")
    checked = checks.run_checks(examples, params.checks)
    return examples.join(checked)


def summarize(
    examples: pd.DataFrame,
    perplexities: dict[str, float] | None = None,
    retrieved: pd.DataFrame | None = None,
    general_nll: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, str]:
    """Per system: items, mean scores in points, corpus BLEU, stop rate, perplexity (closed-book, on the
    references) and on the general text, retrieval hit rate (rag) and each domain check's pass rate."""
    general_ppl = {}
    if general_nll is not None and not general_nll.empty:
        sums = general_nll.groupby("model")[["nll", "tokens"]].sum()
        general_ppl = {model: models.perplexity(row.nll, row.tokens) for model, row in sums.iterrows()}
    rows, signature = [], ""
    for system, group in examples.groupby("system", sort=False):
        bleu, signature = metrics.corpus_bleu(group["prediction"].tolist(), group["reference"].tolist())
        row = {
            "system": system,
            "model": group["model"].iloc[0],
            "condition": group["condition"].iloc[0],
            "items": len(group),
            **(group[list(SCORES)].mean() * 100).round(2).to_dict(),
            "bleu": round(bleu, 2),
            "stopped": round(group["stopped"].mean() * 100, 1),
        }
        if perplexities is not None:
            closed = row["condition"] == "closed_book"
            row["perplexity"] = round(perplexities.get(row["model"], float("nan")), 3) if closed else float("nan")
        if general_ppl:
            closed = row["condition"] == "closed_book"
            row["general_perplexity"] = (
                round(general_ppl.get(row["model"], float("nan")), 3) if closed else float("nan")
            )
        if "hit" in group and row["condition"] == "rag":
            row["retrieval_hit_rate"] = round(group["hit"].dropna().astype(float).mean() * 100, 1)
        for column in check_columns(examples):
            row[column] = round(group[column].dropna().mean() * 100, 1)
        rows.append(row)
    return pd.DataFrame(rows), signature


def check_columns(examples: pd.DataFrame) -> list[str]:
    """The pass/fail columns of the domain checks (check_<name>: 1, 0, or missing where it does not apply)."""
    return [c for c in examples.columns if c.startswith("check_") and not c.endswith("_reason")]


# --- comparisons ------------------------------------------------------------------------------------------


def compare(examples: pd.DataFrame, params: EvaluateParams, seed: int) -> pd.DataFrame:
    """Every system vs the baseline (closed-book) on every score, each domain check's pass rate, and the judge's
    grade once it is there: the paired-bootstrap delta (points; judge grades on their 1-10 scale), its 95% CI, and
    whether the CI excludes 0, the only case the report calls significant. A check is compared on the items it
    applies to, when there are at least two."""
    scores = examples.rename(columns={"model": "_model", "system": "model"})
    tables = [stats.compare(scores, params.baseline, list(SCORES), resamples=params.resamples, seed=seed, scale=100)]
    for column in check_columns(scores):
        applied = scores.dropna(subset=[column])
        if (applied["model"] == params.baseline).sum() >= 2:
            tables.append(
                stats.compare(applied, params.baseline, [column], resamples=params.resamples, seed=seed, scale=100)
            )
    if "judge_score" in scores:
        # Unparsable grades are not scores: a system is compared on the items both it and the baseline got a
        # grade for, and not at all when fewer than two are left (a judge that only wrote garbage).
        graded = scores.assign(judge_score=scores["judge_score"].astype(float)).dropna(subset=["judge_score"])
        baseline_ids = set(graded.loc[graded["model"] == params.baseline, "id"])
        paired = graded.groupby("model")["id"].agg(lambda ids: len(baseline_ids & set(ids)))
        graded = graded[graded["model"].map(paired) >= 2]
        if params.baseline in set(graded["model"]):
            tables.append(
                stats.compare(graded, params.baseline, ["judge_score"], resamples=params.resamples, seed=seed)
            )
    return pd.concat(tables, ignore_index=True).rename(columns={"model": "system"})


def key_deltas(comparison: pd.DataFrame, systems: list[str] | None = None) -> dict[str, str]:
    """The headline deltas with their CIs, for a report's summary: {"sft f1 vs base": "+9.0 [+4.9, +13.4]"}."""
    rows = comparison[comparison["metric"].isin(HEADLINE)]
    if systems is not None:
        rows = rows[rows["system"].isin(systems)]
    return {f"{r['system']} {r['metric']} vs {r['baseline']}": stats.format_ci(r) for _, r in rows.iterrows()}


def clean_subset(examples: pd.DataFrame) -> pd.DataFrame:
    """The items that share no n-gram with the training data."""
    return examples[examples["train_overlap"] == 0]


# --- reading the results --------------------------------------------------------------------------------


def changed_most(examples: pd.DataFrame, systems: list[str], n: int) -> pd.DataFrame:
    """Side by side, the answers of the systems (baseline first) on the items whose F1 moved most between
    the first system and the last."""
    wide = examples[examples["system"].isin(systems)].pivot_table(
        index=["id", "question", "reference"], columns="system", values=["prediction", "f1"], aggfunc="first"
    )
    change = (wide[("f1", systems[-1])] - wide[("f1", systems[0])]).abs()
    top = wide.loc[change.sort_values(ascending=False).index[:n], "prediction"][systems]
    return top.reset_index(level="id", drop=True).reset_index()


def beats(comparison: pd.DataFrame, system: str) -> dict[str, bool]:
    """Whether system's headline scores are significantly above the baseline's (CI above 0)."""
    rows = comparison[(comparison["system"] == system) & comparison["metric"].isin(HEADLINE)]
    return {row["metric"]: bool(row["significant"] and row["delta"] > 0) for _, row in rows.iterrows()}


def write_results(
    evaluation: Evaluation, comparison: pd.DataFrame, judged: pd.DataFrame, out_dir: Path, extra: dict
) -> None:
    """metrics.json (read by the runs index and `tunebook compare`; judged is the judge's summary per system,
    `judge.Judgement.summary`), predictions.jsonl (every answer) and general.jsonl (each model's NLL per general
    text)."""
    summary = evaluation.summary.set_index("system")
    result = {
        "models": json.loads(summary.to_json(orient="index")),
        "deltas": json.loads(comparison.to_json(orient="records")),
        "judge": json.loads(judged.to_json(orient="records")),
        "bleu_signature": evaluation.bleu_signature,
        "decoding": evaluation.decoding,
        "headline": list(HEADLINE),
        **extra,
    }
    write_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    predictions = evaluation.examples.drop(columns=["check"]).to_dict("records")
    write_atomic(out_dir / "predictions.jsonl", jsonl_text(predictions))
    if not evaluation.general_nll.empty:  # per model and general text, for `tunebook compare`'s paired CIs
        write_atomic(out_dir / GENERAL_FILE, jsonl_text(evaluation.general_nll.to_dict("records")))
