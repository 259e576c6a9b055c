"""The reward model: a prompt-level split, a real TRL RewardTrainer run on the tiny model, and scoring with the
saved adapter."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import random
import subprocess
import sys

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from tunebook.params import RewardParams
from tunebook.reward import RewardResult, split_pairs, train_reward_model

MODULES = ("json", "pathlib", "collections", "functools", "itertools", "textwrap", "os.path", "string", "shutil")
REFUSALS = ("I don't know.", "Sorry, I cannot answer that.")
# Tuned on the tiny model: held-out accuracy 0.96-1.0 over seeds 0-4, in about 36 steps.
PARAMS = RewardParams(
    trainer={"learning_rate": 5e-3, "num_train_epochs": 4, "per_device_train_batch_size": 8, "max_length": 64},
    held_out_fraction=0.3,
)
SEED = 0


def stdlib_facts(tokenizer, count: int) -> list[tuple[str, str]]:
    """(question, answer) pairs from stdlib docstrings, each short enough that no pair is dropped for length."""
    facts = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            words = (doc or "").split("\n\n")[0].split(". ")[0].rstrip(".").split()[:6]
            if len(words) < 4:
                continue
            question, answer = f"What does {name}.{attr} do?", " ".join(words) + "."
            chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]) <= 64:
                facts.append((question, answer))
    assert len(facts) >= count
    return facts[:count]


def preference_pairs(facts: list[tuple[str, str]]) -> list[dict]:
    """A preference the tiny model can learn: a true answer beats a refusal. Two pairs a prompt, with the
    extra keys the DPO stage writes."""
    return [
        {
            "id": f"{question}#{i}",
            "strategy": "synthetic",
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": refusal}],
        }
        for question, answer in facts
        for i, refusal in enumerate(REFUSALS)
    ]


@pytest.fixture(scope="module")
def pairs(tiny_model: str) -> list[dict]:
    return preference_pairs(stdlib_facts(AutoTokenizer.from_pretrained(tiny_model), 48))


@pytest.fixture(scope="module")
def trained(pairs, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> RewardResult:
    return train_reward_model(
        pairs, tiny_model, tiny_model, PARAMS, tmp_path_factory.mktemp("reward"), SEED, progress=False
    )


def test_split_keeps_each_prompts_pairs_together_whatever_the_order():
    pairs = [
        {"prompt": [{"role": "user", "content": f"question {q}"}], "chosen": [], "rejected": [], "n": n}
        for q in range(40)
        for n in range(3)
    ]
    train, held_out = split_pairs(pairs, 0.25, seed=1)
    assert not _prompts(train) & _prompts(held_out)
    assert len(train) + len(held_out) == len(pairs) and 0 < len(held_out) < len(pairs) / 2
    shuffled = random.Random(0).sample(pairs, len(pairs))
    assert _prompts(split_pairs(shuffled, 0.25, seed=1)[1]) == _prompts(held_out)
    assert split_pairs(pairs, 0.25, seed=2)[1] != held_out  # the seed picks another split


def _prompts(pairs: list[dict]) -> set[str]:
    return {pair["prompt"][0]["content"] for pair in pairs}


def test_a_reward_model_learns_the_preference_and_generalises_to_held_out_prompts(trained, pairs):
    train, held_out = split_pairs(pairs, PARAMS.held_out_fraction, SEED)
    assert (trained.train_pairs, trained.held_out_pairs) == (len(train), len(held_out))
    assert trained.held_out_pairs >= 16
    assert trained.accuracy >= 0.75 and trained.accuracy_train >= 0.75
    assert list(trained.history.columns) == ["step", "split", "loss"] and set(trained.history["split"]) == {"train"}
    assert trained.history["loss"].iloc[-1] < trained.history["loss"].iloc[0]


SCORE_SCRIPT = """
import json, sys
from tunebook.reward import load_scorer, pairwise_accuracy, score
base, adapter, pairs_path = sys.argv[1:]
pairs = json.load(open(pairs_path))
scorer = load_scorer(base, adapter)
rewards = score(scorer, [pairs[0]["prompt"] + pairs[0]["chosen"], pairs[0]["prompt"] + pairs[0]["rejected"]], 1)
print(json.dumps({"accuracy": pairwise_accuracy(scorer, pairs, 5), "rewards": rewards,
                  "trl_imported": any(name.split(".")[0] == "trl" for name in sys.modules)}))
"""


def test_the_saved_adapter_scores_as_at_train_time_without_importing_trl(trained, pairs, tiny_model, tmp_path):
    adapter = trained.adapter_dir
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        assert any(".score." in key for key in weights.keys())  # the head is saved, not left random on load
    assert (
        AutoTokenizer.from_pretrained(adapter).chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    )
    held_out = split_pairs(pairs, PARAMS.held_out_fraction, SEED)[1]
    pairs_path = tmp_path / "held_out.json"
    pairs_path.write_text(json.dumps(held_out))
    # In a fresh process: the scoring path alone must not pull in trl's trainers.
    run = subprocess.run(
        [sys.executable, "-c", SCORE_SCRIPT, tiny_model, str(adapter), str(pairs_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    scored = json.loads(run.stdout.strip().splitlines()[-1])
    assert not scored["trl_imported"]
    assert scored["accuracy"] == trained.accuracy  # other batch sizes, same answer
    chosen, rejected = scored["rewards"]
    assert math.isfinite(chosen) and chosen > rejected


def test_too_few_pairs_to_train_is_refused_before_any_compute(pairs, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"1 of 1 preference pairs fall on the train side.*at least 2"):
        train_reward_model(
            pairs[:1], tiny_model, tiny_model, PARAMS.model_copy(update={"held_out_fraction": 0.01}), tmp_path, 0
        )
    short = PARAMS.model_copy(update={"trainer": {**PARAMS.trainer, "max_length": 16}})
    with pytest.raises(ValueError, match=r"longer than dpo.reward.trainer.max_length=16 tokens.*at least 2 must"):
        train_reward_model(pairs, tiny_model, tiny_model, short, tmp_path, SEED, progress=False)
    unanswered = {"id": "x", "prompt": pairs[0]["prompt"], "chosen": pairs[0]["chosen"]}
    with pytest.raises(ValueError, match=r"preference pair 1 \(id 'x'\) has no rejected"):
        train_reward_model([pairs[0], unanswered], tiny_model, tiny_model, PARAMS, tmp_path, SEED)
