"""Stage 02: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, assistant-only loss."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
from transformers.integrations import TensorBoardCallback
from trl import SFTConfig, SFTTrainer

from tunebook import registry
from tunebook.files import hash_tree, write_atomic
from tunebook.generate import read_card, read_split
from tunebook.params import SftParams


@dataclass
class SftResult:
    adapter_dir: Path
    base_model: str
    history: pd.DataFrame  # one row per logged step: step, split (train/eval), loss
    metrics: dict[str, float]
    trainable_params: int
    total_params: int


def train_sft(
    params: SftParams, base_model: str, dataset_dir: Path, out_dir: Path, seed: int, progress: bool = True
) -> SftResult:
    """Train an adapter on the train split, evaluating on val; the adapter lands in out_dir/adapter."""
    # Seed before the model exists: SFTTrainer initialises the LoRA weights before Trainer seeds anything.
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, **_load_kwargs(params))
    datasets = {
        split: Dataset.from_list([{"messages": row["messages"]} for row in read_split(dataset_dir, split)])
        for split in ("train", "val")
    }
    tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(params, out_dir, seed, has_val=len(datasets["val"]) > 0, progress=progress),
        train_dataset=datasets["train"],
        eval_dataset=datasets["val"] if len(datasets["val"]) else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=params.lora_r,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=params.target_modules,
            task_type="CAUSAL_LM",
        ),
        callbacks=[TensorBoardCallback(tb_writer=tensorboard)],
    )
    trainer.train()
    metrics = {"train_loss": _last(trainer.state.log_history, "train_loss")}
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    tensorboard.close()

    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # adapter weights + tokenizer with its chat template
    trainable, total = _count_parameters(trainer.model)
    history = _history(trainer.state.log_history)
    write_atomic(out_dir / "log_history.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
    return SftResult(adapter_dir, base_model, history, metrics, trainable, total)


def register_adapter(run_id: str, result: SftResult, params: SftParams, dataset_dir: Path) -> str:
    """Write the adapter's model card and record it in the registry as RUN_ID:sft."""
    base = Path(result.base_model)
    entry = {
        "base_model": result.base_model,
        "base_hash": hash_tree(base) if base.is_dir() else None,
        "adapter": str(result.adapter_dir),
        "dataset_hash": read_card(dataset_dir)["dataset_hash"],
        "params": params.model_dump(),
        "metrics": result.metrics,
        "trainable_params": result.trainable_params,
    }
    write_atomic(result.adapter_dir / "README.md", _model_card(run_id, entry))
    entry["adapter_hash"] = hash_tree(result.adapter_dir)
    return registry.register(run_id, "sft", entry)


def _model_card(run_id: str, entry: dict) -> str:
    params = entry["params"]
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in entry["metrics"].items())
    return f"""---
library_name: peft
tags: [lora, sft, trl, tunebook]
---
# LoRA adapter `{run_id}:sft`

Trained by tunebook with TRL's SFTTrainer (assistant-only loss) on the chat template saved beside it.

- Base model: `{entry["base_model"]}` (content hash `{entry["base_hash"]}`)
- Dataset hash: `{entry["dataset_hash"]}`
- Method: {params["method"]}, r={params["lora_r"]}, alpha={params["lora_alpha"]}, dropout={params["lora_dropout"]},
  target modules {params["target_modules"]}; {entry["trainable_params"]:,} trainable parameters
- Optimisation: lr {params["learning_rate"]} ({params["lr_scheduler"]}), batch {params["batch_size"]} x
  {params["grad_accum"]} accumulation, {params["epochs"]} epochs / max_steps {params["max_steps"]},
  max_length {params["max_length"]}

| metric | value |
|---|---|
{metrics}
"""


def _load_kwargs(params: SftParams) -> dict:
    if params.method == "qlora":
        # NF4 with double quantisation: the QLoRA paper's recipe. Compute in bf16 where the GPU has it.
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        }
    return {"dtype": torch.bfloat16 if _precision(params) == "bf16" else torch.float32}


def _precision(params: SftParams) -> str:
    if params.precision != "auto":
        return params.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def _sft_config(params: SftParams, out_dir: Path, seed: int, has_val: bool, progress: bool) -> SFTConfig:
    precision = _precision(params)
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        assistant_only_loss=True,
        max_length=params.max_length,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        activation_checkpointing=params.gradient_checkpointing,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,
        logging_steps=params.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_val else "no",
        eval_steps=params.eval_steps,
        save_steps=params.save_steps,
        save_total_limit=2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        report_to="none",  # TensorBoard is attached explicitly so its logs land in the run directory
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def _last(log_history: list[dict], key: str) -> float:
    return next(entry[key] for entry in reversed(log_history) if key in entry)


def _history(log_history: list[dict]) -> pd.DataFrame:
    rows = []
    for entry in log_history:
        if "loss" in entry:
            rows.append({"step": entry["step"], "split": "train", "loss": entry["loss"]})
        if "eval_loss" in entry:
            rows.append({"step": entry["step"], "split": "eval", "loss": entry["eval_loss"]})
    return pd.DataFrame(rows, columns=["step", "split", "loss"])


def _count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
