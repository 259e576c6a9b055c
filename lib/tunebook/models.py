"""Loading models and running them: chat template, batched greedy generation, reference NLL.

Inference only: nothing here imports a trainer, so a model can be evaluated and served without trl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    text: str
    stopped: bool  # ended its turn before max_new_tokens; a model that never stops was trained without its end token


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str, base: str, adapter: str | Path | None = None) -> LoadedModel:
    """A base model, optionally with a PEFT adapter on top.

    The tokenizer (and so the chat template) comes from the adapter directory when it has one: the
    template a model was trained with is the one it is evaluated and served with.
    """
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter:
        from peft import PeftModel  # peft is inference-safe; only imported when an adapter is used

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device()).eval()
    return LoadedModel(name, model, tokenizer)


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    temperature: float = 0.0,
) -> list[Generation]:
    """Answers to each conversation's last user turn, in batches with left padding; greedy at temperature 0."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    prompts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    answers = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc=f"generate {loaded.name}", disable=not progress):
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device())
        output = loaded.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            **({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        stopped = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
        answers += [Generation(text.strip(), ended) for text, ended in zip(texts, stopped, strict=True)]
    return answers


@torch.inference_mode()
def reference_nll(
    loaded: LoadedModel, conversations: list[list[dict]], batch_size: int, progress: bool = True
) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant turns (the references) and their token count."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    batches = range(0, len(conversations), batch_size)
    for start in tqdm(batches, desc=f"perplexity {loaded.name}", disable=not progress):
        encoded = tokenizer.apply_chat_template(
            conversations[start : start + batch_size],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            padding=True,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"].to(device())
        mask = torch.as_tensor(encoded["assistant_masks"], device=device()).bool()
        logits = loaded.model(input_ids=input_ids, attention_mask=encoded["attention_mask"].to(device())).logits
        targets = input_ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        ).item()
        count += int(mask[:, 1:].sum())
    return total, count


def perplexity(total_nll: float, tokens: int) -> float:
    return math.exp(total_nll / tokens) if tokens else float("nan")
