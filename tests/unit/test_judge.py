"""The judge: parsing its replies, the offline reference judge, both-order pairwise verdicts against scripted and
real OpenAI-compatible judges, the response cache, failure labels and failures.jsonl."""

from __future__ import annotations

import json
import math
import re

import httpx
import pandas as pd
import pytest

from tunebook import judge, llm
from tunebook.params import JudgeParams, ParamsError, load_params

REFERENCE = "json.dumps serializes obj to a JSON formatted str using the conversion table"
SOURCE = "json.loads parses a JSON document into a Python object. json.dumps serializes obj to a JSON formatted str."


def answers(model: str, predictions: list[str], stopped: list[bool] | None = None, **columns) -> pd.DataFrame:
    """An evaluated answers table, one row per prediction, every item asking about json.dumps."""
    n = len(predictions)
    return pd.DataFrame(
        {
            "model": model,
            "id": [f"q{i}" for i in range(n)],
            "question": [f"What does json.dumps do? ({i})" for i in range(n)],
            "reference": REFERENCE,
            "prediction": predictions,
            "stopped": stopped or [True] * n,
            **columns,
        }
    )


# --- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"score": 7, "reason": "fine"}', 7),
        ('Sure. {"score": "8", "reason": "uses {braces}"} Hope it helps.', 8),
        ('{"score": 10.0}', 10),
        ("Score: 6", 6),
        ("The rating is [[9]].", 9),
        ('{"reason": "no score here"} score = 3', 3),
    ],
)
def test_grades_parse_from_json_or_a_bare_score(reply, score):
    assert judge.parse_grade(reply) == (score, None)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("", "an empty reply"),
        ("\n\n  \n", "an empty reply"),
        ("a fine answer, I would say", 'no {"score": ...}'),
        ('{"score": 11}', "outside 1-10"),
        ('{"score": 0}', "outside 1-10"),
        ('{"score": 7.5}', "not an integer"),
        ('{"score": "seven"}', "not a number"),
        ('{"score": true}', "not a number"),
        ('{"score": [7]}', "not a number"),
    ],
)
def test_bad_grades_are_errors_not_scores(reply, error):
    score, why = judge.parse_grade(reply)
    assert score is None and error in why


def test_verdicts_and_labels_parse():
    assert judge.parse_verdict('{"winner": "A"}') == ("A", None)
    assert judge.parse_verdict('{"winner": "b"}') == ("B", None)
    assert judge.parse_verdict('{"winner": "Tie"}') == ("tie", None)
    assert judge.parse_verdict("My verdict: [[C]]") == ("tie", None)
    assert judge.parse_verdict("[[A]]") == ("A", None)
    assert judge.parse_verdict('{"winner": "both"}')[1] == "winner 'both' is not A, B or tie"
    assert judge.parse_verdict("A is better than B")[0] is None  # a bare letter in prose is not a verdict
    assert judge.parse_label('{"label": "Hallucinated", "reason": "made up"}') == ("hallucinated", None)
    assert judge.parse_label("label: format") == ("format", None)
    assert "not one of wrong, incomplete" in judge.parse_label('{"label": "bad"}')[1]


# --- the reference judge ---------------------------------------------------------------------------------


def test_reference_grades_are_1_plus_9_times_token_f1():
    table = answers("m", [REFERENCE, "json.dumps serializes", "completely unrelated words", ""])
    grades = judge.grade(table, JudgeParams(), progress=False)
    # "json.dumps serializes": precision 1, recall 2/10 -> F1 1/3 -> 1 + round(3.0) = 4
    assert grades["score"].tolist() == [10, 4, 1, 1]
    assert grades["error"].isna().all() and grades["requests"].sum() == 0
    assert list(grades.columns) == ["id", "model", "score", "error", "raw", "requests"]
    summary = judge.grade_summary(grades, fail_below=5).iloc[0]
    assert (summary["answers"], summary["scored"], summary["unparsable"], summary["failed"]) == (4, 4, 0, 3)
    assert summary["mean_score"] == 4.0


def test_reference_pairwise_prefers_f1_then_rouge_l_in_both_orders():
    a = answers("sft", [REFERENCE, "serializes obj to json", "nothing", "json.dumps serializes"])
    # Item 1: the same words, shuffled: equal F1, lower ROUGE-L. Item 3: the same answer on both sides.
    b = answers("base", ["a list", "json to obj serializes", "json str", "json.dumps serializes"])
    pairs = judge.pairwise(a, b, JudgeParams(), progress=False)
    assert pairs["final"].tolist() == ["a", "a", "b", "tie"]
    assert pairs["verdict_ab"].tolist() == pairs["verdict_ba"].tolist()  # position cannot sway rules
    assert pairs["consistent"].all() and judge.swap_consistency(pairs) == 1.0
    assert judge.outcomes(pairs) == {"wins": 2, "ties": 1, "losses": 1, "unparsable": 0}
    assert (pairs["model_a"].unique().tolist(), pairs["model_b"].unique().tolist()) == (["sft"], ["base"])


