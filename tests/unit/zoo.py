"""The model zoo: random-init tiny models of real families, built offline in well under a second each.

Users bring Llama, Qwen, Gemma, Mistral and Phi models; the tiny model alone would hide every bug that depends
on a family's special tokens, its stop tokens or its chat template. Each zoo model carries its family's real
special tokens (single ids, marked special) and stock chat template text, on a tiny random network of the
family's own architecture.

Tokenizer decisions:
- SentencePiece BPE, as in tunebook.tiny, wherever transformers lets it be: llama.cpp's GGUF converter reads a
  tokenizer.model offline, while a `tokenizers` BPE fails its pre-tokenizer hash check. Llama 3's real
  byte-level BPE is stood in for by SentencePiece; its special tokens and template are the real ones.
- Qwen is the exception: transformers loads any `qwen2` model with Qwen2Tokenizer, which rebuilds a byte-level
  pipeline over whatever vocabulary it finds, so its zoo tokenizer is a byte-level BPE, as the real one is.
- `tokenizer(text)` adds no BOS: Llama 3's, Gemma's and Mistral's templates write BOS themselves, so a tokenizer
  that added one too would put two in front of every tokenized prompt.
- Text is tokenized as written (no "▁" dummy prefix), except for Phi-3, whose real tokenizer has one.
- Every family's tokenizer.json is written beside tokenizer.model, so that whichever class transformers picks
  for the model type tokenizes with exactly this pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
import tokenizers
import torch
import trl
from tokenizers import pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
FIXTURE_TEMPLATES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
STOCK = "stock"  # build()'s default chat_template: the family's own
SEED = 0
VOCAB_SIZE = 768
# Docstrings of a few stdlib modules: real English and code, and no download.
TEXT_MODULES = ("json", "pathlib", "textwrap", "functools")
ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Family:
    config: type[PretrainedConfig]
    template: Path
    specials: tuple[str, ...]  # every special token, in the order of the real vocabulary
    eos: str
    stops: tuple[str, ...]  # generation_config's eos ids: where the instruct model stops
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    # SentencePiece's dummy prefix: "▁" before every text segment, as Llama 2-era tokenizers write it.
    prefix_space: bool = False
    rstrip: tuple[str, ...] = ()  # special tokens that swallow the whitespace after them
    tokenizer_class: str = "LlamaTokenizer"
    config_options: dict = field(default_factory=dict)


FAMILY_SPECS = {
    # Llama 3: <|end_of_text|> ends a document, <|eot_id|> a turn; Llama 3.1 ships the pad token for fine-tuning.
    "llama3": Family(
        LlamaConfig,
        TRL_TEMPLATES / "llama3.jinja",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        eos="<|end_of_text|>",
        stops=("<|end_of_text|>", "<|eot_id|>"),
        bos="<|begin_of_text|>",
        pad="<|finetune_right_pad_id|>",
        config_options={"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    ),
    # Qwen2.5-Instruct: no BOS at all; the eos is the end of a turn and <|endoftext|> pads.
    "qwen2_5": Family(
        Qwen2Config,
        TRL_TEMPLATES / "qwen2_5.jinja",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        stops=("<|im_end|>", "<|endoftext|>"),
        pad="<|endoftext|>",
        tokenizer_class="Qwen2Tokenizer",
        config_options={"tie_word_embeddings": True},
    ),
    # Gemma 2: the template writes <bos>; a turn ends with <end_of_turn>, not with <eos>.
    "gemma": Family(
        Gemma2Config,
        TRL_TEMPLATES / "gemma.jinja",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        eos="<eos>",
        stops=("<eos>", "<end_of_turn>"),
        bos="<bos>",
        pad="<pad>",
        unk="<unk>",
        tokenizer_class="GemmaTokenizer",
        # head_dim and the query scale default to Gemma-2-2B's 256, far wider than the tiny hidden size.
        config_options={"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 256},
    ),
    # Mistral-7B-Instruct v0.1/v0.2: [INST] and [/INST] are plain text, and there is no pad token.
    "mistral": Family(
        MistralConfig,
        FIXTURE_TEMPLATES / "mistral.jinja",
        ("<unk>", "<s>", "</s>"),
        eos="</s>",
        stops=("</s>",),
        bos="<s>",
        unk="<unk>",
        config_options={"sliding_window": None},
    ),
    # Phi-3-mini: <|end|> ends a turn, <|endoftext|> is both eos and pad; every head has its own keys (no GQA).
    "phi3": Family(
        Phi3Config,
        TRL_TEMPLATES / "phi3.jinja",
        ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        eos="<|endoftext|>",
        stops=("<|endoftext|>", "<|end|>"),
        bos="<s>",
        pad="<|endoftext|>",
        unk="<unk>",
        # Phi-3's tokenizer prefixes text with "▁" and its turn tokens swallow the newline after them; llama.cpp
        # reproduces both (for a GGUF whose name says phi3), so they are kept.
        prefix_space=True,
        rstrip=("</s>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        config_options={"num_key_value_heads": 4, "original_max_position_embeddings": 512},
    ),
}
FAMILIES = tuple(FAMILY_SPECS)


def stock_template(family: str) -> str:
    """The chat template text the family's instruct model ships."""
    return FAMILY_SPECS[family].template.read_text(encoding="utf-8")


