"""Stage 02: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, assistant-only loss."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig
from torch.utils.tensorboard import SummaryWriter
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from tunebook import chat, mix, plan, quality, recipe, registry
from tunebook.chunking import Chunk
from tunebook.dataset import read_card, read_split
from tunebook.files import hash_tree, sha256_text, write_atomic
from tunebook.models import load_base, pretrained_options
from tunebook.params import SftParams, accelerate_config_path, demo_scale_warning
from tunebook.servers import free_port


def prepare_template(
    tokenizer: PreTrainedTokenizerBase, setting: str, conversations: list[list[dict]]
) -> tuple[chat.ChatTemplate, chat.TokenMask]:
    """The chat template SFT trains with (sft.chat_template), given to the tokenizer, and the loss mask of the
    first training example. Checked before any compute: a template TRL swapped in for the model's own must
    render the training examples exactly as the model's own does (so the model is prompted at inference as it
    was trained), and the loss must train the answer and its end-of-turn token and nothing of the prompt."""
    stock = chat.stock_template(tokenizer)
    template = chat.choose(tokenizer, setting)
    if setting == "auto" and stock is not None:
        chat.check_rendering(stock, template, tokenizer, conversations)
    chat.apply(tokenizer, template)
    return template, chat.token_mask(tokenizer, template, conversations[0])


# Training examples whose rendering a swapped-in template is checked on: the rows differ in content only.
TEMPLATE_CHECKS = 32


class TrainingDiverged(RuntimeError):
    pass


class PackingError(ValueError):
    """Packed examples would attend to each other under this attention backend."""


class StopOnNonFinite(TrainerCallback):
    """Stop at the first logged loss that is NaN or infinite, naming the step, instead of training on garbage."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingDiverged(
                    f"{key} became {value} at step {state.global_step} (logged every {args.logging_steps} steps): "
                    "lower sft.learning_rate, use fp32 or bf16 rather than fp16, or look for broken rows in the data"
                )


def check_packing_isolation(model: PreTrainedModel, tolerance: float = 1e-4) -> None:
    """Packed examples must not attend to each other. Padding-free batches mark example boundaries only by
    position ids; an attention backend that ignores them would let every example see the ones before it.
    Compare two examples run alone with the same two packed into one row."""
    first, second = torch.arange(3, 11).unsqueeze(0), torch.arange(20, 26).unsqueeze(0)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(8), torch.arange(6)]).unsqueeze(0)
    device = next(model.parameters()).device
    # As the trainer runs it: without a KV cache, which would turn off transformers' packed-sequence masks.
    with torch.no_grad():
        alone = model(input_ids=second.to(device), use_cache=False).logits[0]
        together = model(input_ids=packed.to(device), position_ids=positions.to(device), use_cache=False).logits[0, 8:]
    gap = (alone.float() - together.float()).abs().max().item()
    if gap > tolerance * max(1.0, alone.float().abs().max().item()):
        raise PackingError(
            f"with {model.config._attn_implementation!r} attention, packed examples attend to each other (logits "
            f"differ by {gap:.3g}): set sft.packing=false, or use an attention backend that honours position ids"
        )


class PeakMemory(TrainerCallback):
    """The memory training really took, beside `tunebook plan`'s estimate. On a GPU: torch's peak
    allocation, weights to activations. On a CPU, where torch keeps no such count (and the process's
    resident size mostly measures libraries and the allocator): the bytes of the weights, buffers,
    quantisation state and optimizer state at each step's end; activations are freed by then."""

    def __init__(self) -> None:
        self.peak = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = max(self.peak, _tensor_bytes(model, optimizer))

    def peak_gb(self) -> float:
        return round(self.peak / 1024**3, 3)