def test_reference_labels_follow_the_rules_and_failures_are_written_for_dpo(tmp_path):
    made_up = "json.loads parses a JSON document into a Python object"
    predictions = [
        REFERENCE,  # correct: not a failure
        "",  # empty -> format
        "serializes obj",  # right words, but never stopped -> format
        made_up,  # words in neither the reference nor (without it) a source -> hallucinated
        "json.dumps serializes",  # right, but a fifth of the reference -> incomplete
        "it is not to be used with str",  # grounded enough, mostly off -> wrong
    ]
    stopped = [True, True, False, True, True, True]
    table = answers("sft", predictions, stopped, chunk_id=[f"json.md-{i}" for i in range(6)])
    grades = judge.grade(table, JudgeParams(), progress=False)
    failures = judge.label_failures(table, grades, JudgeParams(), progress=False)
    assert failures["id"].tolist() == ["q1", "q2", "q3", "q4", "q5"]
    assert failures["label"].tolist() == ["format", "format", "hallucinated", "incomplete", "wrong"]
    assert failures["error"].isna().all() and (failures["score"] < 5).all()

    # The same made-up answer is only wrong when the source chunk it came from says it.
    grounded = judge.label_failures(table.assign(source_text=SOURCE), grades, JudgeParams(), progress=False).set_index(
        "id"
    )
    assert grounded.loc["q3", "label"] == "wrong"
    # A lower bar leaves fewer failures; graded 4, "json.dumps serializes" passes at 4.
    assert "q4" not in judge.label_failures(table, grades, JudgeParams(fail_below=4), progress=False)["id"].tolist()

    path = tmp_path / "evaluate" / "failures.jsonl"
    judge.write_failures(failures, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and not list(path.parent.glob(".*.tmp"))
    assert rows[3] == {
        "id": "q4",
        "model": "sft",
        "prompt": [{"role": "user", "content": "What does json.dumps do? (4)"}],
        "prediction": "json.dumps serializes",
        "reference": REFERENCE,
        "score": 4,
        "label": "incomplete",
        "error": None,
        "chunk_id": "json.md-4",
    }
    summary = judge.failure_summary(failures).set_index("model")
    expected = {"wrong": 1, "incomplete": 1, "hallucinated": 1, "format": 2, "unparsable": 0}
    assert summary.loc["sft"].to_dict() == expected


# --- LLM judges, scripted: position bias and the cache ---------------------------------------------------

SCRIPTED = {"backend": "openai", "model": "judge-model", "base_url": "http://127.0.0.1:1/v1", "max_retries": 0}


def completion(text: str) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    )


def test_a_judge_that_always_prefers_the_first_answer_gives_ties_and_0_consistency():
    sent = []
    always_a = httpx.MockTransport(lambda request: sent.append(request) or completion('{"winner": "A"}'))
    a = answers("sft", [REFERENCE, "json.dumps serializes", "nothing"])
    b = answers("base", ["nothing", "json str", REFERENCE])
    params = JudgeParams(**SCRIPTED)
    pairs = judge.pairwise(a, b, params, progress=False, transport=always_a)
    assert len(sent) == 6  # every pair, in both orders
    assert pairs["verdict_ab"].tolist() == ["a"] * 3 and pairs["verdict_ba"].tolist() == ["b"] * 3
    assert pairs["final"].tolist() == ["tie"] * 3 and not pairs["consistent"].any()
    assert judge.swap_consistency(pairs) == 0.0
    assert judge.outcomes(pairs) == {"wins": 0, "ties": 3, "losses": 0, "unparsable": 0}
    prompts = [json.loads(request.content)["messages"][0]["content"] for request in sent]
    shown = {re.search(r"Answer A: (.*)\n\nAnswer B: (.*)\n", prompt).groups() for prompt in prompts}
    pairs_ab = list(zip(a["prediction"], b["prediction"], strict=True))
    assert shown == {*pairs_ab, *((second, first) for first, second in pairs_ab)}  # each pair in both orders

    # The same judging again is served from the response cache: nothing is sent.
    cache = llm.ResponseCache()
    again = judge.pairwise(a, b, params, progress=False, cache=cache, transport=always_a)
    assert len(sent) == 6 and cache.sent == 0 and cache.hits == 6 and again["requests"].sum() == 0
    pd.testing.assert_frame_equal(again.drop(columns="requests"), pairs.drop(columns="requests"))


def test_a_judge_that_reads_the_answers_keeps_its_verdict_through_the_swap():
    def picks_the_reference(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][0]["content"]
        fields = dict(line.split(": ", 1) for line in prompt.splitlines())
        winner = "A" if fields["A"] == fields["R"] else "B" if fields["B"] == fields["R"] else "tie"
        return completion(f"[[{winner}]]")

    params = JudgeParams(**SCRIPTED, pairwise_prompt="R: {reference}\nA: {answer_a}\nB: {answer_b}")
    a = answers("sft", [REFERENCE, "nothing", "json str"])
    b = answers("base", ["nothing", REFERENCE, "json"])
    pairs = judge.pairwise(a, b, params, progress=False, transport=httpx.MockTransport(picks_the_reference))
    assert pairs["final"].tolist() == ["a", "b", "tie"] and pairs["consistent"].all()
    assert judge.outcomes(pairs) == {"wins": 1, "ties": 1, "losses": 1, "unparsable": 0}


