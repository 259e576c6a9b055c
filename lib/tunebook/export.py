"""Stage 05: ship the model that was evaluated, and prove it is that model.

The adapter is merged into a full-precision copy of its base (never into a 4-bit one), and the merge is
checked against base + adapter on evaluation prompts: logits within a tolerance and identical greedy
answers, or nothing is exported. The merged directory carries the tokenizer, the chat template and a
generation config whose end ids include the end-of-turn token, so a server stops where the model was
trained to stop.

Inference only: nothing here imports a trainer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from tunebook import generate, models, paths, registry
from tunebook.files import sha256_file
from tunebook.params import ExportParams

# What a PEFT adapter directory needs to be loaded and served; training_args.bin (a pickle) stays behind.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "special_tokens_map.json", "chat_template.jinja", "README.md")  # fmt: skip


class ExportError(ValueError):
    """An export that would ship a model unlike the evaluated one: the message says what and why."""


@dataclass
class Inputs:
    base_model: str
    adapter_dir: Path
    reference: models.LoadedModel  # base + adapter, as the evaluate stage ran it
    prompts: list[list[dict]]  # test prompts the export is checked on


def inputs(run_id: str, params: ExportParams) -> Inputs:
    """The registry model to ship, loaded as it was evaluated, and the test prompts to check it on."""
    spec = registry.resolve(params.model, run_id)
    if not spec["adapter"]:
        raise ExportError(f"{params.model} is a fully fine-tuned model, not an adapter: its directory "
                          f"{spec['base_model']} is already the merged model")  # fmt: skip
    test = generate.read_split(paths.stage_dir(run_id, "generate"), "test")[: params.verify_prompts]
    reference = models.load_model(params.model, spec["base_model"], spec["adapter"])
    return Inputs(spec["base_model"], Path(spec["adapter"]), reference, [row["messages"][:-1] for row in test])


def merge_and_verify(inputs: Inputs, params: ExportParams) -> tuple[PreTrainedModel, MergeCheck]:
    """The merged model, once it is shown to behave as base + adapter; otherwise ExportError."""
    dtype = torch.bfloat16 if params.dtype == "bf16" else torch.float32
    merged = merge(inputs.base_model, inputs.adapter_dir, dtype).to(models.device())
    check = verify_merge(merged, inputs.reference, inputs.prompts, params.max_new_tokens, params.tolerance)
    require(check)
    return merged, check


def merge(base_model: str, adapter_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """base + adapter as one model, merged into a full-precision copy of the base."""
    from peft import PeftModel  # the inference side of peft: loading and merging an adapter

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    refuse_quantized(base)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def refuse_quantized(model: PreTrainedModel) -> None:
    quantized = getattr(model, "is_loaded_in_4bit", False) or any(
        "4bit" in type(module).__name__ for module in model.modules()
    )
    if quantized:
        raise ExportError(
            "refusing to merge into a 4-bit base: the LoRA update would be added to weights rounded to 16 "
            "levels and rounded again, which silently corrupts the model; merge into the full-precision base "
            "(fp32 or bf16), then quantise the merged model (e.g. GGUF q8_0)"
        )


@dataclass
class MergeCheck:
    prompts: int
    max_logit_diff: float
    tolerance: float
    greedy_identical: int  # prompts whose greedy answers are the same text from both
    differing: list[dict]  # the prompts whose answers differ: question, both answers

    @property
    def ok(self) -> bool:
        return self.max_logit_diff <= self.tolerance and self.greedy_identical == self.prompts


@torch.inference_mode()
def verify_merge(
    merged: PreTrainedModel,
    reference: models.LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int,
    tolerance: float = 1e-3,
    batch_size: int = 16,
) -> MergeCheck:
    """Compare the merged model with base + adapter on the prompts: the largest logit difference on every
    prompt token, and whether greedy decoding gives each prompt the same answer."""
    tokenizer = reference.tokenizer
    texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    gap = 0.0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(models.device())
        expected = reference.model(input_ids=ids).logits.float()
        gap = max(gap, (merged(input_ids=ids).logits.float() - expected).abs().max().item())
    mine = models.LoadedModel("merged", merged, tokenizer)
    ours = models.generate(mine, conversations, max_new_tokens, batch_size, progress=False)
    theirs = models.generate(reference, conversations, max_new_tokens, batch_size, progress=False)
    differing = [{"question": c[-1]["content"], "merged": a.text, "base + adapter": b.text}
                 for c, a, b in zip(conversations, ours, theirs, strict=True) if a.text != b.text]  # fmt: skip
    return MergeCheck(len(conversations), gap, tolerance, len(conversations) - len(differing), differing)


def require(check: MergeCheck) -> None:
    """Block the export unless the merged model behaves as base + adapter."""
    if not check.ok:
        raise ExportError(
            f"the merged model is not base + adapter: logits differ by up to {check.max_logit_diff:.3g} "
            f"(tolerance {check.tolerance:g}) and {check.prompts - check.greedy_identical} of {check.prompts} greedy "
            "answers differ; nothing was exported"
        )


def end_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids generation must stop at: EOS, and the token that ends an assistant turn in the chat template
    (a template ending turns with its own token, e.g. <|im_end|> or <|eot_id|>, never emits EOS)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    after = rendered[rendered.rindex("ANSWER") + len("ANSWER") :]
    tokens = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    first_special = next((t for t in tokens if t in special), None)
    if first_special is not None and first_special not in ids:
        ids.append(first_special)
    if not ids:
        raise ExportError("the tokenizer has no EOS and its chat template ends turns with no special token")
    return ids


def save_merged(merged: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """safetensors weights, the tokenizer with its chat template, and a generation config that stops at
    every end id."""
    stops = end_ids(tokenizer)
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def save_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """The PEFT adapter alone, with its tokenizer and chat template; no pickled training state."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter_dir / name).exists():
            shutil.copy2(adapter_dir / name, out_dir / name)
    return out_dir


def vllm_commands(merged_dir: Path, base_model: str, adapter_dir: Path, name: str) -> dict[str, str]:
    """How to serve the export with vLLM: the merged model, or the base with the adapter as a LoRA module."""
    return {
        "merged": f"vllm serve {merged_dir} --served-model-name {name} --generation-config auto",
        "base + adapter": f"vllm serve {base_model} --enable-lora --lora-modules {name}={adapter_dir}",
    }


def files_table(directory: Path) -> pd.DataFrame:
    """Every exported file with its size and SHA-256, for the report."""
    rows = [{"file": str(p.relative_to(directory)), "MB": round(p.stat().st_size / 1e6, 3), "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file()]  # fmt: skip
    return pd.DataFrame(rows, columns=["file", "MB", "sha256"])