def _tensor_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():  # a 4-bit weight keeps its scales beside it, not as a parameter
        if (quant_state := getattr(param, "quant_state", None)) is not None:
            tensors += [v for v in quant_state.as_dict(packed=True).values() if torch.is_tensor(v)]
    tensors += [v for moments in optimizer.state.values() for v in moments.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@dataclass
class SftResult:
    output_dir: Path  # the adapter, or the whole model with `method: full`
    base_model: str
    base_hash: str  # content hash of a local base model's directory, or its hub id
    history: pd.DataFrame  # one row per logged step: step, split (train/eval), loss
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    resumed_from: str | None = None  # the checkpoint an interrupted run was resumed from
    chat_template: dict | None = None  # the template trained with (chat.ChatTemplate.record); None for `text`


@dataclass
class TrainingData:
    train: Dataset
    val: Dataset
    data_hash: str  # what the registry records as the model's training data
    # Where it came from, so that worker processes of a data-parallel run can build it again.
    dataset_dir: Path
    chunks: list[Chunk]
    warnings: list[str] = field(default_factory=list)  # the dataset card's, e.g. thin data, for the SFT report
    mixture: mix.Mixture | None = None  # with sft.mix: where each train row came from


def training_data(params: SftParams, dataset_dir: Path, chunks: list[Chunk], seed: int = 0) -> TrainingData:
    """`chat`: the generate stage's rows in TRL's `messages` format. `text`: continued pre-training on the
    corpus chunks, 1 in 20 (by a hash of the chunk id, so stably) held out to evaluate on. With `sft.mix`, the
    train rows get their share of general rows (tunebook.mix), seeded."""
    if params.task == "chat":
        train_rows = [{"messages": row["messages"]} for row in read_split(dataset_dir, "train")]
        val = Dataset.from_list([{"messages": row["messages"]} for row in read_split(dataset_dir, "val")])
        card = read_card(dataset_dir)
        warnings = card.get("warnings", [])  # a card written before cards had warnings has none
        data_hash = card["dataset_hash"]
    else:
        held_out = [int(sha256_text(chunk.id)[:8], 16) % 20 == 0 for chunk in chunks]
        train_rows = [{"text": c.text} for c, out in zip(chunks, held_out, strict=True) if not out]
        val = Dataset.from_list([{"text": c.text} for c, out in zip(chunks, held_out, strict=True) if out])
        warnings, data_hash = [], sha256_text("".join(chunk.id for chunk in chunks))
    if not params.mix:
        return TrainingData(Dataset.from_list(train_rows), val, data_hash, dataset_dir, chunks, warnings)
    test = [quality.conversation_text(row) for row in read_split(dataset_dir, "test")] if params.task == "chat" else []
    against = test + mix.evaluation_texts(params.mix_against or [])
    shape = "messages" if params.task == "chat" else "text"
    mixture = mix.mix(train_rows, params.mix, shape, against, params.decontamination_ngram, seed)
    mixed_hash = sha256_text(data_hash + mixture.data_hash)
    return TrainingData(Dataset.from_list(mixture.rows), val, mixed_hash, dataset_dir, chunks, warnings, mixture)


def train_sft(
    params: SftParams, base_model: str, data: TrainingData, out_dir: Path, seed: int, progress: bool = True
) -> SftResult:
    """Train on data.train, evaluating on data.val: a LoRA adapter in out_dir/adapter, or with
    `method: full` the whole model in out_dir/model. With `processes` > 1, in that many worker processes
    under `accelerate launch`, sharing the work as `accelerate_config` says (DDP, FSDP or DeepSpeed)."""
    if params.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(params, base_model, data, out_dir, seed)
    state = PartialState()
    memory = PeakMemory()  # before the model loads: the GPU peak includes the weights, as the estimate does
    # Seed before the model exists: SFTTrainer initialises the LoRA weights before Trainer seeds anything.
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model, **pretrained_options(weights=False))
    template = None
    if params.task == "chat":
        template, _ = prepare_template(tokenizer, params.chat_template, data.train[:TEMPLATE_CHECKS]["messages"])
    model = load_base(base_model, tokenizer, **_load_kwargs(params))
    warn_demo_scale(params, model)
    if params.trainer["packing"]:
        check_packing_isolation(model)
    tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard")) if state.is_main_process else None
    train, val = rows_for(template, data.train), rows_for(template, data.val)
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(params, out_dir, seed, has_val=len(val) > 0, progress=progress, template=template),
        train_dataset=train,
        eval_dataset=val if len(val) else None,
        processing_class=tokenizer,
        peft_config=lora_config(params, new_token_rows(template, tokenizer)),
        callbacks=[StopOnNonFinite(), memory, *([TensorBoardCallback(tb_writer=tensorboard)] if tensorboard else [])],
    )
    # Hashed once: it keys the checkpoints and goes into the registry (a real base is gigabytes to read).
    base_hash = _model_hash(base_model)
    # The main process clears stale checkpoints and writes the key before the others look.
    with state.main_process_first():
        checkpoint = resumable_checkpoint(out_dir / "checkpoints", _training_key(params, base_hash, data, seed))
    wandb_run = _start_wandb(params, out_dir) if state.is_main_process else None
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {
            "train_loss": _last(trainer.state.log_history, "train_loss"),
            # Real (non-padding) tokens a second of this session: what packing and padding-free batches buy.
            "train_tokens_per_s": _last(trainer.state.log_history, "train_tokens_per_second"),
            "peak_memory_gb": memory.peak_gb(),
        }
        if trainer.eval_dataset is not None:
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    except torch.OutOfMemoryError:
        raise MemoryError(out_of_memory_advice(params)) from None
    finally:
        if tensorboard:
            tensorboard.close()
        if wandb_run is not None:
            wandb_run.finish()

    output_dir = out_dir / ("model" if params.method == "full" else "adapter")
    trainer.save_model(str(output_dir))  # the weights (or adapter) + the tokenizer with its chat template
    trainable, total = _count_parameters(trainer.model)
    write_atomic(out_dir / "log_history.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
    return SftResult(
        output_dir,
        base_model,
        base_hash,
        history(trainer.state.log_history, {"loss": "loss"}, {"train": "", "eval": "eval_"}),
        metrics,
        trainable,
        total,
        resumed_from=checkpoint,
        chat_template=template.record() if template else None,
    )


def _start_wandb(params: SftParams, out_dir: Path):
    """A W&B run logging into out_dir/wandb, which the trainer's W&B callback then logs to."""
    if not params.wandb_project:
        return None
    import wandb  # only needed when W&B is on

    return wandb.init(
        project=params.wandb_project, name=out_dir.parent.name, dir=str(out_dir), config=params.model_dump()
    )


def _launch(params: SftParams, base_model: str, data: TrainingData, out_dir: Path, seed: int) -> SftResult:
    """Run train_sft in `params.processes` worker processes and return the main worker's result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "params": params.model_dump(),
        "base_model": base_model,
        "dataset_dir": str(data.dataset_dir),
        "chunks": [asdict(c) for c in data.chunks],
        "out_dir": str(out_dir),
        "seed": seed,
    }
    write_atomic(out_dir / "launch.json", json.dumps(spec) + "\n")
    (out_dir / "result.json").unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config_path(params)),
        "--num_processes",
        str(params.processes),
        "--main_process_port",
        str(free_port()),
        "-m",
        "tunebook.sft",
        str(out_dir / "launch.json"),
    ]
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"data-parallel training failed in one of its {params.processes} processes (see above)")
    return _read_result(out_dir / "result.json")


def _worker(spec_path: str) -> None:
    """One worker process (`python -m tunebook.sft launch.json` under accelerate launch)."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    params = SftParams.model_validate(spec["params"])
    data = training_data(params, Path(spec["dataset_dir"]), [Chunk(**c) for c in spec["chunks"]], spec["seed"])
    out_dir = Path(spec["out_dir"])
    result = train_sft(params, spec["base_model"], data, out_dir, spec["seed"], progress=False)
    if PartialState().is_main_process:
        record = {**asdict(result), "output_dir": str(result.output_dir), "history": result.history.to_dict("records")}
        write_atomic(out_dir / "result.json", json.dumps(record) + "\n")


def _read_result(path: Path) -> SftResult:
    record = json.loads(path.read_text(encoding="utf-8"))
    record["output_dir"] = Path(record["output_dir"])
    record["history"] = pd.DataFrame(record["history"], columns=["step", "split", "loss"])
    return SftResult(**record)


def resumable_checkpoint(checkpoints_dir: Path, key: str) -> str | None:
    """The last checkpoint of an interrupted run of this same training, else None (and stale checkpoints go).

    Checkpoints are only worth resuming from when the base, data, params and seed are the ones they were
    made with: the key of those is kept beside them.
    """
    key_file = checkpoints_dir / "training_key"
    if checkpoints_dir.is_dir() and not (key_file.is_file() and key_file.read_text() == key):
        shutil.rmtree(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    # A kill during a save leaves a checkpoint without its trainer state, which the Trainer writes last;
    # resuming from it would fail, so it goes and the one before it is resumed.
    for checkpoint in checkpoints_dir.glob("checkpoint-*"):
        if checkpoint.is_dir() and not _complete(checkpoint):
            shutil.rmtree(checkpoint)
    return get_last_checkpoint(str(checkpoints_dir))


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _model_hash(base_model: str) -> str:
    return hash_tree(Path(base_model)) if Path(base_model).is_dir() else base_model


def _training_key(params: SftParams, base_hash: str, data: TrainingData, seed: int) -> str:
    """What the checkpoints beside it were trained from: the sft params, the base, the dataset and the seed. A
    resumed run continues its checkpoints only when this matches; otherwise they are deleted and training starts
    over (the README's Caches table)."""
    identity = {"params": params.model_dump(), "base": base_hash, "data": data.data_hash, "seed": seed}
    return sha256_text(json.dumps(identity, sort_keys=True))


def out_of_memory_advice(params: SftParams) -> str:
    """What to change when training runs out of memory, from the settings in use, cheapest first."""
    steps, trainer = [], params.trainer
    batch, accumulation = trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"]
    if batch > 1:
        steps.append(
            f"sft.trainer.per_device_train_batch_size={batch // 2} with sft.trainer."
            f"gradient_accumulation_steps={accumulation * 2} (the same effective batch)"
        )
    if not recipe.activation_checkpointing(trainer):
        steps.append("sft.trainer.activation_checkpointing=true")
    steps.append(f"a shorter sft.trainer.max_length (now {trainer['max_length']})")
    if params.method != "qlora":
        steps.append("sft.method=qlora (a 4-bit base)")
    return "out of memory while training; try " + "; or ".join(steps) + " (`tunebook plan` estimates the memory)"


def memory_comparison(params: SftParams, base_model: str, result: SftResult) -> pd.DataFrame:
    """`tunebook plan`'s memory estimate by component, and the peak this run measured beside its total."""
    estimate = plan.sft_memory(params, AutoConfig.from_pretrained(base_model, **pretrained_options(weights=False)))
    rows = [{"memory": name, "estimated GB": gb} for name, gb in estimate.items()]
    measured = "peak allocated on the GPU" if torch.cuda.is_available() else "weights + optimizer state (CPU)"
    rows.append(
        {
            "memory": "total",
            "estimated GB": sum(estimate.values()),
            "measured peak GB": result.metrics["peak_memory_gb"],
            "measured as": measured,
        }
    )
    return pd.DataFrame(rows).round(3).fillna("")


def template_check(
    params: SftParams, base_model: str, data: TrainingData
) -> tuple[chat.ChatTemplate, chat.TokenMask] | None:
    """The template train_sft chooses and its check on the first training example, for the report (chat only)."""
    if "messages" not in data.train.column_names:
        return None
    tokenizer = AutoTokenizer.from_pretrained(base_model, **pretrained_options(weights=False))
    return prepare_template(tokenizer, params.chat_template, data.train[:TEMPLATE_CHECKS]["messages"])


def mixture_table(data: TrainingData, result: SftResult) -> pd.DataFrame | None:
    """With sft.mix, the train rows by source: rows, share, tokens through the chat template the model trained
    with, and the rows left out for sharing an n-gram with a test or evaluation text."""
    if data.mixture is None:
        return None
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir, **pretrained_options(weights=False))
    return mix.table(data.mixture, tokenizer)


def register_model(run_id: str, result: SftResult, params: SftParams, data: TrainingData) -> str:
    """Write the model card and record the model in the registry as RUN_ID:sft."""
    full = params.method == "full"
    entry = {
        "base_model": result.base_model,
        "base_hash": result.base_hash if Path(result.base_model).is_dir() else None,
        "adapter": None if full else str(result.output_dir),
        "model_dir": str(result.output_dir) if full else None,
        "dataset_hash": data.data_hash,
        "params": params.model_dump(),
        "metrics": result.metrics,
        "trainable_params": result.trainable_params,
        "chat_template": result.chat_template,
        # with sft.mix: the train rows by source
        "mixture": dict(Counter(data.mixture.sources)) if data.mixture else None,
    }
    write_atomic(result.output_dir / "README.md", _model_card(run_id, entry))
    entry["output_hash"] = hash_tree(result.output_dir)
    return registry.register(run_id, "sft", entry)


def _model_card(run_id: str, entry: dict) -> str:
    params = entry["params"]
    trainer, lora = params["trainer"], params["lora"]
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in entry["metrics"].items())
    adapter = (
        ""
        if params["method"] == "full"
        else (
            f", r={lora['r']}, alpha={lora['lora_alpha']}, dropout={lora.get('lora_dropout', 0.0)}, "
            f"target modules {lora['target_modules']}"
        )
    )
    kind = "Fine-tuned model" if params["method"] == "full" else "LoRA adapter"
    template = entry["chat_template"]
    task = (
        f"on question/answer chats with the chat template saved beside it ({template['source']}, hash "
        f"`{template['hash']}`), the loss on the {template['loss']}'s tokens only"
        if template
        else "as continued pre-training on the corpus text"
    )
    mixed = entry.get("mixture")
    mixture = f"; train rows by source: {', '.join(f'{k} {v}' for k, v in mixed.items())}" if mixed else ""
    return f"""---
library_name: {"transformers" if params["method"] == "full" else "peft"}
tags: [{params["method"]}, sft, trl, tunebook]
---
# {kind} `{run_id}:sft`

Trained by tunebook with TRL's SFTTrainer {task}.

- Base model: `{entry["base_model"]}` (content hash `{entry["base_hash"]}`)
- Dataset hash: `{entry["dataset_hash"]}`{mixture}
- Method: {params["method"]}{adapter}; {entry["trainable_params"]:,} trainable parameters
- Optimisation: lr {trainer["learning_rate"]} ({trainer["lr_scheduler_type"]}), batch
  {trainer["per_device_train_batch_size"]} x {trainer["gradient_accumulation_steps"]} accumulation,
  {trainer["num_train_epochs"]} epochs / max_steps {trainer["max_steps"]}, max_length {trainer["max_length"]}
- Every setting: the `params` of this model's entry in tunebook's registry (`data/registry.json`)

| metric | value |
|---|---|
{metrics}
"""


