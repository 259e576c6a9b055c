"""RL: the reward functions (and the count of what they could not score), params, GRPO on a registered adapter
through tunebook's batched generation, and the reward-hacking guard."""

import json

import pandas as pd
import pytest

from tunebook import models, paths, registry, rl
from tunebook.params import CheckParams, Params, RlParams, RlRewardParams, load_params

SIGNATURE = CheckParams(name="signature", kind="regex", pattern=r"^[\w.]+\(.*\)$", applies_to="signature")


def call(reward: rl.Reward, questions: list[str], texts: list[str], ids=None, references=None) -> list:
    logged = {}
    values = reward(
        prompts=[[{"role": "user", "content": q}] for q in questions],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        completion_ids=ids or [[1, 2] for _ in texts],
        reference=references or ["" for _ in texts],
        log_metric=logged.__setitem__,
        trainer_state=None,
    )
    return values, logged


def make(spec: RlRewardParams, params: RlParams | None = None, end_ids=(2,)) -> rl.Reward:
    params = params or RlParams(rewards=[spec])
    return rl.reward_functions(params, "t", rl.RolloutLog(), list(end_ids))[0]


def test_a_reward_that_raises_scores_none_for_the_batch_and_is_counted_with_the_reason():
    def broken(questions, texts, ids, references):
        raise RuntimeError("the scorer is down")

    reward = rl.Reward(RlRewardParams(name="judge", kind="judge"), broken, rl.RolloutLog())
    values, logged = call(reward, ["q1", "q2", "q3"], ["a", "b", "c"])
    assert values == [None, None, None]
    assert reward.tally.unscored == {"raised RuntimeError: the scorer is down": 3} and reward.tally.scored == 0
    assert logged == {"rewards/judge/unscored": 3}  # logged per step, beside TRL's mean and std
    row = rl.reward_table([reward]).iloc[0]
    assert (row["scored"], row["unscored (None)"]) == (0, 3)
    assert row["why unscored"] == "3x raised RuntimeError: the scorer is down"


def test_a_python_check_scores_pass_fail_and_none_for_code_that_did_not_run_to_its_end():
    check = CheckParams(name="sum", kind="python", expected=6, timeout_s=2)
    reward = make(RlRewardParams(name="sum", kind="check", check=check))
    answers = [
        "```python\nprint(sum(range(4)))\n```",  # passes
        "print(sum(range(5)))",  # runs, prints the wrong value: 0
        "print(1 / 0)",  # crashes: None
        "while True:\n    pass",  # never ends: None
        "open('/etc/tunebook-escape', 'w').write('x')",  # writes outside its directory: stopped, None
    ]
    values, logged = call(reward, ["Sum 0..3?"] * 5, answers)
    assert values == [1.0, 0.0, None, None, None]
    assert sum(reward.tally.unscored.values()) == 3 and logged == {"rewards/sum/unscored": 3}
    assert any(reason.startswith("timed out") for reason in reward.tally.unscored)
    assert any(reason.startswith("exited with code") for reason in reward.tally.unscored)


def test_a_check_that_does_not_apply_is_none_and_counted_apart_from_failures():
    reward = make(RlRewardParams(name="signature", kind="check", check=SIGNATURE))
    questions = ["What is the signature of json.dumps?", "What does json.dumps do?", "What is the signature of x?"]
    values, logged = call(reward, questions, ["json.dumps(obj)", "json.dumps(obj)", "It returns a str."])
    assert values == [1.0, None, 0.0]
    assert (reward.tally.scored, reward.tally.not_applicable, sum(reward.tally.unscored.values())) == (2, 1, 0)
    assert logged == {"rewards/signature/unscored": 0}


def test_metrics_penalties_and_the_judge_score_each_completion():
    texts = ["a str holding the JSON document", "one two three four five six"]
    refs = ["A str holding the JSON document.", "A str holding the JSON document."]
    rouge, _ = call(make(RlRewardParams(name="r", kind="rouge_l")), ["q", "q"], texts, references=refs)
    assert rouge[0] == pytest.approx(1.0) and rouge[1] == 0.0
    length, _ = call(make(RlRewardParams(name="l", kind="length", max_words=4)), ["q", "q"], texts)
    assert length == [-0.5, -0.5]  # 2 words over 4: half of max_words
    # format: ended its turn (the last id is an end id) and matches the pattern
    shaped = make(RlRewardParams(name="f", kind="format", pattern="^a "), end_ids=[9])
    fmt, _ = call(shaped, ["q", "q", "q"], [texts[0], texts[0], texts[1]], ids=[[5, 9], [5, 6], [5, 9]])
    assert fmt == [0.0, -1.0, -1.0]
    graded, _ = call(make(RlRewardParams(name="j", kind="judge")), ["q", "q"], texts, references=refs)
    assert graded[0] == pytest.approx(1.0) and 0 <= graded[1] < 0.2  # the reference judge's grade, 1-10 -> 0-1


