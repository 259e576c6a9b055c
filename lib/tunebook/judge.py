"""Stage 03's judge: grades (1-10 against a rubric), pairwise verdicts in both orders, failure labels.

Judges:
- `hf` and `openai`: a chat model, asked for a JSON object through `tunebook.llm`: its requests share the
  response cache (a judging run repeated, or resumed after a crash, sends nothing twice), the rate limits
  and the retries of every other chat request.
- `reference`: a deterministic, rule-based stand-in for offline runs and CI. It is NOT an LLM and reads
  no meaning: it compares each answer with the reference answer through `tunebook.metrics` (grade =
  1 + round(9 * token F1); the better answer of a pair has the higher F1, then ROUGE-L) and labels
  failures by rules (see `_reference_label`).

LLM judges prefer the answer shown first, so every pair is judged in both orders, and a verdict that
flips with the order counts as a tie; the share of pairs that keep their verdict is the swap consistency.
A reply that cannot be parsed is kept (truncated), counted and shown, and scored only on request
(`score_unparsable`), never silently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from tunebook import llm, metrics, quality, stats
from tunebook.files import jsonl_text, write_atomic
from tunebook.llm import ResponseCache
from tunebook.params import EvaluateParams, JudgeParams

LABELS = ("wrong", "incomplete", "hallucinated", "format")
RAW_CHARS = 500  # of a judge's reply kept beside its verdict: enough to see why it did not parse
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Judged:
    value: Any  # the parsed score, verdict or label; None when the reply did not parse
    error: str | None  # why it did not parse
    raw: str  # the judge's reply, truncated
    requests: int  # requests sent for it: 0 when the cache (or the reference judge) answered


# --- parsing LLM replies --------------------------------------------------------------------------------


def first_object(reply: str) -> dict | None:
    """The first JSON object in the reply; a JSON value may contain braces, so each '{' is tried in turn."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", reply):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _value(reply: str, key: str) -> tuple[Any, str | None]:
    """The reply's value for key: from its first JSON object, else a bare `key: value` or `[[value]]`."""
    if not reply.strip():
        return None, "an empty reply"
    found = first_object(reply)
    if found is not None and key in found:
        return found[key], None
    bare = re.search(rf"\b{key}\"?\s*[:=]\s*\"?([\w.+-]+)", reply, re.IGNORECASE) or re.search(
        r"\[\[\s*([\w.+-]+)\s*\]\]", reply
    )
    if bare:
        return bare.group(1), None
    return None, f'no {{"{key}": ...}} in the reply'


def parse_grade(reply: str) -> tuple[int | None, str | None]:
    """The score (an integer 1-10) in a judge's reply, or (None, why it is not one)."""
    value, error = _value(reply, "score")
    if error:
        return None, error
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number):
        return None, f"score {value!r} is not a number"
    if not number.is_integer():
        return None, f"score {value!r} is not an integer"
    if not 1 <= number <= 10:
        return None, f"score {value!r} is outside 1-10"
    return int(number), None


_WINNERS = {"a": "A", "b": "B", "tie": "tie", "c": "tie"}  # [[C]] is MT-bench's tie


def parse_verdict(reply: str) -> tuple[str | None, str | None]:
    """The winner ("A", "B" or "tie", as the judge saw the answers) in a reply, or (None, why not)."""
    value, error = _value(reply, "winner")
    if error:
        return None, error
    winner = _WINNERS.get(str(value).strip().lower())
    return (winner, None) if winner else (None, f"winner {value!r} is not A, B or tie")


def parse_label(reply: str) -> tuple[str | None, str | None]:
    """The failure label (one of LABELS) in a reply, or (None, why not)."""
    value, error = _value(reply, "label")
    if error:
        return None, error
    label = str(value).strip().lower()
    return (label, None) if label in LABELS else (None, f"label {value!r} is not one of {', '.join(LABELS)}")


