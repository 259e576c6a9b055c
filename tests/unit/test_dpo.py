"""DPO: pairs from both strategies, their dataset, the refusals, and training on the SFT adapter."""

import pandas as pd
import pytest

from tunebook import dpo, registry
from tunebook.params import DpoParams

QUESTION = "What does json.dumps return?"
REFERENCE = "A str holding the JSON document."


def candidates(rows: list[tuple[str, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": item, "question": QUESTION, "reference": REFERENCE, "prediction": text, "score": score}
            for item, text, score in rows
        ]
    )


def test_the_best_candidate_is_paired_with_a_worse_one_and_never_with_itself():
    table = candidates(
        [
            ("q1", "A str holding the JSON document.", 1.0),
            ("q1", "a list", 0.2),
            ("q1", "bytes", 0.1),
            ("q2", "same", 0.5),
            ("q2", "same", 0.5),  # all tied
            ("q3", "twice", 0.9),
            ("q3", "twice ", 0.1),  # a lower score, but the same text
            ("q4", "unscored", None),
            ("q4", "scored", 0.3),
        ]
    )
    result = dpo.best_vs_worse(table, DpoParams(), seed=0)
    assert [p["id"] for p in result.pairs] == ["sample_judge-q1"]
    (pair,) = result.pairs
    assert pair["chosen"] == [{"role": "assistant", "content": REFERENCE}]
    assert pair["rejected"][0]["content"] in ("a list", "bytes") and pair["prompt"][0]["content"] == QUESTION
    assert result.dropped == {"prompts with all candidates tied": 3, "unscored candidates": 1}
    # min_gap turns small gaps into ties
    gapped = dpo.best_vs_worse(table, DpoParams(min_gap=0.85), seed=0)
    assert gapped.pairs[0]["rejected"][0]["content"] == "bytes"


def test_a_revision_is_kept_only_when_it_scores_higher_than_the_original():
    revised = pd.DataFrame(
        [
            {
                "id": f"q{i}",
                "question": QUESTION,
                "reference": REFERENCE,
                "prediction": original,
                "revision": revision,
                "label": "wrong",
            }
            for i, (original, revision) in enumerate(
                [
                    ("a list", "A str holding the JSON document."),  # better: kept
                    ("A str holding the JSON document.", "a list"),  # worse: dropped
                    ("bytes", "bytes"),  # unchanged: dropped
                    ("bytes", ""),  # empty: dropped
                ]
            )
        ]
    )
    result = dpo.improved_revisions(revised, DpoParams(), progress=False)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in result.pairs] == [(REFERENCE, "a list")]
    assert result.dropped == {"empty revisions": 1, "revisions not better than the original": 2}


def test_a_critic_reply_without_json_is_the_revision_itself():
    assert dpo._revision('{"critique": "too vague", "revision": " A str. "}') == ("too vague", "A str.")
    assert dpo._revision("A str holding JSON.") == ("", "A str holding JSON.")


def row(item: str, question: str, answer: str) -> dict:
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": item, "messages": turns}


def test_pairs_come_from_train_prompts_never_test_ones():
    shared = "serialise obj to a JSON formatted str using this conversion table and the given options"
    test = [row("t1", "What does json.dumps do?", shared), row("t2", "What is heapq?", "A heap queue.")]
    train = [
        row("t2", "What is heapq?", "A heap queue."),  # the same item as a test one
        row("a", "What does json.dump do?", shared + " writing it to fp"),  # shares 13 words with t1
        row("b", "What does bisect.insort do?", "It inserts x in a, keeping it sorted."),
    ]
    prompts = dpo.train_prompts(train, test, DpoParams(prompts=0), seed=0)
    assert prompts["id"].tolist() == ["b"]


def test_pairs_are_decontaminated_with_the_configured_ngram_size(tmp_path):
    test = [row("t1", "What does heapq.heappush do?", "It pushes an item onto the heap, keeping the invariant.")]
    train = [
        row("a", "How is a heap kept?", "heappush keeps the invariant of the heap."),  # 2 words in a row at most
        row("b", "What keeps a heap valid?", "Pushing an item onto the heap keeps it valid."),  # 5 shared words
    ]
    assert dpo.train_prompts(train, test, DpoParams(prompts=0), seed=0)["id"].tolist() == ["a", "b"]
    params = DpoParams(prompts=0, decontamination_ngram=5)
    assert dpo.train_prompts(train, test, params, seed=0)["id"].tolist() == ["a"]
    card = dpo.write_pairs({"sample_judge": dpo.Pairs([pair(0)])}, tmp_path, "t", params, 0)
    assert card["decontaminated_against"] == "test split (ids and 5-gram overlap)"


def test_the_policy_answers_samples_and_revises_in_batches_of_batch_size(monkeypatch):
    from tunebook import models

    sizes = []

    def generate(loaded, conversations, max_new_tokens, batch_size, progress=True, temperature=0.0):
        sizes.append(batch_size)
        return [models.Generation("a list", True) for _ in conversations]

    monkeypatch.setattr(models, "generate", generate)
    policy = models.LoadedModel("sft", None, None)
    prompts = pd.DataFrame({"id": ["q1"], "question": [QUESTION], "reference": [REFERENCE], "chunk_id": ["c1"]})
    params = DpoParams(batch_size=3, candidates=2)
    dpo.sample_candidates(policy, prompts, params, seed=0, progress=False)
    failures = dpo.mine_failures(policy, prompts, params, {"c1": REFERENCE}, progress=False)
    dpo.critique_and_revise(policy, failures, params, progress=False)
    assert len(failures) == 1 and sizes == [3, 3, 3] and dpo.reevaluation_params(params).batch_size == 3