def test_rewards_default_to_every_evaluate_check_and_name_checks_by_name(tmp_path):
    checks = [SIGNATURE.model_dump()]
    params = Params.model_validate({"evaluate": {"checks": checks}})
    assert [(r.name, r.kind) for r in params.rl.rewards] == [
        ("signature", "check"),
        ("rouge_l", "rouge_l"),
        ("format", "format"),
    ]
    assert params.rl.rewards[0].check == SIGNATURE  # the check itself, for the stage's notebook
    assert params.stage_parameters("rl")["rewards"][0]["check"]["pattern"] == SIGNATURE.pattern
    path = tmp_path / "p.yaml"
    path.write_text("rl:\n  rewards:\n    - {name: x, kind: check, check: nope}\n")
    with pytest.raises(Exception, match=r"rl.rewards 'x': no evaluate check named 'nope' \(none\)"):
        load_params(path)


@pytest.mark.parametrize(
    ("rl_section", "message"),
    [
        ({"trainer": {"num_generations": 4, "per_device_train_batch_size": 6}}, "must be a multiple of"),
        ({"trainer": {"reward_weights": [1.0]}}, "set the weight of each rl.rewards entry instead"),
        ({"rewards": [{"name": "a", "kind": "f1"}, {"name": "a", "kind": "rouge_l"}]}, "reward names must be unique"),
        ({"rewards": [{"name": "a", "kind": "f1", "check": "x"}]}, "`check` goes with kind check"),
        ({"rewards": [{"name": "a", "kind": "format", "pattern": "("}]}, "not a valid regex"),
    ],
)
def test_bad_rl_params_are_refused_in_one_line(tmp_path, rl_section, message):
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"rl": rl_section}))
    with pytest.raises(Exception, match=message) as raised:
        load_params(path)
    assert "\n" not in str(raised.value) and "rl" in str(raised.value)


def test_vllm_generation_is_a_trainer_switch():
    params = RlParams(trainer={"use_vllm": True, "vllm_mode": "colocate"})
    assert params.trainer["use_vllm"] is True and params.trainer["beta"] == 0.04


def write_splits(run_id: str, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> None:
    directory = paths.stage_dir(run_id, "generate")
    for split, rows in (("train", train), ("val", []), ("test", test)):
        lines = [
            json.dumps(
                {
                    "id": f"{split}-{i}",
                    "split": split,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                }
            )
            for i, (q, a) in enumerate(rows)
        ]
        (directory / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))


def test_train_prompts_match_the_question_filter_and_leave_test_items_out():
    shared = "serialise obj to a JSON formatted str using this conversion table and the given options"
    train = [
        ("What is the signature of f?", "f(x)"),
        ("What does g do?", "It does g."),
        ("What is the signature?", shared),
    ]
    test = [("What does json.dumps do?", shared)]
    write_splits("t", train, test)
    params = RlParams(prompts=0, questions_matching="signature")
    with pytest.raises(rl.RlError, match="1 train prompts to roll out"):
        rl.train_prompts("t", params, seed=0)  # the second signature question shares 13 words with a test item
    write_splits("t", [*train, ("What is the signature of h?", "h(y)")], test)
    assert rl.train_prompts("t", params, seed=0)["question"].tolist() == [train[0][0], "What is the signature of h?"]