# --- the reference judge: rules over tunebook.metrics, for offline runs and CI --------------------------


def _reference_grade(task: dict) -> Judged:
    f1 = metrics.token_f1(task["answer"], [task["reference"]])
    return Judged(1 + round(9 * f1), None, f"token F1 {f1:.3f}", 0)


def _reference_verdict(task: dict) -> Judged:
    reference = [task["reference"]]
    scores = {
        side: (metrics.token_f1(task[f"answer_{side}"], reference), metrics.rouge_l(task[f"answer_{side}"], reference))
        for side in ("a", "b")
    }
    winner = "tie"
    for a, b in zip(scores["a"], scores["b"], strict=True):
        if abs(a - b) > TIE_TOLERANCE:
            winner = "A" if a > b else "B"
            break
    (f1_a, rouge_a), (f1_b, rouge_b) = scores["a"], scores["b"]
    return Judged(winner, None, f"F1 {f1_a:.3f} vs {f1_b:.3f}, ROUGE-L {rouge_a:.3f} vs {rouge_b:.3f}", 0)


def _reference_label(task: dict) -> Judged:
    """format: empty or never stopped; hallucinated: most content words are in neither the reference nor the
    source; incomplete: what it says is mostly in the reference (precision >= 0.5) but it misses most of it
    (recall < 0.5); wrong: anything else."""
    answer = task["answer"]
    if not answer.strip():
        return Judged("format", None, "an empty answer", 0)
    if not task["stopped"]:
        return Judged("format", None, "no end of turn within max_new_tokens", 0)
    grounding = quality.grounding_score(answer, [task["reference"], task["source"] or ""])
    if grounding < 0.5:
        return Judged("hallucinated", None, f"{grounding:.0%} of its content words are in the reference or source", 0)
    precision, recall = metrics.token_precision_recall(answer, task["reference"])
    label = "incomplete" if precision >= 0.5 and recall < 0.5 else "wrong"
    return Judged(label, None, f"token precision {precision:.3f}, recall {recall:.3f}", 0)


# --- asking a judge ---------------------------------------------------------------------------------------

_KINDS: dict[str, tuple[Callable[[str], tuple[Any, str | None]], Callable[[dict], Judged]]] = {
    "grade": (parse_grade, _reference_grade),
    "pairwise": (parse_verdict, _reference_verdict),
    "failure": (parse_label, _reference_label),
}


def _judge(
    kind: str,
    tasks: list[dict],
    params: JudgeParams,
    progress: bool,
    cache: ResponseCache | None,
    transport: httpx.AsyncBaseTransport | None,
) -> list[Judged]:
    parse, reference = _KINDS[kind]
    if params.backend == "reference":
        return [reference(task) for task in tasks]
    template = getattr(params, f"{kind}_prompt")
    prompts = [
        template.format(rubric=params.rubric, **{k: "(not given)" if v is None else v for k, v in task.items()})
        for task in tasks
    ]
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    answers = llm.chat_many(
        params.chat_model(), llm.Limits.of(params), conversations, f"judge {kind}", progress, cache, transport
    )
    judged = []
    for answer in answers:
        value, error = parse(answer.reply.text) if answer.reply else (None, answer.error)
        judged.append(Judged(value, error, answer.reply.text[:RAW_CHARS] if answer.reply else "", answer.requests))
    return judged


def _text(value: Any) -> str | None:
    """An optional text column's value: None when the column is missing or the cell is empty."""
    return value if isinstance(value, str) and value.strip() else None


# --- single-answer grading ------------------------------------------------------------------------------


