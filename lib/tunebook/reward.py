"""A reward model from preference pairs: LoRA on the base with a scalar head (TRL's RewardTrainer), its
pairwise accuracy on held-out pairs, and scoring conversations with it.

Only `train_reward_model` imports trl; loading and scoring are inference only, so the DPO stage and any
server can rank answers without the trainers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import logging as transformers_logging

from tunebook.files import hash_fraction, sha256_text
from tunebook.models import device, load_base, pretrained_options
from tunebook.params import RewardParams

PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class RewardResult:
    adapter_dir: Path  # the LoRA adapter with its score head, and the tokenizer with its chat template
    train_pairs: int  # pairs trained on (after TRL drops those longer than max_length)
    held_out_pairs: int
    accuracy: float  # held-out pairs whose chosen answer scores above the rejected one; NaN when none are held out
    accuracy_train: float
    history: pd.DataFrame  # one row per logged step: step, split (train), loss


@dataclass
class RewardScorer:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def split_pairs(pairs: list[dict], held_out_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out), by a hash of each pair's prompt: every pair of one prompt lands on the same side, so
    the held-out accuracy is measured on prompts the model never saw, and a pair keeps its side when others
    are added or reordered."""
    train, held_out = [], []
    for pair in pairs:
        key = sha256_text(f"{seed}:{json.dumps(pair['prompt'], sort_keys=True)}")
        (held_out if hash_fraction(key, digits=12) < held_out_fraction else train).append(pair)
    return train, held_out


def train_reward_model(
    pairs: list[dict],
    base_model: str,
    tokenizer_dir: str | Path,
    params: RewardParams,
    out_dir: Path,
    seed: int,
    progress: bool = True,
) -> RewardResult:
    """Train on the train side of `split_pairs`; save the adapter (+ tokenizer) to out_dir/adapter and
    measure pairwise accuracy on both sides. The tokenizer, so the chat template, is the one the pairs' model
    was trained with (tokenizer_dir: the SFT adapter), so the reward model reads answers as that model wrote them."""
    from transformers import set_seed
    from trl import RewardTrainer

    from tunebook.sft import StopOnNonFinite, history

    train, held_out = split_pairs(
        [_preference(pair, i) for i, pair in enumerate(pairs)], params.held_out_fraction, seed
    )
    if len(train) < 2:
        raise ValueError(
            f"reward model: {len(train)} of {len(pairs)} preference pairs fall on the train side (held_out_fraction "
            f"{params.held_out_fraction}); at least 2 are needed: generate more pairs or lower the held-out fraction"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **pretrained_options(weights=False))
    # The score is read at the last non-pad token, so sequence classification needs a pad id to find it.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = reward_config(params, out_dir, seed, progress)
    set_seed(seed)  # before loading, so the random score head is reproducible (as TRL does given a name)
    trainer = RewardTrainer(
        model=_classifier(base_model, tokenizer),
        args=config,
        train_dataset=Dataset.from_list(train),
        processing_class=tokenizer,
        peft_config=lora_config(params),
        callbacks=[StopOnNonFinite()],
    )
    kept, max_length, batch = len(trainer.train_dataset), config.max_length, config.per_device_train_batch_size
    if kept < 2:
        raise ValueError(
            f"reward model: {len(train) - kept} of the {len(train)} train pairs are longer than "
            f"dpo.reward.trainer.max_length={max_length} tokens and were dropped; at least 2 must remain"
        )
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        raise MemoryError(
            "out of memory while training the reward model; try "
            f"dpo.reward.trainer.per_device_train_batch_size={max(1, batch // 2)} or a shorter "
            f"dpo.reward.trainer.max_length (now {max_length})"
        ) from None
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # the adapter with its score head + the tokenizer with its chat template
    tokenizer.padding_side = "right"  # as load_scorer pads
    scorer = RewardScorer(trainer.model.eval(), tokenizer)
    return RewardResult(
        adapter_dir=adapter_dir,
        train_pairs=kept,
        held_out_pairs=len(held_out),
        accuracy=pairwise_accuracy(scorer, held_out, config.per_device_eval_batch_size),
        accuracy_train=pairwise_accuracy(scorer, train, config.per_device_eval_batch_size),
        history=history(trainer.state.log_history, {"loss": "loss"}, {"train": ""}),
    )


def reward_config(params: RewardParams, out_dir: Path, seed: int, progress: bool = True):
    """dpo.reward.trainer (tunebook's defaults under the params' own keys), and what tunebook sets itself."""
    from trl import RewardConfig

    # Evaluation batches as large as the training ones, unless the block sets them.
    trainer = {"per_device_eval_batch_size": params.trainer["per_device_train_batch_size"], **params.trainer}
    return RewardConfig(
        **trainer,
        output_dir=str(out_dir / "checkpoints"),
        logging_nan_inf_filter=False,  # a NaN must reach StopOnNonFinite, not be averaged away
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        report_to="none",
        disable_tqdm=not progress,
    )


def lora_config(params: RewardParams):
    """dpo.reward.lora as a SEQ_CLS adapter: PEFT trains and saves the new score head in full beside it."""
    from peft import LoraConfig

    return LoraConfig(**params.lora, modules_to_save=["score"], task_type="SEQ_CLS")


def load_scorer(base_model: str, adapter_dir: Path) -> RewardScorer:
    """The base with the reward adapter on top, and the tokenizer (so the chat template) it was trained with."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, **pretrained_options(weights=False))
    # Right padding, as in training: the score is read at the last non-pad token.
    tokenizer.padding_side = "right"
    model = PeftModel.from_pretrained(_classifier(base_model, tokenizer), str(adapter_dir))
    return RewardScorer(model.to(device()).eval(), tokenizer)


def _classifier(base_model: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The base as a one-score classifier sized for the tokenizer, reading its score at the tokenizer's pad id.
    fp32 weights, bf16 only as autocast on a GPU: the head's small AdamW updates would round away in bf16."""
    # Loading a causal LM as a classifier reports its new score head and unused LM head; training makes the head
    # (or the adapter brings the trained one), so the report would only mislead.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = load_base(base_model, tokenizer, AutoModelForSequenceClassification, num_labels=1, dtype=torch.float32)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@torch.inference_mode()
def score(scorer: RewardScorer, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """The reward of each whole conversation (prompt and answer), tokenized by the chat template as in training."""
    rewards: list[float] = []
    for start in range(0, len(conversations), batch_size):
        encoded = scorer.tokenizer.apply_chat_template(
            conversations[start : start + batch_size],
            tokenize=True,
            return_dict=True,
            padding=True,
            return_tensors="pt",
        ).to(device())
        logits = scorer.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        rewards += logits[:, 0].float().tolist()
    return rewards


def pairwise_accuracy(scorer: RewardScorer, pairs: list[dict], batch_size: int = 16) -> float:
    """The share of pairs whose chosen answer gets a higher reward than the rejected one; NaN without pairs."""
    if not pairs:
        return math.nan
    chosen = score(scorer, [pair["prompt"] + pair["chosen"] for pair in pairs], batch_size)
    rejected = score(scorer, [pair["prompt"] + pair["rejected"] for pair in pairs], batch_size)
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def _preference(pair: dict, index: int) -> dict:
    """The three keys TRL trains on; others (id, strategy, ...) would only confuse its column handling."""
    missing = [key for key in PAIR_KEYS if not pair.get(key)]
    if missing:
        raise ValueError(f"preference pair {index} (id {pair.get('id')!r}) has no {', '.join(missing)}")
    return {key: pair[key] for key in PAIR_KEYS}