def _load_kwargs(params: SftParams) -> dict:
    if params.method == "qlora":
        return {"quantization_config": quantization_config(params)}
    return {"dtype": torch.bfloat16 if precision(params.precision) == "bf16" else torch.float32}


def quantization_config(params: SftParams) -> BitsAndBytesConfig | None:
    """The 4-bit base of `method: qlora`, from sft.quantization (NF4, double quantisation, by default)."""
    return BitsAndBytesConfig(**params.quantization) if params.method == "qlora" else None


def lora_config(params: SftParams, new_token_rows: list[int] | None = None) -> LoraConfig | None:
    """The adapter trained by `method: lora` and `qlora`, from sft.lora; None with `full`. The rows of tokens a
    chat template brought are trained too (see new_token_rows)."""
    if params.method == "full":
        return None
    return LoraConfig(**params.lora, task_type="CAUSAL_LM", trainable_token_indices=new_token_rows)


def new_token_rows(template: chat.ChatTemplate | None, tokenizer: PreTrainedTokenizerBase) -> list[int] | None:
    """The input-embedding rows of the tokens the template brought, trained as TRL trains a cloned template's.
    An output head not tied to the embedding (Llama 3 8B, Mistral 7B) keeps its mean-initialised rows for them:
    TRL's fused loss reads the head's weight directly, past any PEFT wrapper, so the model learns to write its
    new end-of-turn token through its hidden states alone."""
    if template is None or not template.added_tokens:
        return None
    return tokenizer.convert_tokens_to_ids(template.added_tokens)