def test_a_judge_endpoint_that_stays_down_stops_with_its_error():
    down = httpx.MockTransport(lambda request: httpx.Response(503, text="overloaded"))
    with pytest.raises(llm.Unavailable, match=r"'judge': .* failed after 1 tries .*HTTP 503"):
        judge.grade(answers("m", ["x", "y"]), JudgeParams(**SCRIPTED), progress=False, transport=down)


# --- LLM judges, real: the tiny model talks nonsense ---------------------------------------------------------


def test_garbage_from_a_real_server_is_counted_as_unparsable_and_not_scored(openai_server, tiny_model):
    params = JudgeParams(
        backend="openai", model=tiny_model, base_url=openai_server.base_url, max_new_tokens=16, concurrency=2
    )
    table = answers("sft", [REFERENCE, "json.dumps serializes", "nothing"])
    answered_before = openai_server.requests_answered()
    grades = judge.grade(table, params, progress=False)
    assert grades["score"].isna().all() and grades["error"].str.len().min() > 0
    assert grades["raw"].str.len().max() <= judge.RAW_CHARS and grades["requests"].tolist() == [1, 1, 1]
    summary = judge.grade_summary(grades, params.fail_below).iloc[0]
    assert (summary["scored"], summary["unparsable"], summary["failed"]) == (0, 3, 0)
    assert math.isnan(summary["mean_score"])
    assert judge.label_failures(table, grades, params, progress=False).empty  # never scored, so never failed

    pairs = judge.pairwise(table, answers("base", ["nothing", "x", REFERENCE]), params, progress=False)
    assert pairs["final"].isna().all() and pairs["consistent"].isna().all()
    assert math.isnan(judge.swap_consistency(pairs))
    assert judge.outcomes(pairs) == {"wins": 0, "ties": 0, "losses": 0, "unparsable": 3}

    failed = judge.label_failures(table, judge.grade(table, JudgeParams()), params, progress=False)
    assert len(failed) == 2 and failed["label"].isna().all() and failed["error"].notna().all()
    assert judge.failure_summary(failed).iloc[0]["unparsable"] == 2
    assert openai_server.requests_answered() - answered_before == 3 + 6 + 2

    # Scoring garbage must be asked for; the same requests then come from the cache.
    scored = judge.grade(table, params.model_copy(update={"score_unparsable": True}), progress=False)
    assert scored["score"].tolist() == [1, 1, 1] and scored["error"].notna().all()
    assert scored["requests"].sum() == 0 and openai_server.requests_answered() - answered_before == 11


def test_a_local_hf_judge_goes_through_the_pool_and_its_cache(tiny_model):
    params = JudgeParams(backend="hf", model=tiny_model, max_new_tokens=8, batch_size=4)
    table = answers("sft", [REFERENCE, "json.dumps serializes", "nothing", ""])
    grades = judge.grade(table, params, progress=False)
    assert grades["requests"].tolist() == [1, 1, 1, 1] and grades["score"].isna().all()
    again = judge.grade(table, params, progress=False)
    assert again["requests"].sum() == 0 and again["raw"].tolist() == grades["raw"].tolist()


# --- params ----------------------------------------------------------------------------------------------


def test_judge_params_are_checked_up_front(tmp_path):
    def load(judge_section: str):
        path = tmp_path / "p.yaml"
        path.write_text(f"ingest:\n  stdlib_modules: [json]\nevaluate:\n  judge:\n{judge_section}")
        return load_params(path)

    assert load("    backend: reference\n").evaluate.judge == JudgeParams()
    cases = {
        "    backend: openai\n    model: m\n    base_url: http://x/v1\n    api_key: sk-1\n": "'api_key' must not be in",
        "    backend: openai\n    model: m\n": "needs a base_url",
        "    backend: hf\n    model: tiny\n": "needs a model directory or an HF id",
        "    grade_prompt: 'Grade {answr}'\n": r"grade_prompt uses \{answr\}; its fields are rubric, question",
        "    fail_below: 0\n": "greater than or equal to 1",
        "    rubrik: be strict\n": r"evaluate.judge.rubrik: unknown key \(did you mean 'rubric'\?\)",
    }
    for section, message in cases.items():
        with pytest.raises(ParamsError, match=message) as err:
            load(section)
        assert "\n" not in str(err.value) and "p.yaml:" in str(err.value)
    model = JudgeParams(**SCRIPTED, api_key_env="JUDGE_KEY").chat_model()
    assert (model.backend, model.temperature, model.api_key_env) == ("openai", 0.0, "JUDGE_KEY")
