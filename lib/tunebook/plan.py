"""`tunebook plan`: what a run would do and what its training stages would cost, before any compute.

Estimates come from the model config alone (instantiated on the meta device, so nothing is
allocated): parameter counts, LoRA parameters, memory for weights, optimizer state and activations,
and time from the training tokens at the throughput the params assume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from tunebook import paths, recipe
from tunebook.dataset import read_card
from tunebook.models import pretrained_options
from tunebook.params import Params, SftParams, base_config_path, demo_scale_warning

GB = 1024**3


@dataclass
class Estimate:
    stage: str
    params: int
    trainable: int
    train_tokens: int
    memory_gb: float
    hours: float


@dataclass
class Plan:
    estimates: list[Estimate]
    note: str  # why an estimate is missing, or where the train-set size came from
    max_hours: float
    max_memory_gb: float
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. demo-scale settings on a real model

    @property
    def hours(self) -> float:
        return sum(e.hours for e in self.estimates)

    @property
    def memory_gb(self) -> float:
        return max((e.memory_gb for e in self.estimates), default=0.0)

    @property
    def over_budget(self) -> bool:
        return self.hours > self.max_hours or self.memory_gb > self.max_memory_gb


def estimate(
    params: Params, params_file: Path, base: PretrainedConfig | None = None, before: Sequence[Estimate] = ()
) -> Plan:
    """The plan of SFT on the base model's config, or on `base` for a base the run itself builds first, after
    the `before` estimates (building it)."""
    budget = params.run.budget
    config, note = (base, "") if base is not None else _base_config(params, params_file)
    if config is None:
        return Plan([*before], note, budget.max_hours, budget.max_memory_gb)
    rows, note = _train_rows(params)
    sft = _sft_estimate(params, config, rows)
    warning = demo_scale_warning(params.sft, sft.params)
    return Plan([*before, sft], note, budget.max_hours, budget.max_memory_gb, [warning] if warning else [])


def _base_config(params: Params, params_file: Path) -> tuple[PretrainedConfig | None, str]:
    config_file = base_config_path(params, params_file)
    source = str(config_file) if config_file else str(paths.resolve(params.sft.base_model))
    if not config_file and not Path(source).is_dir():
        source = params.sft.base_model
    try:
        return AutoConfig.from_pretrained(source, **pretrained_options(weights=False)), ""
    except (OSError, ValueError) as err:
        return (
            None,
            f"no estimate: cannot read the config of {source} ({str(err).splitlines()[0]}); set sft.base_config",
        )


def _count(config: PretrainedConfig, target_modules: str | list[str], rank: int) -> tuple[int, int]:
    """Total parameters, and the LoRA parameters rank r adds on the targeted linear layers."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if target_modules == "all-linear" or name.rsplit(".", 1)[-1] in target_modules:
            lora += rank * (module.in_features + module.out_features)
    return total, lora


def _train_rows(params: Params) -> tuple[int, str]:
    dataset_dir = paths.run_dir(params.run.id) / "generate"
    if (dataset_dir / "card.json").exists():
        return read_card(dataset_dir)["splits"]["train"], "train rows: from this run's dataset"
    share = 1 - params.generate.val_fraction - params.generate.test_fraction
    return int(params.generate.max_samples * share), "train rows: upper bound from generate.max_samples"


def pretraining_estimate(
    stage: str, config: PretrainedConfig, steps: int, batch_size: int, length: int, params: Params
) -> Estimate:
    """Training every weight of a model from scratch: full blocks of `length` tokens, no checkpointing."""
    total, _ = _count(config, [], 0)
    tokens = steps * batch_size * length
    memory = total * 16 + _activations(config, batch_size, length, checkpointing=False)
    return Estimate(stage, total, total, tokens, memory / GB, _hours(6 * total * tokens, params))