def pair(i: int) -> dict:
    return dpo._pair(f"q{i}", f"question {i}?", f"good answer {i}", f"bad {i}", 1.0, 0.0, "sample_judge")


def test_no_pairs_left_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(dpo.DpoError, match="no preference pairs remain after filtering"):
        dpo.write_pairs({"sample_judge": dpo.Pairs([])}, tmp_path, "t", DpoParams(), 0)


def test_the_card_counts_pairs_drops_and_length_bias(tmp_path):
    results = {
        "sample_judge": dpo.Pairs([pair(i) for i in range(20)], dpo.Counter({"ties": 3})),
        "self_critique": dpo.Pairs([], dpo.Counter({"revisions not better than the original": 5})),
    }
    card = dpo.write_pairs(results, tmp_path, "abc", DpoParams(val_fraction=0.2), 0, reward_accuracy=0.8)
    assert card["pairs"] == 20 and card["by_strategy"] == {"sample_judge": 20, "self_critique": 0}
    assert card["dropped"]["self_critique"] == {"revisions not better than the original": 5}
    assert card["splits"]["train"] + card["splits"].get("val", 0) == 20 and card["splits"].get("val", 0) > 0
    assert card["chosen_longer"] == 1.0 and card["mean_gap"] == 1.0 and card["reward_model_held_out_accuracy"] == 0.8
    assert len(dpo.read_pairs(tmp_path, "train")) == card["splits"]["train"]


def test_the_report_shows_the_resolved_dpo_and_reward_configs_beyond_the_librarys_defaults(tmp_path):
    results = {"sample_judge": dpo.Pairs([pair(i) for i in range(20)])}
    params = DpoParams(trainer={"beta": 0.3}, reward={"lora": {"r": 4}}, val_fraction=0.2)
    dpo.write_pairs(results, tmp_path, "abc", params, 0)
    table = dpo.resolved_configs(params, tmp_path, tmp_path / "out", seed=0)
    shown = {(row["config"], row["field"]): (row["value"], row["library default"]) for _, row in table.iterrows()}
    assert shown[("DPOConfig", "beta")] == ("0.3", "0.1")  # the params' own
    assert shown[("DPOConfig", "learning_rate")] == ("5e-06", "1e-06")  # tunebook's default
    assert shown[("DPOConfig", "eval_strategy")][0] == "epoch"  # pairs were held out to validate on
    assert shown[("LoraConfig (reward model)", "r")] == ("4", "8")
    assert shown[("LoraConfig (reward model)", "modules_to_save")] == ("['score']", "None")
    assert ("RewardConfig (reward model)", "learning_rate") not in shown  # 1e-4: TRL's own default too
    without_reward = dpo.resolved_configs(DpoParams(reward={"enabled": False}), tmp_path, tmp_path / "out", seed=0)
    assert set(without_reward["config"]) == {"DPOConfig"}


def test_dpo_trains_the_sft_adapter_against_a_verified_copy_of_it(sft_model, tmp_path):
    from tunebook import models

    trainer = {
        "learning_rate": 5e-3,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 4,
        "max_length": 64,
        "logging_steps": 1,
    }
    params = DpoParams(trainer=trainer, precision="fp32", val_fraction=0.2)
    spec = registry.resolve("sft", "t")
    template = dpo.template_hash(models.load_model("sft", spec["base_model"], spec["adapter"]))
    card = dpo.write_pairs({"sample_judge": dpo.Pairs([pair(i) for i in range(16)])}, tmp_path, template, params, 0)
    result = dpo.train_dpo(params, "t", tmp_path, tmp_path / "out", seed=0, progress=False)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    train = result.history[result.history["split"] == "train"]
    assert train["reward margin"].iloc[-1] > train["reward margin"].iloc[0]  # chosen pulls away from rejected
    name = dpo.register_model("t", result, params, card)
    entry = registry.entries()[name]
    assert name == "t:dpo" and entry["dataset_hash"] == card["pairs_hash"] and entry["reference"].startswith("sft (")
    assert registry.resolve("dpo", "t")["adapter"] == str(result.adapter_dir)


def test_dpo_refuses_another_chat_template_and_a_changed_reference(sft_model, tmp_path):
    params = DpoParams(trainer={"max_length": 64}, precision="fp32")
    dpo.write_pairs({"sample_judge": dpo.Pairs([pair(i) for i in range(4)])}, tmp_path, "another", params, 0)
    with pytest.raises(dpo.DpoError, match="chat template another, the SFT model has"):
        dpo.train_dpo(params, "t", tmp_path, tmp_path / "out", seed=0, progress=False)

    adapter = registry.resolve("sft", "t")["adapter"]
    with open(f"{adapter}/adapter_config.json", "a") as f:
        f.write(" ")  # anything that changes the adapter after it was registered
    with pytest.raises(dpo.DpoError, match="the reference model does not match t:sft"):
        dpo.train_dpo(params, "t", tmp_path, tmp_path / "out", seed=0, progress=False)