def build(family: str, out_dir: Path, *, chat_template: str | None = STOCK) -> Path:
    """A tiny random-init fp32 model of family in out_dir: safetensors, config, generation config and tokenizer.
    chat_template: the family's stock template by default, any template text, or None for a base model."""
    spec = FAMILY_SPECS[family]
    out_dir.mkdir(parents=True, exist_ok=True)
    template = stock_template(family) if chat_template == STOCK else chat_template
    tokenizer = write_tokenizer(spec, out_dir, template)
    ids = tokenizer.convert_tokens_to_ids
    special_ids = {
        "bos_token_id": spec.bos and ids(spec.bos),
        "eos_token_id": ids(spec.eos),
        "pad_token_id": spec.pad and ids(spec.pad),
    }
    config = spec.config(vocab_size=len(tokenizer), **special_ids, **{**ARCHITECTURE, **spec.config_options})
    with torch.random.fork_rng(devices=[]):  # the weights depend on SEED alone, and the caller's RNG is left alone
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stops = [ids(token) for token in spec.stops]
    model.generation_config = GenerationConfig(**{**special_ids, "eos_token_id": stops if len(stops) > 1 else stops[0]})
    model.save_pretrained(out_dir)
    return out_dir


def builder(root: Path) -> Callable[..., Path]:
    """zoo(family, chat_template=STOCK) -> that model's directory under root, built on first use. A directory is
    named after its family: llama.cpp gives Phi-3's turn tokens their rstrip only when the GGUF's name says phi3."""

    @functools.cache
    def model_dir(family: str, chat_template: str | None = STOCK) -> Path:
        if chat_template == STOCK:
            name = family
        elif chat_template is None:
            name = f"{family}-base"
        else:
            name = f"{family}-{hashlib.sha256(chat_template.encode()).hexdigest()[:12]}"
        return build(family, root / name, chat_template=chat_template)

    return model_dir


def write_tokenizer(spec: Family, out_dir: Path, chat_template: str | None) -> PreTrainedTokenizerBase:
    """tokenizer.json, tokenizer_config.json and (SentencePiece families) tokenizer.model; returns the tokenizer."""
    if spec.tokenizer_class == "Qwen2Tokenizer":
        tokenizer = byte_level_tokenizer(spec)
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in spec.specials}
    else:
        ids = train_sentencepiece(spec, out_dir)
    # transformers would save a tokenizer_config.json that says neither whether BOS is added nor which tokens
    # are special, and llama.cpp's converter reads both from it; so it is written here, in full.
    added_tokens = {
        str(ids[token]): {
            "content": token,
            "lstrip": False,
            "rstrip": token in spec.rstrip,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for token in spec.specials
    }
    tokenizer_config = {
        "tokenizer_class": spec.tokenizer_class,
        "add_prefix_space": spec.prefix_space,
        "legacy": spec.prefix_space,  # a legacy prefix goes before every text segment, as llama.cpp puts it
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": spec.bos,
        "eos_token": spec.eos,
        "unk_token": spec.unk,
        "pad_token": spec.pad,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ARCHITECTURE["max_position_embeddings"],
        "added_tokens_decoder": added_tokens,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    config_text = json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(config_text, encoding="utf-8")
    if spec.tokenizer_class != "Qwen2Tokenizer":
        (out_dir / "tokenizer.json").unlink(missing_ok=True)  # from an earlier build: it would be read instead
        tokenizer = LlamaTokenizer.from_pretrained(out_dir)
    # Whichever class transformers picks for the model type, it tokenizes with this very pipeline.
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    return tokenizer


def train_sentencepiece(spec: Family, out_dir: Path) -> dict[str, int]:
    """tokenizer.model, with the special tokens as its first pieces in the family's order; returns their ids."""
    # SentencePiece always has an unknown piece; a family without one (Llama 3) has it, undeclared, last.
    unk = spec.unk or "<unk>"
    pieces = spec.specials if spec.unk else (*spec.specials, unk)
    model_bytes = io.BytesIO()
    spm.set_random_generator_seed(SEED)
    spm.SentencePieceTrainer.train(
        # Lines are the sentences, so "\n" is always the byte piece <0x0A> and never merges with words.
        sentence_iterator=iter(training_lines()),
        model_writer=model_bytes,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        byte_fallback=True,
        # User-defined pieces are never split, by SentencePiece or by llama.cpp; they fill the ids around unk.
        unk_id=pieces.index(unk),
        unk_piece=unk,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        user_defined_symbols=[piece for piece in pieces if piece != unk],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=spec.prefix_space,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model_bytes.getvalue())
    trained = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    return {piece: trained.PieceToId(piece) for piece in pieces}


def byte_level_tokenizer(spec: Family) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's own pre-tokenizer, and the special tokens after its vocabulary as Qwen has them."""
    trainer_tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trainer_tokenizer.train_from_iterator(["\n".join(training_lines())], trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = trained["vocab"] | {token: len(trained["vocab"]) + i for i, token in enumerate(spec.specials)}
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(merge) for merge in trained["merges"]],
        bos_token=spec.bos,
        eos_token=spec.eos,
        unk_token=spec.unk,
        pad_token=spec.pad,
        extra_special_tokens=[t for t in spec.specials if t not in (spec.eos, spec.pad)],
    )


def training_lines() -> list[str]:
    lines = []
    for name in TEXT_MODULES:
        module = __import__(name)
        members = [obj for _, obj in sorted(vars(module).items()) if inspect.isfunction(obj) or inspect.isclass(obj)]
        docs = [inspect.getdoc(obj) or "" for obj in [module, *members]]
        lines += [line for doc in docs for line in doc.splitlines() if line.strip()]
    return lines
