"""The offline tiny base model, built once per module from real stdlib documentation."""

from __future__ import annotations

import importlib
import inspect
import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tunebook.chat import CHATML
from tunebook.params import TinyParams
from tunebook.tiny import build_key, build_tiny, tiny_config

STDLIB_MODULES = ("json", "pathlib", "collections", "functools", "itertools", "textwrap")
CFG = TinyParams(
    vocab_size=500,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    context_length=64,
    steps=20,
    batch_size=8,
    learning_rate=1e-2,
)

PARITY_TEXTS = [
    "Return a new path with the file name changed.",
    "first line\nsecond line\n\n\nafter blank lines\n",
    "def parse(path: Path) -> dict:\n    with open(path) as f:\n        return json.load(f)  # 42\n",
    "  leading spaces, trailing spaces  \n\ttab\r\nwindows line end",
    "café — naïve façade, 日本語, emoji 🎉",
    "x = 1234567.890e-3; y = [a for a in range(10)]",
    "<|im_start|>user\nWhat does json.dumps do?<|im_end|>\n<|im_start|>assistant\n",
    "",
]


def stdlib_docs() -> list[str]:
    """Markdown pages from stdlib docstrings: real text, no download."""
    texts = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        sections = [f"# {name}\n\n{inspect.getdoc(module)}\n"]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if doc := inspect.getdoc(obj):
                sections.append(f"## {name}.{attr}\n\n{doc}\n")
        texts.append("\n".join(sections))
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return stdlib_docs()


@pytest.fixture(scope="module")
def tiny_dir(tiny_model: str) -> Path:
    """The session's tiny model (conftest), built from the same corpus and CFG as this module's."""
    return Path(tiny_model)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


def test_loads_offline_and_generates(tiny_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == CFG.context_length
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What does json.dumps do?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_record_names_corpus_and_shows_loss_decreasing(tiny_dir: Path) -> None:
    record = json.loads((tiny_dir / "tiny.json").read_text())
    assert record["params"] == CFG.model_dump()
    assert record["corpus_texts"] == len(STDLIB_MODULES)
    assert len(record["losses"]) == CFG.steps
    assert record["final_loss"] < record["first_loss"] - 0.5


def test_transformers_tokenizes_exactly_as_sentencepiece(tiny_dir: Path, tokenizer, corpus: list[str]) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    corpus_text = corpus[0]
    for text in [corpus_text, *PARITY_TEXTS]:
        # Default add_special_tokens: parity also proves that no BOS or EOS is added.
        ids = tokenizer(text)["input_ids"]
        assert ids == sp.encode(text), text
        assert tokenizer.decode(ids) == text


def test_tokenizer_parity_on_random_piece_soups(tiny_dir: Path, tokenizer) -> None:
    """Strings glued from vocabulary pieces hit the merge-order corner cases plain prose never reaches."""
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    pieces = [
        sp.id_to_piece(i).replace("▁", " ")
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
    ]
    rng = random.Random(0)
    texts = ["".join(rng.choices(pieces, k=rng.randint(1, 10))) + rng.choice(["", "\n", " é"]) for _ in range(500)]
    assert [tokenizer(text)["input_ids"] for text in texts] == [sp.encode(text) for text in texts]


def test_tokenizer_saved_by_transformers_still_matches(tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    """SFT saves the tokenizer next to its adapter in transformers' own format; evaluation loads that copy."""
    tokenizer.save_pretrained(tmp_path)
    resaved = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    assert [resaved(text)["input_ids"] for text in PARITY_TEXTS] == [sp.encode(text) for text in PARITY_TEXTS]
    assert resaved.chat_template == CHATML
    assert (resaved.eos_token, resaved.pad_token) == ("<|im_end|>", "<pad>")


def test_chat_markers_and_special_tokens(tiny_dir: Path, tokenizer) -> None:
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tokenizer("<|im_start|>")["input_ids"] == [im_start]
    assert tokenizer("<|im_end|>")["input_ids"] == [im_end]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.chat_template == CHATML
    assert tokenizer.decode([im_start, im_end], skip_special_tokens=True) == ""

    generation = GenerationConfig.from_pretrained(tiny_dir, local_files_only=True)
    assert generation.eos_token_id == im_end
    assert generation.pad_token_id == tokenizer.pad_token_id


def test_assistant_mask_covers_answer_and_end_of_turn_only(tokenizer) -> None:
    answer = "It serializes an object to a JSON formatted str."
    messages = [
        {"role": "system", "content": "Answer from the docs."},
        {"role": "user", "content": "What does json.dumps do?"},
        {"role": "assistant", "content": answer},
    ]
    chat = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [token for token, keep in zip(chat["input_ids"], chat["assistant_masks"], strict=True) if keep]
    assert masked == tokenizer(answer + "<|im_end|>")["input_ids"]

    # The generation prompt is a token prefix of the full chat, and the rendered text tokenizes the same.
    prompt_ids = tokenizer.apply_chat_template(
        messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    assert chat["input_ids"][: len(prompt_ids)] == prompt_ids
    assert tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"] == chat["input_ids"]


def test_cached_build_is_reused_and_keyed_by_content(corpus: list[str], tiny_dir: Path, tmp_path: Path) -> None:
    stamp = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny(corpus, tiny_dir.parent, CFG, progress=False) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # Staging directories never outlive a build.
    assert [p.name for p in tiny_dir.parent.iterdir()] == [tiny_dir.name]

    other = build_tiny(corpus, tmp_path, CFG.model_copy(update={"steps": 1}), progress=False)
    assert other.name != tiny_dir.name and other.name.startswith("tiny-")

    edited = [corpus[0] + " ", *corpus[1:]]
    assert build_key(edited, CFG) != build_key(corpus, CFG)
    # Moving text between documents changes the key too: texts are length-prefixed.
    assert build_key(["ab", "c"], CFG) != build_key(["a", "bc"], CFG)


def test_same_inputs_build_identical_weights(corpus: list[str], tiny_dir: Path, tmp_path: Path) -> None:
    rebuilt = build_tiny(corpus, tmp_path, CFG, progress=False)
    assert rebuilt.name == tiny_dir.name
    first = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).state_dict()
    second = AutoModelForCausalLM.from_pretrained(rebuilt, local_files_only=True).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (tiny_dir / "tokenizer.model").read_bytes() == (rebuilt / "tokenizer.model").read_bytes()


def test_bad_corpus_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with pytest.raises(ValueError, match="the corpus is empty"):
        build_tiny([], models_dir, CFG, progress=False)
    with pytest.raises(ValueError, match="less than one tiny.context_length block"):
        build_tiny(["Too short to fill one block.\n"], models_dir, CFG, progress=False)
    assert list(models_dir.iterdir()) == []


def test_planned_config_matches_the_built_model(tiny_dir: Path) -> None:
    built = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).config
    planned = tiny_config(CFG, vocab_size=built.vocab_size)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert getattr(planned, key) == getattr(built, key)