def _sft_estimate(params: Params, config: PretrainedConfig, rows: int) -> Estimate:
    sft, trainer = params.sft, params.sft.trainer
    total, trainable = _trained(sft, config)
    per_step = trainer["per_device_train_batch_size"] * trainer["gradient_accumulation_steps"]
    steps = trainer["max_steps"]
    if steps <= 0:
        steps = math.ceil(rows / per_step) * math.ceil(trainer["num_train_epochs"])
    tokens = steps * per_step * _max_length(sft, config)  # an upper bound: shorter examples cost less
    memory = sum(sft_memory(sft, config).values()) * GB
    # Frozen weights need no weight gradients (4N FLOPs a token, not 6N); checkpointing recomputes the forward.
    flops = (6 if recipe.activation_checkpointing(trainer) else 4) * total * tokens
    return Estimate("sft", total, trainable, tokens, memory / GB, _hours(flops, params))


def _trained(sft: SftParams, config: PretrainedConfig) -> tuple[int, int]:
    """The model's parameters, and how many of them SFT trains."""
    if sft.method == "full":
        total, _ = _count(config, [], 0)
        return total, total
    return _count(config, sft.lora["target_modules"], sft.lora["r"])


def _max_length(sft: SftParams, config: PretrainedConfig) -> int:
    """The longest example SFT trains on: sft.trainer.max_length, or the model's context when it is null."""
    return sft.trainer["max_length"] or getattr(config, "max_position_embeddings", 2048)


def sft_memory(sft: SftParams, config: PretrainedConfig) -> dict[str, float]:
    """GB that SFT needs, by what holds it: the base's weights, the trained parameters (fp32 weights,
    gradients and two Adam moments) and the activations kept for the backward pass."""
    total, trainable = _trained(sft, config)
    batch, checkpointing = sft.trainer["per_device_train_batch_size"], recipe.activation_checkpointing(sft.trainer)
    frozen = 0 if sft.method == "full" else total
    bytes_per_weight = {"qlora": 0.55}.get(sft.method, 4 if sft.precision in ("fp32", "auto") and not _gpu() else 2)
    return {
        "weights": frozen * bytes_per_weight / GB,
        "trained parameters": trainable * 16 / GB,
        "activations": _activations(config, batch, _max_length(sft, config), checkpointing) / GB,
    }


def _activations(config: PretrainedConfig, batch: int, length: int, checkpointing: bool) -> float:
    """Bytes of activations kept for backward (Korthikanti et al. 2022, 16-bit, no sequence parallelism)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    per_layer = batch * length * hidden * 34 + 5 * heads * length**2 * batch
    kept = layers * batch * length * hidden * 2 + per_layer if checkpointing else layers * per_layer
    logits = batch * length * config.vocab_size * 4 * 2  # fp32 logits and their gradient
    return kept + logits


def _hours(flops: float, params: Params) -> float:
    return flops / (params.run.throughput_tflops * 1e12) / 3600


def _gpu() -> bool:
    return torch.cuda.is_available()


def format_plan(plan: Plan) -> str:
    width = max([8, *(len(e.stage) + 2 for e in plan.estimates)])  # a sweep's rows are named by variant
    lines = [f"{'stage':<{width}}{'params':>12}{'trainable':>12}{'tokens':>12}{'memory':>10}{'time':>10}"]
    for e in plan.estimates:
        lines.append(
            f"{e.stage:<{width}}{_human(e.params):>12}{_human(e.trainable):>12}{_human(e.train_tokens):>12}"
            f"{e.memory_gb:>8.1f}GB{_duration(e.hours):>10}"
        )
    if plan.note:
        lines.append(plan.note)
    lines += [f"warning: {warning}" for warning in plan.warnings]
    verdict = "OVER BUDGET: stops here unless --confirm" if plan.over_budget else "within budget"
    lines.append(
        f"total: {_duration(plan.hours)}, peak {plan.memory_gb:.1f} GB; budget {_duration(plan.max_hours)},"
        f" {plan.max_memory_gb:.0f} GB: {verdict}"
    )
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _duration(hours: float) -> str:
    return f"{hours:.1f}h" if hours >= 1 else f"{hours * 60:.1f}min"
