"""The model zoo: each family's tiny model loads, carries its real special tokens and stock template, prompts
as the real model does, generates, and (where llama.cpp's converter can read it) exports to a GGUF that
tokenizes as transformers does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from zoo import FAMILIES, build, stock_template

from tunebook import gguf, models

HI = [{"role": "user", "content": "Hi"}]
# What each real instruct model's tokenizer says, and the prompt its template renders for HI.
REAL = {
    "llama3": {
        "architecture": "LlamaForCausalLM",
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": "<|finetune_right_pad_id|>",
        "turn_end": "<|eot_id|>",
        "stops": ["<|end_of_text|>", "<|eot_id|>"],
        "specials": ["<|start_header_id|>", "<|end_header_id|>"],
        "prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    },
    "qwen2_5": {
        "architecture": "Qwen2ForCausalLM",
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "turn_end": "<|im_end|>",
        "stops": ["<|im_end|>", "<|endoftext|>"],
        "specials": ["<|im_start|>"],
        "prompt": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    },
    "gemma": {
        "architecture": "Gemma2ForCausalLM",
        "bos": "<bos>",
        "eos": "<eos>",
        "pad": "<pad>",
        "turn_end": "<end_of_turn>",
        "stops": ["<eos>", "<end_of_turn>"],
        "specials": ["<unk>", "<start_of_turn>"],
        "prompt": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    },
    "mistral": {
        "architecture": "MistralForCausalLM",
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "turn_end": "</s>",
        "stops": ["</s>"],
        "specials": ["<unk>"],
        "prompt": "<s>[INST] Hi [/INST]",
    },
    "phi3": {
        "architecture": "Phi3ForCausalLM",
        "bos": "<s>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "turn_end": "<|end|>",
        "stops": ["<|endoftext|>", "<|end|>"],
        "specials": ["<unk>", "<|user|>", "<|assistant|>", "<|system|>"],
        "prompt": "<|user|>\nHi<|end|>\n<|assistant|>\n",
    },
}
# llama.cpp's converter reads Qwen2 vocabularies only as byte-level BPEs it recognises by a hash of their
# token ids, and the zoo's own byte-level BPE is not one of them.
GGUF_FAMILIES = [family for family in FAMILIES if family != "qwen2_5"]


def test_the_zoo_covers_every_family_the_tests_describe():
    assert set(FAMILIES) == set(REAL)


@pytest.fixture(scope="module")
def loaded(zoo):
    def load(family: str):
        model_dir = zoo(family)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **models.pretrained_options(weights=False))
        return model_dir, tokenizer

    return load


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_carries_the_real_special_tokens_and_stock_template(loaded, family):
    _, tokenizer = loaded(family)
    real = REAL[family]
    assert tokenizer.chat_template == stock_template(family)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (real["bos"], real["eos"], real["pad"])
    tokens = [t for t in (real["bos"], real["eos"], real["pad"], real["turn_end"], *real["specials"]) if t]
    special_ids = {i for i, added in tokenizer.added_tokens_decoder.items() if added.special}
    for token in tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in special_ids, f"{family}: {token} is {ids}"
    # No BOS in front of plain text, and nothing lost on the way back.
    text = "def parse(path):\n    return json.load(path)  # 42 café"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_prompt_is_the_real_familys_with_one_bos(loaded, family):
    _, tokenizer = loaded(family)
    real = REAL[family]
    prompt = tokenizer.apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    assert prompt == real["prompt"]
    ids = tokenizer.apply_chat_template(HI, add_generation_prompt=True, return_dict=True)["input_ids"]
    # The template writes BOS where the family has one; tokenizing the rendered text adds no second one.
    assert tokenizer(prompt)["input_ids"] == ids
    assert ids.count(tokenizer.bos_token_id) == (1 if family in ("llama3", "gemma", "mistral") else 0)
    # The end of a turn is one special token after the answer, and tunebook finds it from the template alone.
    assert models.turn_end_id(tokenizer) == tokenizer.convert_tokens_to_ids(real["turn_end"])


@pytest.mark.parametrize("family", FAMILIES)
def test_model_is_the_familys_architecture_and_generates(loaded, family):
    model_dir, tokenizer = loaded(family)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **models.pretrained_options())
    assert type(model).__name__ == REAL[family]["architecture"]
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    config_ids = (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id)
    assert config_ids == (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    stops = GenerationConfig.from_pretrained(model_dir).eos_token_id
    assert tokenizer.convert_ids_to_tokens(stops if isinstance(stops, list) else [stops]) == REAL[family]["stops"]
    prompt = tokenizer.apply_chat_template(HI, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**prompt).logits
    assert logits.shape == (1, prompt["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    output = model.generate(**prompt, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_has_no_template_and_builds_alike_every_time(tmp_path, family):
    base_dir = build(family, tmp_path / "base", chat_template=None)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, **models.pretrained_options(weights=False))
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match="chat_template"):
        tokenizer.apply_chat_template(HI, tokenize=False)
    again = build(family, tmp_path / "again", chat_template=None)
    assert digests(base_dir) == digests(again)


def test_zoo_fixture_builds_each_variant_once(zoo):
    assert zoo("mistral") == zoo("mistral")
    base = zoo("mistral", chat_template=None)
    assert base != zoo("mistral") and zoo("mistral", chat_template=None) == base
    assert "chat_template" not in (base / "tokenizer_config.json").read_text()


def digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_gguf_tokenizes_as_transformers_does(loaded, family, tmp_path):
    model_dir, tokenizer = loaded(family)
    gguf_path = gguf.convert(model_dir, "f16", tmp_path / f"{family}.gguf")
    turns = ["What does json.dumps do?", "It serialises obj.", "And?"]
    several = [{"role": role, "content": text} for role, text in zip(["user", "assistant", "user"], turns, strict=True)]
    conversations = [HI, several]
    stops = [tokenizer.convert_tokens_to_ids(token) for token in REAL[family]["stops"]]
    checked = gguf.check_tokenizer(gguf_path, tokenizer, conversations, stops)
    assert checked["prompts tokenized alike"] == 2