def test_grpo_continues_a_registered_adapter_through_the_shared_batched_generation(sft_model, monkeypatch):
    write_splits(
        "t",
        [(f"What is the signature of f{i}?", f"f{i}(x, y)") for i in range(12)],
        [(f"What is the signature of g{i}?", f"g{i}(a)") for i in range(4)],
    )
    sizes = []
    generate_tokens = models.generate_tokens

    def recorded(model, tokenizer, prompt_ids, max_new_tokens, batch_size, *args, **kwargs):
        sizes.append((len(prompt_ids), batch_size))
        return generate_tokens(model, tokenizer, prompt_ids, max_new_tokens, batch_size, *args, **kwargs)

    monkeypatch.setattr(models, "generate_tokens", recorded)
    trainer = {"num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 12, "max_steps": 3}
    params = RlParams(
        model="sft",
        rewards=[
            RlRewardParams(name="signature", kind="check", check=SIGNATURE),
            RlRewardParams(name="format", kind="format", weight=0.5),
        ],
        batch_size=3,
        precision="fp32",
        trainer={**trainer, "learning_rate": 1e-3},
    )
    prompts = rl.train_prompts("t", params, seed=0)
    result = rl.train_rl(params, "t", prompts, paths.stage_dir("t", "rl"), seed=0, progress=False)
    # every step's 8 completions (2 prompts x 4) came from models.generate_tokens, 3 a forward pass
    assert sizes == [(8, 3)] * 3
    history = result.history
    assert history["step"].tolist() == [1, 2, 3]
    for column in ("rewards/signature/mean", "rewards/signature/std", "rewards/signature/unscored", "kl"):
        assert column in history and history[column].notna().all()
    assert {"completions/mean_length", "completions/clipped_ratio", "frac_reward_zero_std"} <= set(history)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    table = rl.reward_table(result.rewards).set_index("reward")
    assert table.loc["signature", "scored"] == table.loc["format", "scored"] == 24  # 3 steps x 8, all applicable
    shown = rl.examples(result.rollouts, 2)
    assert shown["when"].str.startswith(("first", "last")).all() and len(shown) == 4
    assert {"question", "completion", "signature", "format"} <= set(shown)
    name = rl.register_model("t", result, params, prompts)
    assert name == "t:rl" and registry.resolve("rl", "t")["adapter"] == str(result.adapter_dir)
    assert registry.entries()[name]["reference"].startswith("sft (")
    evaluation = rl.reevaluation_params(params, "t")
    assert evaluation.models == ["base", "sft", "rl"] and evaluation.baseline == "sft"
    assert [c.name for c in evaluation.checks] == ["signature"]
    logged = json.loads((paths.stage_dir("t", "rl") / "log_history.json").read_text())
    assert len(logged) == 4  # 3 steps and the final summary


def comparison(delta: float, metric: str = "check_signature") -> pd.DataFrame:
    row = {"system": "rl", "baseline": "dpo", "metric": metric, "delta": delta, "ci_low": delta - 5}
    return pd.DataFrame([{**row, "ci_high": delta + 5, "significant": abs(delta) > 5}])


def test_the_guard_flags_a_train_reward_that_rises_while_its_held_out_pass_rate_falls():
    params = RlParams(rewards=[RlRewardParams(name="sig", kind="check", check=SIGNATURE)])
    rising = pd.DataFrame({"step": range(1, 9), "reward": range(8), "rewards/sig/mean": [0.1 * i for i in range(8)]})
    guard = rl.hacking_guard(rising, comparison(-12.0), params)
    assert (
        guard.iloc[0]["flag"] == "reward rose, held-out fell" and guard.iloc[0]["held-out measure"] == "check_signature"
    )
    assert rl.hacking_guard(rising, comparison(+12.0), params).iloc[0]["flag"] == ""
    assert rl.verdict(comparison(-12.0), params) == (
        "RL did not help: no score or check pass rate is significantly above dpo's; significantly below on "
        "check_signature."
    )
    assert rl.verdict(comparison(+12.0), params) == "RL helped: significantly above dpo on check_signature."
    assert rl.mean_reward(rising, "first") == 0.5 and rl.mean_reward(rising, "last") == 6.5


def test_check_pass_rates_compare_rl_with_sft_and_with_the_model_it_started_from():
    from types import SimpleNamespace

    from tunebook import evaluate
    from tunebook.params import EvaluateParams

    passes = {"base": [0] * 8, "sft": [1, 0, 0, 0, 1, 0, 0, 0], "dpo": [1, 1, 0, 0, 1, 0, 0, 0], "rl": [1] * 8}
    rows = [
        {"system": m, "model": m, "condition": "closed_book", "id": f"q{i}", "exact_match": 0.0, "f1": 0.5}
        | {"rouge_l": 0.5, "check_signature": float(p), "prediction": "x(", "reference": "x()", "stopped": True}
        for m, passed in passes.items()
        for i, p in enumerate(passed)
    ]
    examples = pd.DataFrame(rows)
    params = RlParams(rewards=[RlRewardParams(name="signature", kind="check", check=SIGNATURE)])
    evaluated = EvaluateParams(models=list(passes), baseline="dpo", conditions=["closed_book"], checks=[SIGNATURE])
    grades = examples[["system", "id"]].rename(columns={"system": "model"}).assign(score=5)
    summary, _ = evaluate.summarize(examples)
    reevaluation = SimpleNamespace(
        evaluation=SimpleNamespace(examples=examples, summary=summary),
        judgement=SimpleNamespace(grades=grades),
        comparison=evaluate.compare(examples, evaluated, seed=0),
        params=evaluated,
    )
    table = rl.check_pass_rates(reevaluation, params, seed=0).iloc[0]
    assert (table["check"], table["sft pass %"], table["dpo pass %"], table["rl pass %"]) == (
        "signature",
        25,
        37.5,
        100,
    )
    assert table["rl vs sft"].startswith("+75.0 [") and table["rl vs dpo"].startswith("+62.5 [")