def grade(
    answers: pd.DataFrame,
    params: JudgeParams,
    *,
    progress: bool = True,
    cache: ResponseCache | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pd.DataFrame:
    """One grade per answer: id, model, score (1-10; missing when unparsable), error, raw, requests.

    answers has columns model, id, question, reference, prediction. transport replaces the openai judge's
    HTTP transport (tests script replies with httpx.MockTransport).
    """
    rows = answers.to_dict("records")
    tasks = [{"question": r["question"], "reference": r["reference"], "answer": r["prediction"]} for r in rows]
    judged = _judge("grade", tasks, params, progress, cache, transport)
    unparsed = 1 if params.score_unparsable else None  # scored on request: as the lowest grade
    return pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "model": [r["model"] for r in rows],
            "score": pd.array([unparsed if j.value is None else j.value for j in judged], dtype="Int64"),
            "error": [j.error for j in judged],
            "raw": [j.raw for j in judged],
            "requests": [j.requests for j in judged],
        }
    )


def grade_summary(grades: pd.DataFrame, fail_below: float) -> pd.DataFrame:
    """Per model: answers, how many were scored and unparsable, the mean score and the failures."""
    table = grades.assign(
        scored=grades["error"].isna(),
        unparsable=grades["error"].notna(),
        failed=grades["score"].lt(fail_below).fillna(False).astype(bool),
    )
    summary = table.groupby("model", sort=False).agg(
        answers=("id", "size"),
        scored=("scored", "sum"),
        unparsable=("unparsable", "sum"),
        mean_score=("score", "mean"),
        failed=("failed", "sum"),
    )
    return summary.reset_index().astype({"mean_score": float}).round({"mean_score": 2})


# --- pairwise comparison ----------------------------------------------------------------------------------


