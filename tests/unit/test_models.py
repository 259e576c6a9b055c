"""Batched generation gives the answers each prompt gets alone, with per-row stop flags, in the input order."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from tunebook import models

MAX_NEW_TOKENS = 48

QUESTIONS = [
    "What does json.dumps do?",
    "deque?",
    "How do I wrap text to 40 columns with textwrap?",
    "Which exception does json.loads raise on bad input?",
    "Is lru_cache thread-safe?",
    "Explain pathlib.Path.glob.",
    "OrderedDict or dict?",
    "chain vs chain.from_iterable",
    "Which Path method renames?",
    "What does textwrap.dedent remove?",
    "Can a namedtuple have defaults?",
    "partial and keywords?",
]
ANSWER = "A JSON str."
CONVERSATIONS = (
    [[{"role": "user", "content": q}] for q in QUESTIONS]
    + [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}] for q in QUESTIONS[:6]]
    + [
        [
            {"role": "user", "content": "json.dumps?"},
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": q},
        ]
        for q in QUESTIONS[6:]
    ]
)


@pytest.fixture(scope="module")
def talkative(tiny_model: str) -> models.LoadedModel:
    """The session's tiny model with seeded noise on its weights and a louder end of turn.

    Trained for a few steps only, the tiny model answers every prompt with newlines, so every answer would
    be "" and every comparison vacuous. The noise makes it say varied things, and the stronger <|im_end|>
    ends some answers early while others run to max_new_tokens: the mix a batch has to get right.
    """
    loaded = models.load_model("tiny", tiny_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in loaded.model.parameters():
            if weight.dim() >= 2:
                weight.add_(0.5 * torch.randn(weight.shape, generator=generator).to(weight.device))
        loaded.model.get_output_embeddings().weight[loaded.tokenizer.eos_token_id] *= 2
    return loaded


@pytest.fixture(scope="module")
def alone(talkative: models.LoadedModel) -> list[models.Generation]:
    """Each conversation in a call of its own: no batch, no padding, no reordering."""
    return [models.generate(talkative, [c], MAX_NEW_TOKENS, batch_size=1, progress=False)[0] for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def raw_answers(talkative: models.LoadedModel) -> list[list[int]]:
    """Each conversation's new token ids straight from transformers' generate, one prompt at a time."""
    answers = []
    for conversation in CONVERSATIONS:
        prompt = talkative.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        ).to(talkative.model.device)
        output = talkative.model.generate(**prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(output[0, prompt["input_ids"].shape[1] :].tolist())
    return answers


def test_the_comparison_is_not_vacuous(
    talkative: models.LoadedModel, alone: list[models.Generation], raw_answers: list[list[int]]
) -> None:
    prompts = talkative.tokenizer.apply_chat_template(CONVERSATIONS, add_generation_prompt=True, return_dict=True)
    assert len({len(ids) for ids in prompts["input_ids"]}) >= 16  # so batches are padded, by many different amounts
    assert len({g.text for g in alone}) == len(alone)
    assert 4 <= sum(g.stopped for g in alone) <= len(alone) - 4
    assert len({len(tokens) for tokens in raw_answers}) >= 8  # rows end at many different steps


@pytest.mark.parametrize("batch_size", [8, 5, 24])
def test_batched_greedy_answers_equal_one_at_a_time(
    talkative: models.LoadedModel, alone: list[models.Generation], batch_size: int
) -> None:
    assert models.generate(talkative, CONVERSATIONS, MAX_NEW_TOKENS, batch_size, progress=False) == alone


def test_stopped_is_per_row(talkative: models.LoadedModel, raw_answers: list[list[int]]) -> None:
    """A row that ends while the rest of its batch goes on is padded after its eos: the padding must
    neither make it look unfinished nor mark the rows that are still going as stopped."""
    eos = talkative.tokenizer.eos_token_id
    batched = models.generate(talkative, CONVERSATIONS, MAX_NEW_TOKENS, len(CONVERSATIONS), progress=False)
    assert [g.stopped for g in batched] == [eos in tokens for tokens in raw_answers]
    for generation, tokens in zip(batched, raw_answers, strict=True):
        answer = tokens[: tokens.index(eos)] if eos in tokens else tokens
        assert generation.text == talkative.tokenizer.decode(answer, skip_special_tokens=True).strip()


def test_results_come_back_in_input_order(talkative: models.LoadedModel, alone: list[models.Generation]) -> None:
    order = list(range(len(CONVERSATIONS))) * 2  # every conversation twice, so equal lengths meet in a batch
    random.Random(0).shuffle(order)
    shuffled = models.generate(talkative, [CONVERSATIONS[i] for i in order], MAX_NEW_TOKENS, 8, progress=False)
    assert shuffled == [alone[i] for i in order]


def test_a_tokenizer_without_pad_token_pads_with_eos(
    talkative: models.LoadedModel, tiny_model: str, alone: list[models.Generation]
) -> None:
    """Many base models ship no pad token; batching them must still work and give the same answers."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = None
    no_pad = models.LoadedModel("tiny", talkative.model, tokenizer)
    assert models.generate(no_pad, CONVERSATIONS, MAX_NEW_TOKENS, 8, progress=False) == alone


def test_pickle_weights_load_only_when_allowed(pickled_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle can run code when unpickled: tunebook loads safetensors only, unless TUNEBOOK_ALLOW_PICKLE=1."""
    monkeypatch.delenv("TUNEBOOK_ALLOW_PICKLE", raising=False)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        models.load_model("pickled", str(pickled_model))
    monkeypatch.setenv("TUNEBOOK_ALLOW_PICKLE", "1")
    loaded = models.load_model("pickled", str(pickled_model))
    saved = torch.load(pickled_model / "pytorch_model.bin", weights_only=True)
    assert torch.equal(loaded.model.state_dict()["model.embed_tokens.weight"].cpu(), saved["model.embed_tokens.weight"])


def test_pretrained_options_follow_the_opt_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEBOOK_TRUST_REMOTE_CODE", raising=False)
    monkeypatch.delenv("TUNEBOOK_ALLOW_PICKLE", raising=False)
    assert models.pretrained_options() == {"trust_remote_code": False, "use_safetensors": True}
    # a tokenizer would save use_safetensors into its tokenizer_config.json
    assert models.pretrained_options(weights=False) == {"trust_remote_code": False}
    monkeypatch.setenv("TUNEBOOK_TRUST_REMOTE_CODE", "1")
    monkeypatch.setenv("TUNEBOOK_ALLOW_PICKLE", "1")
    # None: safetensors when there are some, else the pickle (False would refuse safetensors)
    assert models.pretrained_options() == {"trust_remote_code": True, "use_safetensors": None}
