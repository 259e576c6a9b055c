"""The pass-through blocks: tunebook's real-model defaults for each library config, the fields tunebook sets itself,
where the keys of earlier params files went, and which settings are demo-scale.

A block is validated by tunebook.recipe against its class (`trl.SFTConfig`, `peft.LoraConfig`...) when params load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunebook import recipe

if TYPE_CHECKING:
    from tunebook.params.schema import SftParams

# tunebook's real-model defaults for each pass-through block: the one place they live. A params file's block
# (or a notebook's dict) is merged over them; the demo's files and notebooks set their own, demo-scale values.
SFT_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.SFTConfig
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # below 1: a share of the training steps (transformers 5 has no warmup_ratio)
    "num_train_epochs": 3.0,
    "max_steps": -1,  # > 0 overrides num_train_epochs
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_length": 512,
    # batches of similar lengths, each padded only to its longest example: little compute spent on padding
    "train_sampling_strategy": "group_by_length",
    "packing": False,  # best-fit packing into max_length rows, padding-free (checked: no attention across them)
    "activation_checkpointing": False,  # TRL turns it on by default: memory for ~20% more compute
    "logging_steps": 10,
    "logging_first_step": True,
    "eval_steps": 50,
    "save_steps": 100,
    "save_total_limit": 2,
}
SFT_LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
# NF4 with double quantisation: the QLoRA paper's recipe.
SFT_QUANTIZATION_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
DPO_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.DPOConfig
    "beta": 0.1,  # the KL strength: higher stays closer to the reference
    "learning_rate": 5e-6,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_length": 512,
    "precompute_ref_log_probs": False,  # the reference's log-probs once up front, to save memory
    "activation_checkpointing": True,  # TRL's choice: memory for ~20% more compute
    "logging_steps": 5,
    "logging_first_step": True,
    "save_strategy": "no",
}
REWARD_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.RewardConfig
    "learning_rate": 1e-4,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 8,
    "max_length": 512,
    "activation_checkpointing": True,  # TRL's choice for reward models: memory over a little compute
    "logging_steps": 0.05,  # about 20 points of history whatever the run's length
    "logging_first_step": True,
    "save_strategy": "no",
}
REWARD_LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
GRPO_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.GRPOConfig
    "learning_rate": 1e-5,  # TRL's 1e-6 is for full weights; a LoRA adapter moves with ~10x
    # KL to the reference (the starting adapter) in the loss: TRL's default 0 would neither hold the policy nor
    # measure how far it went
    "beta": 0.04,
    "num_generations": 8,  # completions a prompt: the group whose rewards are compared
    "per_device_train_batch_size": 8,  # completions a step; a multiple of num_generations
    "max_completion_length": 256,
    "temperature": 1.0,
    "num_train_epochs": 1.0,
    "max_steps": -1,  # > 0 overrides num_train_epochs
    "activation_checkpointing": False,
    "logging_steps": 1,  # every step: the report's curves
    "logging_first_step": True,
    "save_strategy": "no",
}

# Fields of the libraries' configs that tunebook sets itself, and what to do instead.
_TRAINER_OWNED = {
    "output_dir": "set run.id instead (a stage writes under data/runs/<run.id>/)",
    "run_name": "set run.id instead",
    "seed": "set the top-level seed instead",
    "report_to": "set sft.wandb_project instead (TensorBoard always logs)",
    "use_cpu": "it trains on the GPU when there is one (CUDA_VISIBLE_DEVICES= hides it)",
    "bf16": "set {stage}.precision instead",
    "fp16": "set {stage}.precision instead",
    "eval_strategy": "it evaluates whenever there is a validation split (set {stage}.val_fraction)",
    "disable_tqdm": "the progress bar follows the notebook",
    "model_init_kwargs": "set {stage}.precision instead (tunebook loads the model)",
    "logging_nan_inf_filter": "a NaN loss must reach tunebook's check, which stops training",
}
SFT_TRAINER_OWNED = {
    **{key: hint.format(stage="sft") for key, hint in _TRAINER_OWNED.items()},
    "eval_strategy": "it evaluates every sft.trainer.eval_steps when there is a validation split",
    "model_init_kwargs": "set sft.precision or sft.quantization instead (tunebook loads the model)",
    "assistant_only_loss": "the loss follows sft.chat_template (tunebook.chat) and sft.task",
    "completion_only_loss": "the loss follows sft.chat_template (tunebook.chat) and sft.task",
    "include_num_input_tokens_seen": "it counts the non-padding tokens for its tokens/s",
}
DPO_TRAINER_OWNED = {
    **{key: hint.format(stage="dpo") for key, hint in _TRAINER_OWNED.items()},
    "report_to": "DPO reports in its notebook",
}
REWARD_TRAINER_OWNED = {
    **DPO_TRAINER_OWNED,
    "report_to": "the reward model reports in the DPO notebook",
    "bf16": "the reward model keeps fp32 weights, with bf16 autocast on a GPU that has it",
    "fp16": "the reward model keeps fp32 weights, with bf16 autocast on a GPU that has it",
    "eval_strategy": "its pairwise accuracy is measured after training (set dpo.reward.held_out_fraction)",
    "model_init_kwargs": "the reward model loads in fp32 (its head's small updates would round away in bf16)",
}
GRPO_TRAINER_OWNED = {
    **{key: hint.format(stage="rl") for key, hint in _TRAINER_OWNED.items()},
    "report_to": "RL reports in its notebook",
    "eval_strategy": "the RL stage re-evaluates on the test split after training",
    "reward_weights": "set the weight of each rl.rewards entry instead",
    "log_completions": "the report shows completions early and late",
}
SFT_LORA_OWNED = {
    "task_type": "an SFT adapter is CAUSAL_LM",
    "trainable_token_indices": "the rows of the tokens sft.chat_template adds are trained (tunebook.chat)",
}
REWARD_LORA_OWNED = {
    "task_type": "the reward model is a SEQ_CLS adapter",
    "modules_to_save": "the reward model saves its score head beside the LoRA weights",
}

SFT_BLOCKS = {
    "trainer": recipe.Block("trl", "SFTConfig", SFT_TRAINER_DEFAULTS, SFT_TRAINER_OWNED),
    "lora": recipe.Block("peft", "LoraConfig", SFT_LORA_DEFAULTS, SFT_LORA_OWNED),
    "quantization": recipe.Block("transformers", "BitsAndBytesConfig", SFT_QUANTIZATION_DEFAULTS, {}, construct=True),
}
DPO_BLOCKS = {"trainer": recipe.Block("trl", "DPOConfig", DPO_TRAINER_DEFAULTS, DPO_TRAINER_OWNED)}
RL_BLOCKS = {"trainer": recipe.Block("trl", "GRPOConfig", GRPO_TRAINER_DEFAULTS, GRPO_TRAINER_OWNED)}
REWARD_BLOCKS = {
    "trainer": recipe.Block("trl", "RewardConfig", REWARD_TRAINER_DEFAULTS, REWARD_TRAINER_OWNED),
    "lora": recipe.Block("peft", "LoraConfig", REWARD_LORA_DEFAULTS, REWARD_LORA_OWNED),
}


_RENAMED = {
    "lora_r": "r",
    "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_steps",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_checkpointing": "activation_checkpointing",
    "group_by_length": "train_sampling_strategy (group_by_length or random)",
}
# Keys of earlier params files that are now the libraries' own fields, in a block: where each one went.
MOVED = {
    f"{section}.{key}": f"{section}.{block}.{_RENAMED.get(key, key)}"
    for section, block, keys in (
        ("sft", "lora", "lora_r lora_alpha lora_dropout target_modules"),
        (
            "sft",
            "trainer",
            "learning_rate lr_scheduler warmup_ratio epochs max_steps batch_size grad_accum max_length "
            "group_by_length packing gradient_checkpointing logging_steps eval_steps save_steps",
        ),
        (
            "dpo",
            "trainer",
            "beta learning_rate epochs batch_size grad_accum max_length precompute_ref_log_probs logging_steps",
        ),
        ("dpo.reward", "lora", "lora_r lora_alpha"),
        ("dpo.reward", "trainer", "learning_rate epochs batch_size max_length"),
    )
    for key in keys.split()
}

# A learning rate or a length of training that only a tiny model from scratch wants: 10x to 100x a real
# model's. Such settings are the demo's, and on a real base they would wreck it.
DEMO_SCALE = {"learning_rate": 1e-3, "num_train_epochs": 10}
REAL_MODEL_PARAMETERS = 100e6  # above this, a base is a real model


def demo_scale(trainer: dict[str, Any]) -> list[str]:
    """The settings of an SFT trainer block that are demo-scale, e.g. ['learning_rate 0.003']."""
    return [
        f"{key} {trainer[key]:g}"
        for key, limit in DEMO_SCALE.items()
        if isinstance(trainer.get(key), int | float) and trainer[key] >= limit
    ]


def demo_scale_warning(sft: SftParams, parameters: int) -> str | None:
    """One line when a base over REAL_MODEL_PARAMETERS is about to train with the demo's settings."""
    found = demo_scale(sft.trainer)
    if parameters <= REAL_MODEL_PARAMETERS or not found:
        return None
    defaults = ", ".join(f"{key} {SFT_TRAINER_DEFAULTS[key]:g}" for key in DEMO_SCALE)
    return (
        f"sft.trainer has demo-scale settings ({', '.join(found)}), meant for the tiny demo model, on a base of "
        f"{parameters / 1e9:.2g}B parameters: a real model trains with the defaults ({defaults}; "
        "tunebook.params.SFT_TRAINER_DEFAULTS)"
    )
