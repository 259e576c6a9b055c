"""The offline `tiny` base model: a SentencePiece tokenizer and a small Llama pre-trained on the corpus.

These machines have no model hub, so the demo and the tests need a base model built from local text
alone. The build is cached by content: the same corpus, params and BUILD_VERSION give the same
directory, and that directory only ever appears complete.

Tokenizer decisions, all so that transformers, sentencepiece and llama.cpp (after GGUF export)
produce the same token ids:
- SentencePiece BPE with byte fallback: llama.cpp's converter accepts a SentencePiece model, and
  byte fallback means newlines and unseen characters survive as byte tokens instead of <unk>.
- No dummy prefix (`add_prefix_space: false`): text is tokenized exactly as written, so a chat
  prompt's tokens are a prefix of the prompt-plus-answer tokens.
- No BOS is added, neither by `tokenizer(text)` nor by the chat template, and pre-training never
  sees one: every path to the model tokenizes the same way.
- `<|im_start|>` and `<|im_end|>` are user-defined pieces (single ids wherever they appear);
  `<|im_end|>` is the eos, and `<pad>` is a separate control piece so padding never reads as an end.

A params file names the model `tiny` (sft.base_model, an hf teacher's model); no stage ever sees the name.
`tunebook run` builds the model after ingest, from that run's chunks, links it at data/runs/<run_id>/tiny and
injects that directory instead (`staged`); a stage whose params name it keys on its build (`run_key`), and
`tunebook plan` plans it from its config (`plan_inputs`).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import sentencepiece as spm
import torch
from tqdm import tqdm
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from tunebook import paths
from tunebook.chat import CHATML
from tunebook.chunking import iter_chunks, read_chunks
from tunebook.files import sha256_file
from tunebook.params import TINY, Params, TeacherParams, TinyParams
from tunebook.plan import Estimate, pretraining_estimate

# Bump when a change here would build a different model from the same corpus and params.
BUILD_VERSION = 2

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
UNK, BOS, PAD = "<unk>", "<s>", "<pad>"


def build_tiny(texts: list[str], models_dir: Path, cfg: TinyParams, progress: bool = True) -> Path:
    """The tiny model for these corpus texts and cfg: reused when already built, else trained and saved."""
    if not texts:
        raise ValueError("the corpus is empty: no text to build the tiny model from")
    key = build_key(texts, cfg)
    model_dir = models_dir / f"tiny-{key[:12]}"
    if is_complete(model_dir):
        return model_dir
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"tiny.hidden_size ({cfg.hidden_size}) must be a multiple of tiny.num_heads")
    models_dir.mkdir(parents=True, exist_ok=True)
    # A sweep's variants may ask for one build at once: the first builds it, the others wait for it and reuse it.
    # The lock is the models directory's own (builds there take turns), so it leaves no lock file behind.
    lock = os.open(models_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(model_dir):
            return model_dir
        return _build(texts, key, model_dir, models_dir, cfg, progress)
    finally:
        os.close(lock)


def _build(texts: list[str], key: str, model_dir: Path, models_dir: Path, cfg: TinyParams, progress: bool) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=models_dir))
    try:
        tokenizer = train_tokenizer(texts, staging, cfg)
        blocks = token_blocks(tokenizer, texts, cfg.context_length)
        model = init_model(tokenizer, cfg)
        losses = pretrain(model, blocks, cfg, progress)
        model.save_pretrained(staging)
        record = {
            "build_version": BUILD_VERSION,
            "key": key,
            "params": cfg.model_dump(),
            "corpus_texts": len(texts),
            "train_tokens": blocks.numel(),
            "vocab_size": len(tokenizer),
            "num_parameters": model.num_parameters(),
            "first_loss": losses[0],
            # One batch is noisy; the mean of the last few steps is the figure worth comparing.
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "losses": [round(loss, 4) for loss in losses],
        }
        # Written last: its presence is what marks a build as complete.
        (staging / "tiny.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        publish(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_dir


def tiny_keys(params: Params, stage: str | None = None) -> list[str]:
    """The keys of params (of one stage's section, if given) that name the model `tiny`."""
    teachers = [
        f"generate.teachers.{i}.model" for i, teacher in enumerate(params.generate.teachers) if _is_tiny(teacher)
    ]
    keys = [*teachers, *(["sft.base_model"] if params.sft.base_model == TINY else [])]
    return [key for key in keys if stage is None or key.startswith(f"{stage}.")]


def _is_tiny(teacher: TeacherParams) -> bool:
    """An openai teacher's model is a name its server knows, never the offline model."""
    return teacher.backend == "hf" and teacher.model == TINY


def run_model_dir(run_id: str) -> Path:
    """Where a run links its tiny model: one name for the stages, whichever build it points at."""
    return paths.run_dir(run_id) / "tiny"


def staged(params: Params) -> Params:
    """params as the stages see them: every `tiny` is the run's model directory, relative to the workdir."""
    model_dir = str(run_model_dir(params.run.id).relative_to(paths.workdir()))
    teachers = [
        teacher.model_copy(update={"model": model_dir}) if _is_tiny(teacher) else teacher
        for teacher in params.generate.teachers
    ]
    sft = params.sft.model_copy(update={"base_model": model_dir}) if params.sft.base_model == TINY else params.sft
    return params.model_copy(update={"generate": params.generate.model_copy(update={"teachers": teachers}), "sft": sft})


def run_key(params: Params) -> str | None:
    """The build key of the run's tiny model: what a stage that names it reads. None before ingest has run."""
    chunks_file = _chunks_file(params.run.id)
    if not chunks_file.is_file():
        return None
    return _chunks_build_key(chunks_file, sha256_file(chunks_file), params.tiny.model_dump_json())


@cache
def _chunks_build_key(chunks_file: Path, digest: str, tiny_json: str) -> str:
    # Every stage's cache check asks for the key: read and hash a large chunks file once per content (digest).
    return build_key((chunk.text for chunk in iter_chunks(chunks_file)), TinyParams.model_validate_json(tiny_json))


def resolve(params: Params, progress: bool = True) -> Path:
    """Build (or reuse) the tiny model from the run's chunks and params.tiny, and link the run's model
    directory to it; returns the build's directory."""
    chunks_file = _chunks_file(params.run.id)
    if not chunks_file.is_file():
        raise ValueError(f"it is trained on the run's chunks, and the ingest stage wrote none ({chunks_file})")
    chunks = read_chunks(chunks_file)
    model_dir = build_tiny([chunk.text for chunk in chunks], paths.models_dir(), params.tiny, progress)
    link = run_model_dir(params.run.id)
    target = os.path.relpath(model_dir, link.parent)  # relative: the workdir may move
    if not link.is_symlink() or os.readlink(link) != target:
        # Replaced in one step, so a reader of the link sees the old build or the new one, never neither.
        staging = link.with_name(f".{link.name}-{os.getpid()}")
        staging.unlink(missing_ok=True)
        staging.symlink_to(target, target_is_directory=True)
        os.replace(staging, link)
    return model_dir


def plan_inputs(params: Params) -> tuple[LlamaConfig | None, list[Estimate]]:
    """What `tunebook plan` needs for a model that exists only once a run builds it: its config, when it is
    the SFT base, and the estimate of its pre-training, when any model is `tiny`."""
    if not tiny_keys(params):
        return None, []
    cfg = params.tiny
    config = tiny_config(cfg)
    pretraining = pretraining_estimate("tiny", config, cfg.steps, cfg.batch_size, cfg.context_length, params)
    return (config if params.sft.base_model == TINY else None), [pretraining]


def _chunks_file(run_id: str) -> Path:
    return paths.run_dir(run_id) / "ingest" / "chunks.jsonl"


def build_key(texts: Iterable[str], cfg: TinyParams) -> str:
    """Content hash of everything that decides the model: code version, params and corpus texts."""
    digest = hashlib.sha256()
    header = {"build_version": BUILD_VERSION, "params": cfg.model_dump()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        # Length-prefixed so that no two different corpora can produce the same byte stream.
        digest.update(f"\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def is_complete(model_dir: Path) -> bool:
    return (model_dir / "tiny.json").is_file()


def train_tokenizer(texts: list[str], out_dir: Path, cfg: TinyParams) -> PreTrainedTokenizerBase:
    """Train tokenizer.model, describe it in tokenizer_config.json and load it back with transformers."""
    # Lines are the training sentences, so "\n" never becomes a piece: it is always the byte <0x0A>,
    # which keeps line breaks from merging with the words around them.
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    model_bytes = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model_bytes,
        model_type="bpe",
        vocab_size=cfg.vocab_size,
        # A small corpus may not support the requested size; the model uses the real size instead.
        hard_vocab_limit=False,
        byte_fallback=True,
        user_defined_symbols=[IM_START, IM_END],
        unk_id=0,
        bos_id=1,
        pad_id=2,
        eos_id=-1,
        unk_piece=UNK,
        bos_piece=BOS,
        pad_piece=PAD,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        # Runs of spaces (code indentation) become single pieces instead of one token per space.
        allow_whitespace_only_pieces=True,
        split_digits=True,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model_bytes.getvalue())
    trained = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    # Marked special here so that every reader types them as control tokens; llama.cpp's GGUF converter takes
    # the types from this map alone, and would otherwise split <|im_start|> into ordinary pieces.
    added_tokens = {
        str(trained.PieceToId(piece)): {
            "content": piece,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for piece in (UNK, BOS, PAD, IM_START, IM_END)
    }
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_prefix_space": False,
        "legacy": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": IM_END,
        "unk_token": UNK,
        "pad_token": PAD,
        "extra_special_tokens": [IM_START],
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.context_length,
        "chat_template": CHATML,  # trains the answer and its <|im_end|>
        "added_tokens_decoder": added_tokens,
    }
    config_text = json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(config_text, encoding="utf-8")
    return AutoTokenizer.from_pretrained(out_dir)


def token_blocks(tokenizer: PreTrainedTokenizerBase, texts: list[str], context_length: int) -> torch.Tensor:
    """The corpus as one token stream cut into (n_blocks, context_length); the ragged tail is dropped."""
    # verbose=False: the stream is meant to be longer than model_max_length, so skip the warning.
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    n_blocks = len(stream) // context_length
    if n_blocks == 0:
        raise ValueError(
            f"the corpus has {len(stream)} tokens, less than one tiny.context_length block ({context_length})"
        )
    return torch.tensor(stream[: n_blocks * context_length]).view(n_blocks, context_length)


def tiny_config(cfg: TinyParams, vocab_size: int | None = None, **special_ids: int) -> LlamaConfig:
    """The architecture cfg describes; `tunebook plan` sizes it before the tokenizer exists."""
    return LlamaConfig(
        vocab_size=vocab_size or cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.context_length,
        tie_word_embeddings=True,
        **special_ids,
    )


def init_model(tokenizer: PreTrainedTokenizerBase, cfg: TinyParams) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by cfg, with the tokenizer's special ids wired in."""
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = tiny_config(cfg, vocab_size=len(tokenizer), **special_ids)
    # Seed a forked RNG so the weights depend on cfg.seed alone and the caller's RNG is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    # generate() stops at <|im_end|>, the end of an assistant turn.
    model.generation_config = GenerationConfig(**special_ids)
    return model


def learning_rate(step: int, cfg: TinyParams) -> float:
    """Linear warmup over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, cfg.steps // 10)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model: LlamaForCausalLM, blocks: torch.Tensor, cfg: TinyParams, progress: bool) -> list[float]:
    """Causal-LM training on random corpus blocks; returns the loss of every step.

    Runs on the CPU whatever the machine has, so the same key gives the same weights everywhere.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    # Norm weights and other vectors are not decayed: pulling them towards zero only hurts.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="tiny pre-training", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        batch = blocks[torch.randint(len(blocks), (cfg.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def publish(staging: Path, model_dir: Path) -> None:
    """Move the finished build into place in one step, so no reader ever sees half a model."""
    staging.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    try:
        os.replace(staging, model_dir)
    except OSError:
        # A concurrent build of the same key won the race; its model is the same, so keep it.
        if not is_complete(model_dir):
            raise OSError(f"{model_dir} exists but holds no tiny.json; delete it to rebuild") from None
        shutil.rmtree(staging)