def rows_for(template: chat.ChatTemplate | None, split: Dataset) -> Dataset:
    """A split as TRL reads it for the template's loss: `messages` for an assistant-only loss, prompt/completion
    rows for a loss on what follows the rendered prompt."""
    if template is None or template.loss == "assistant":
        return split
    return Dataset.from_list([chat.as_prompt_completion(messages) for messages in split["messages"]])


def warn_demo_scale(params: SftParams, model: PreTrainedModel) -> None:
    """Warn when a real base (over 100M parameters) is about to train with the demo's settings."""
    message = demo_scale_warning(params, model.num_parameters())
    if message:
        warnings.warn(message, stacklevel=2)


def precision(setting: str) -> str:
    """The precision to train in: the setting, or with `auto`, bf16 on a GPU that has it and fp32 elsewhere."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def trainer_fields(precision_setting: str, out_dir: Path, seed: int, progress: bool) -> dict:
    """The fields tunebook sets itself in every TRL config it trains with (the params' blocks may not set them)."""
    dtype = precision(precision_setting)
    return {
        "output_dir": str(out_dir / "checkpoints"),
        "bf16": dtype == "bf16",
        "fp16": dtype == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "report_to": "none",
        "disable_tqdm": not progress,
    }


def _sft_config(
    params: SftParams, out_dir: Path, seed: int, has_val: bool, progress: bool, template: chat.ChatTemplate | None
) -> SFTConfig:
    """sft.trainer (tunebook's defaults under the params' own keys), and what tunebook sets itself."""
    # Evaluation batches as large as the training ones, unless the block sets them.
    trainer = {"per_device_eval_batch_size": params.trainer["per_device_train_batch_size"], **params.trainer}
    return SFTConfig(
        **trainer,
        **trainer_fields(params.precision, out_dir, seed, progress)
        # TensorBoard is attached explicitly so that its logs land in the run directory.
        | {"report_to": ["wandb"] if params.wandb_project else "none"},
        # The loss the chat template allows (see tunebook.chat); continued pre-training (no template) trains all.
        assistant_only_loss=template is not None and template.loss == "assistant",
        completion_only_loss=template is not None and template.loss == "completion",
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a NaN must reach StopOnNonFinite, not be averaged away
        eval_strategy="steps" if has_val else "no",
        run_name=out_dir.parent.name,
    )


def resolved_configs(
    params: SftParams, data: TrainingData, out_dir: Path, seed: int, template: chat.ChatTemplate | None
) -> pd.DataFrame:
    """What train_sft trains with beyond the libraries' own defaults: each field of the resolved SFTConfig,
    LoraConfig and BitsAndBytesConfig that differs from the library's default, for the report."""
    return recipe.differences(
        {
            "SFTConfig": _sft_config(
                params, out_dir, seed, has_val=len(data.val) > 0, progress=True, template=template
            ),
            "LoraConfig": lora_config(params),
            "BitsAndBytesConfig": quantization_config(params),
        }
    )


def _last(log_history: list[dict], key: str) -> float:
    return next(entry[key] for entry in reversed(log_history) if key in entry)


def history(log_history: list[dict], columns: dict[str, str], splits: dict[str, str]) -> pd.DataFrame:
    """A trainer's log history as a table (the SFT, DPO and reward trainers share it): a row per logged step
    and split (split name -> the prefix of its keys, `eval_` for evaluation) that logged any of `columns`
    (column name -> logged key); a key the step did not log is left empty."""
    rows = []
    for entry in log_history:
        for split, prefix in splits.items():
            logged = {name: entry.get(prefix + key) for name, key in columns.items()}
            if any(value is not None for value in logged.values()):
                rows.append({"step": entry["step"], "split": split, **logged})
    return pd.DataFrame(rows, columns=["step", "split", *columns])


def _count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    _worker(sys.argv[1])