def pairwise(
    answers_a: pd.DataFrame,
    answers_b: pd.DataFrame,
    params: JudgeParams,
    *,
    progress: bool = True,
    cache: ResponseCache | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pd.DataFrame:
    """Each item both models answered, judged with a's answer first (ab) and with b's first (ba).

    verdict_ab and verdict_ba are un-swapped: "a", "b" or "tie" name the model, whichever was shown
    first. consistent: both verdicts agree; final: that verdict, or "tie" when they disagree. An
    unparsable verdict leaves consistent and final missing (or reads as a tie with score_unparsable).
    """
    both = answers_a.merge(answers_b, on="id", suffixes=("_a", "_b"), validate="one_to_one")
    if both.empty:
        raise ValueError("pairwise: the two answer tables share no item id")
    rows = both.to_dict("records")
    shown = [_shown(row, swapped=False) for row in rows] + [_shown(row, swapped=True) for row in rows]
    judged = _judge("pairwise", shown, params, progress, cache, transport)
    ab, ba = judged[: len(rows)], judged[len(rows) :]
    table = []
    for row, first, second in zip(rows, ab, ba, strict=True):
        verdict_ab, verdict_ba = _side(first.value, False, params), _side(second.value, True, params)
        parsed = verdict_ab is not None and verdict_ba is not None
        consistent = verdict_ab == verdict_ba if parsed else None
        table.append(
            {
                "id": row["id"],
                "model_a": row["model_a"],
                "model_b": row["model_b"],
                "verdict_ab": verdict_ab,
                "verdict_ba": verdict_ba,
                "final": (verdict_ab if consistent else "tie") if parsed else None,
                "consistent": consistent,
                "error_ab": first.error,
                "error_ba": second.error,
                "raw_ab": first.raw,
                "raw_ba": second.raw,
                "requests": first.requests + second.requests,
            }
        )
    frame = pd.DataFrame(table)
    return frame.astype({"consistent": "boolean"})


def _shown(row: dict, swapped: bool) -> dict:
    first, second = ("b", "a") if swapped else ("a", "b")
    return {
        "question": row["question_a"],
        "reference": row["reference_a"],
        "answer_a": row[f"prediction_{first}"],
        "answer_b": row[f"prediction_{second}"],
    }


def _side(winner: str | None, swapped: bool, params: JudgeParams) -> str | None:
    """The judge's "A"/"B" (as it saw the answers) as the model it means: "a" or "b"."""
    if winner is None:
        return "tie" if params.score_unparsable else None
    if winner == "tie":
        return "tie"
    return {"A": "b", "B": "a"}[winner] if swapped else winner.lower()


def swap_consistency(pairs: pd.DataFrame) -> float:
    """The share of pairs whose two verdicts agree once un-swapped, among those with both parsed (NaN: none)."""
    judged = pairs["consistent"].dropna()
    return float(judged.mean()) if len(judged) else math.nan


def outcomes(pairs: pd.DataFrame) -> dict[str, int]:
    """Model a's wins, ties and losses against model b, and the pairs left unjudged (unparsable)."""
    final = pairs["final"]
    return {
        "wins": int((final == "a").sum()),
        "ties": int((final == "tie").sum()),
        "losses": int((final == "b").sum()),
        "unparsable": int(final.isna().sum()),
    }


# --- failure analysis -----------------------------------------------------------------------------------


def label_failures(
    answers: pd.DataFrame,
    grades: pd.DataFrame,
    params: JudgeParams,
    *,
    progress: bool = True,
    cache: ResponseCache | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pd.DataFrame:
    """Each answer graded below params.fail_below, labelled wrong, incomplete, hallucinated or format.

    Columns: id, model, score, label (missing when unparsable), error, raw, question, reference,
    prediction, chunk_id, requests. Unparsable grades are not failures: they were never scored.
    answers may carry chunk_id and source_text (the chunk the item came from), which the judge is shown.
    """
    scores = grades[["model", "id", "score"]]
    failed = answers.merge(scores, on=["model", "id"], validate="one_to_one")
    failed = failed[failed["score"].lt(params.fail_below).fillna(False).astype(bool)]
    rows = failed.to_dict("records")
    tasks = [
        {
            "question": r["question"],
            "reference": r["reference"],
            "answer": r["prediction"],
            "source": _text(r.get("source_text")),
            "stopped": bool(r["stopped"]),
        }
        for r in rows
    ]
    judged = _judge("failure", tasks, params, progress, cache, transport)
    return pd.DataFrame(
        [
            {
                "id": r["id"],
                "model": r["model"],
                "score": int(r["score"]),
                "label": j.value,
                "error": j.error,
                "raw": j.raw,
                "question": r["question"],
                "reference": r["reference"],
                "prediction": r["prediction"],
                "chunk_id": _text(r.get("chunk_id")),
                "requests": j.requests,
            }
            for r, j in zip(rows, judged, strict=True)
        ],
        columns=[
            "id",
            "model",
            "score",
            "label",
            "error",
            "raw",
            "question",
            "reference",
            "prediction",
            "chunk_id",
            "requests",
        ],
    )


def failure_summary(failures: pd.DataFrame) -> pd.DataFrame:
    """Per model, how many failures got each label, and how many labels did not parse."""
    labels = failures["label"].fillna("unparsable")
    table = pd.crosstab(failures["model"], labels).reindex(columns=[*LABELS, "unparsable"], fill_value=0)
    return table.rename_axis(columns=None).reset_index()


def write_failures(failures: pd.DataFrame, path: Path) -> None:
    """failures.jsonl: per failed answer its prompt (as messages), prediction, reference and label, written
    atomically. The evaluate stage writes its test answers' failures here for people to read; no stage trains
    on them (DPO's self-critique labels failures of its own on train prompts: test failures must never train)."""
    rows = [
        {
            "id": r["id"],
            "model": r["model"],
            "prompt": [{"role": "user", "content": r["question"]}],
            "prediction": r["prediction"],
            "reference": r["reference"],
            "score": int(r["score"]),
            "label": _text(r["label"]),
            "error": _text(r["error"]),
            "chunk_id": _text(r["chunk_id"]),
        }
        for r in failures.to_dict("records")
    ]
    write_atomic(path, jsonl_text(rows))


# --- judging an evaluation's systems ------------------------------------------------------------------------


@dataclass
class Judgement:
    grades: pd.DataFrame  # one per answer
    pairs: pd.DataFrame  # each system vs the baseline, every item judged in both orders
    failures: pd.DataFrame  # answers graded below judge.fail_below, labelled
    summary: pd.DataFrame  # per system vs the baseline: wins, ties, losses, swap consistency, sign test
    grade_summary: pd.DataFrame  # per system: answers scored, unparsable, mean grade, failures
    failure_summary: pd.DataFrame  # per system: failures by label


def judge_answers(
    examples: pd.DataFrame, params: EvaluateParams, chunk_texts: dict[str, str], progress: bool = True
) -> Judgement:
    """Every answer of an evaluation (`evaluate.Evaluation.examples`) graded, each system judged against the
    baseline in both orders, and the failures labelled."""
    answers = examples.assign(model=examples["system"], source_text=examples["chunk_id"].map(chunk_texts))
    grades = grade(answers, params.judge, progress=progress)
    baseline = answers[answers["model"] == params.baseline]
    pairs, rows = [], []
    for system in answers["model"].unique():
        if system == params.baseline:
            continue
        pair = pairwise(answers[answers["model"] == system], baseline, params.judge, progress=progress)
        counts = outcomes(pair)
        rows.append(
            {
                "system": system,
                "baseline": params.baseline,
                **counts,
                "swap_consistency": round(swap_consistency(pair) * 100, 1),
                "sign_test_p": stats.sign_test(counts["wins"], counts["losses"]),
            }
        )
        pairs.append(pair)
    failures = label_failures(answers, grades, params.judge, progress=progress)
    return Judgement(
        grades,
        pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(),
        failures,
        pd.DataFrame(rows),
        grade_summary(grades, params.judge.fail_below),
        failure_summary(failures),
    )


def with_grades(examples: pd.DataFrame, grades: pd.DataFrame) -> pd.DataFrame:
    scored = grades.rename(columns={"model": "system", "score": "judge_score"})[["system", "id", "judge_score"]]
    return examples.merge(scored, on=["system", "id"], how="left", validate="one_to_one")


def failure_examples(failures: pd.DataFrame, per_label: int = 2) -> pd.DataFrame:
    """A few failures of each label, the place to start reading."""
    columns = ["model", "label", "question", "reference", "prediction"]
    labelled = failures.dropna(subset=["label"])
    return labelled.groupby("label", group_keys=False).head(per_label)[columns].sort_values(["label", "model"])


# --- a trained stage's re-evaluation ---------------------------------------------------------------------------


@dataclass
class Reevaluation:
    evaluation: Any  # evaluate.Evaluation: every answer, scored and checked, and the summary per system
    judgement: Judgement
    comparison: pd.DataFrame  # every system vs the baseline, each score, check and the judge's grade, with CIs
    params: EvaluateParams


def reevaluate(run_id: str, params: EvaluateParams, out_dir: Path, seed: int, progress: bool = True) -> Reevaluation:
    """How DPO and RL compare their model with the others of the chain: the evaluate module on the test split
    (greedy, params' conditions), the judge's grades, verdicts and failure labels, and every comparison with its
    paired-bootstrap CI; written to out_dir as the evaluate stage writes its own (metrics.json, predictions.jsonl,
    failures.jsonl)."""
    from tunebook import evaluate
    from tunebook.params import ChromaParams

    items = evaluate.inputs(run_id, params, ChromaParams())
    evaluation = evaluate.evaluate_models(items.items, params, run_id, None, items.train_texts, progress)
    judgement = judge_answers(evaluation.examples, params, items.chunk_texts, progress)
    comparison = evaluate.compare(with_grades(evaluation.examples, judgement.grades), params, seed)
    evaluate.write_results(evaluation, comparison, judgement.summary, out_dir, {"model": params.baseline})
    write_failures(judgement.failures, out_dir / "failures.jsonl")
    return Reevaluation(evaluation, judgement, comparison, params)
