"""SFT's checks before training, on the real tokenizer of the tiny model."""

import warnings
from pathlib import Path

import pandas as pd
import pytest

from tunebook.sft import PackingError, history

MESSAGES = [
    {"role": "user", "content": "What does `json.dumps` do?"},
    {"role": "assistant", "content": "Serialize obj to a JSON formatted str."},
]


def test_a_non_finite_loss_stops_training_naming_the_step():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tunebook.sft import StopOnNonFinite, TrainingDiverged

    state, control = TrainerState(), TrainerControl()
    state.global_step = 40
    args = TrainingArguments(output_dir="unused", logging_steps=10, report_to="none")
    StopOnNonFinite().on_log(args, state, control, logs={"loss": 2.5})
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 40 \(logged every 10 steps\)"):
        StopOnNonFinite().on_log(args, state, control, logs={"loss": float("nan")})


def test_out_of_memory_gives_advice_from_the_settings_in_use():
    from tunebook.params import SftParams
    from tunebook.sft import out_of_memory_advice

    trainer = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "max_length": 2048}
    advice = out_of_memory_advice(SftParams(trainer=trainer))
    assert "sft.trainer.per_device_train_batch_size=4 with sft.trainer.gradient_accumulation_steps=4" in advice
    assert "sft.trainer.activation_checkpointing=true" in advice
    assert "sft.method=qlora" in advice and "sft.trainer.max_length (now 2048)" in advice
    frugal = {"per_device_train_batch_size": 1, "activation_checkpointing": True}
    assert "qlora" not in out_of_memory_advice(SftParams(method="qlora", trainer=frugal))


RESUME_SCRIPT = """
import sys
from pathlib import Path
from tunebook.params import SftParams
from tunebook.sft import train_sft, training_data
params = SftParams.model_validate_json(Path(sys.argv[1]).read_text())
data = training_data(params, Path(sys.argv[3]), [])
train_sft(params, sys.argv[2], data, Path(sys.argv[4]), seed=0, progress=False)
"""


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from test_generate import extractive_only, run, stdlib_chunks

    from tunebook import generate
    from tunebook.dataset import write_dataset

    tmp = tmp_path_factory.mktemp("sft-data")
    chunks = stdlib_chunks(tmp, ("json", "bisect", "heapq"))
    params = extractive_only(val_fraction=0.2, test_fraction=0.1)
    campaign = run(generate.plan_jobs(chunks, params), params, tmp / "generate")
    write_dataset(generate.build_dataset(campaign.records, chunks, params), tmp / "generate", "t")
    return tmp / "generate"


def test_training_killed_at_5_random_points_resumes_and_ends_where_an_uninterrupted_run_ends(
    tiny_model, dataset_dir, tmp_path
):
    """kill -9 five times at random moments (loading, training, saving a checkpoint), then train again: it
    resumes from the last complete checkpoint, and ends within 1% of an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from tunebook.params import SftParams
    from tunebook.sft import train_sft, training_data

    params = SftParams(
        trainer={
            "max_steps": 160,
            "save_steps": 5,
            "eval_steps": 160,
            "logging_steps": 10,
            "per_device_train_batch_size": 4,
            "learning_rate": 3e-3,
            "max_length": 128,
        },
        lora={"lora_dropout": 0.0},
        precision="fp32",
    )
    data = training_data(params, dataset_dir, [])
    reference = train_sft(params, tiny_model, data, tmp_path / "reference", seed=0, progress=False)

    out_dir = tmp_path / "killed"
    spec = tmp_path / "params.json"
    spec.write_text(params.model_dump_json())
    command = [sys.executable, "-c", RESUME_SCRIPT, str(spec), tiny_model, str(dataset_dir), str(out_dir)]
    checkpoints = out_dir / "checkpoints"

    def last_step() -> int:
        # A run killed before it wrote its training key leaves a directory the next run removes whole: it may
        # vanish while it is read.
        try:
            steps = [
                int(p.name.split("-")[1])
                for p in checkpoints.glob("checkpoint-*")
                if (p / "trainer_state.json").exists()
            ]
        except FileNotFoundError:
            return 0
        return max(steps, default=0)

    # Each kill comes a random moment (mid-step or mid-save) after the run has saved a new checkpoint, so that
    # it lands on a different point of the training every time, however fast this machine is.
    for delay in random.Random(0).sample([i / 100 for i in range(20)], 5):
        reached = last_step()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while last_step() <= reached:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out_dir / "adapter").exists(), "training ended before it could be killed"

    resumed = train_sft(params, tiny_model, data, out_dir, seed=0, progress=False)
    assert resumed.resumed_from is not None and "checkpoint-" in resumed.resumed_from
    assert abs(resumed.metrics["eval_loss"] - reference.metrics["eval_loss"]) <= 0.01 * reference.metrics["eval_loss"]


def test_a_checkpoint_cut_short_by_a_kill_is_not_resumed(tmp_path):
    from tunebook.sft import resumable_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_st'), (30, None)):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (checkpoints / "training_key").write_text("k")
    assert resumable_checkpoint(checkpoints, "k") == str(checkpoints / "checkpoint-10")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "training_key"]


def test_checkpoints_of_other_settings_are_not_resumed(tiny_model, dataset_dir, tmp_path):
    from tunebook.params import SftParams
    from tunebook.sft import train_sft, training_data

    trainer = {"max_steps": 10, "save_steps": 5, "eval_steps": 10, "per_device_train_batch_size": 4, "max_length": 128}
    params = SftParams(trainer=trainer, precision="fp32")
    data = training_data(params, dataset_dir, [])
    train_sft(params, tiny_model, data, tmp_path, seed=0, progress=False)
    changed = SftParams(trainer={**trainer, "learning_rate": 1e-3}, precision="fp32")
    assert train_sft(changed, tiny_model, data, tmp_path, seed=0, progress=False).resumed_from is None


@pytest.mark.parametrize(
    "method,task",
    [("full", "chat"), ("lora", "text"), ("qlora", "chat"), ("packed", "chat")],
    ids=["full", "continued-pretraining", "qlora", "lora-packed"],
)
def test_methods_train_save_and_register_a_loadable_model(
    method, task, tiny_model, zoo, dataset_dir, tmp_path, workdir
):
    """Full fine-tuning, continued pre-training on corpus text and QLoRA (bitsandbytes 4-bit, on the CPU here,
    on the zoo's Llama 3: bitsandbytes' CPU kernel takes no dimension under its 64-value block, which the tiny
    model's are and real models' never are)."""
    from test_generate import stdlib_chunks

    from tunebook import models, registry
    from tunebook.params import SftParams
    from tunebook.sft import register_model, train_sft, training_data

    packing = method == "packed"
    method = "lora" if packing else method
    trainer = {
        "packing": packing,
        "max_steps": 6,
        "save_steps": 100,
        "eval_steps": 6,
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "learning_rate": 1e-3,
    }
    params = SftParams(method=method, task=task, precision="fp32", trainer=trainer)
    data = training_data(params, dataset_dir, stdlib_chunks(tmp_path, ("json", "bisect")))
    assert data.train.column_names == (["messages"] if task == "chat" else ["text"])
    base = zoo("llama3") if method == "qlora" else tiny_model
    result = train_sft(params, str(base), data, tmp_path / "sft", seed=0, progress=False)
    assert result.output_dir.name == ("model" if method == "full" else "adapter")
    assert (result.trainable_params == result.total_params) == (method == "full")
    name = register_model("r", result, params, data)
    spec = registry.resolve(name, "r")
    assert (spec["adapter"] is None) == (method == "full")
    assert registry.resolve("base", "r")["base_model"] == str(base)
    loaded = models.load_model(name, spec["base_model"], spec["adapter"])
    [answer] = models.generate(loaded, [MESSAGES[:1]], max_new_tokens=4, batch_size=1, progress=False)
    assert isinstance(answer.text, str)


def test_packed_examples_must_not_see_each_other(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, masking_utils

    from tunebook.sft import check_packing_isolation

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    check_packing_isolation(model)  # sdpa masks packed rows by their position ids
    # An attention backend blind to position-id boundaries lets the second example see the first.
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(PackingError, match="packed examples attend to each other"):
        check_packing_isolation(model)


# Two ways of taking the same optimizer step agree to 1% of the step (lr 1e-2): Adam's first step divides each
# gradient by its own size, so a gradient near Adam's eps turns rounding of 1e-7 into ~1e-5 of weight
# (transformers 5.24 lands at 1.02e-5), while a wrongly normalised loss moves weights by the whole step.
STEP_TOLERANCE = 1e-4


def test_gradient_accumulation_matches_the_larger_batch(tiny_model, dataset_dir, tmp_path):
    """2 x 2 accumulated steps update the weights as one batch of 4 does: the loss is normalised over the
    tokens of the whole effective batch, not averaged per micro-batch (examples differ in length)."""
    from safetensors.torch import load_file

    from tunebook.params import SftParams
    from tunebook.sft import train_sft, training_data

    common = {
        "max_steps": 1,
        "learning_rate": 1e-2,
        "train_sampling_strategy": "random",
        "eval_steps": 9,
        "save_steps": 9,
        "max_length": 128,
        "warmup_steps": 0.0,
        "lr_scheduler_type": "constant",
    }
    weights = {}
    for batch, accum in ((4, 1), (2, 2)):
        trainer = {**common, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum}
        params = SftParams(trainer=trainer, lora={"lora_dropout": 0.0}, precision="fp32")
        result = train_sft(
            params,
            tiny_model,
            training_data(params, dataset_dir, []),
            tmp_path / f"{batch}x{accum}",
            seed=0,
            progress=False,
        )
        weights[(batch, accum)] = load_file(result.output_dir / "adapter_model.safetensors")
    one, accumulated = weights[(4, 1)], weights[(2, 2)]
    changed = [name for name in one if "lora_B" in name and one[name].abs().max() > 0]
    assert changed  # the step did move the adapter
    for name in one:
        assert (one[name] - accumulated[name]).abs().max().item() < STEP_TOLERANCE, name


def test_two_process_data_parallel_matches_one_process(tiny_model, dataset_dir, tmp_path, workdir):
    """2 gloo workers of batch 2 train as one process of batch 4 does: the same weights and registry entry."""
    from safetensors.torch import load_file

    from tunebook import registry
    from tunebook.params import SftParams
    from tunebook.sft import register_model, train_sft, training_data

    common = {
        "max_steps": 2,
        "learning_rate": 1e-2,
        "train_sampling_strategy": "random",
        "eval_steps": 2,
        "save_steps": 9,
        "max_length": 128,
        "warmup_steps": 0.0,
        "lr_scheduler_type": "constant",
    }
    results, entries = {}, {}
    for processes, batch in ((1, 4), (2, 2)):
        trainer = {**common, "per_device_train_batch_size": batch}
        params = SftParams(processes=processes, trainer=trainer, lora={"lora_dropout": 0.0}, precision="fp32")
        data = training_data(params, dataset_dir, [])
        results[processes] = train_sft(params, tiny_model, data, tmp_path / f"p{processes}", seed=0, progress=False)
        name = register_model(f"p{processes}", results[processes], params, data)
        entries[processes] = registry.entries()[name]
    one, two = (load_file(results[n].output_dir / "adapter_model.safetensors") for n in (1, 2))
    assert any(one[name].abs().max() > 0 for name in one if "lora_B" in name)
    for name in one:
        assert (one[name] - two[name]).abs().max().item() < STEP_TOLERANCE, name
    # Trainer's eval loss is a mean of per-batch means, and the eval batches differ (4 vs 2 a worker): close only.
    eval_one, eval_two = results[1].metrics["eval_loss"], results[2].metrics["eval_loss"]
    assert abs(eval_one - eval_two) < 0.01 * eval_one
    assert set(entries[1]) == set(entries[2]) and entries[2]["adapter"].endswith("p2/adapter")


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_the_shipped_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import load_config_from_file

    from tunebook.params import SftParams, accelerate_config_path

    params = SftParams(processes=2, accelerate_config=f"params/accelerate/{name}.yaml")
    config = load_config_from_file(str(accelerate_config_path(params)))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert config.distributed_type.value == expected[name]
    assert config.mixed_precision == "no"  # precision is sft.precision's, whatever the hardware


def test_a_missing_accelerate_config_is_a_params_error():
    from pydantic import ValidationError

    from tunebook.params import SftParams

    with pytest.raises(ValidationError, match="accelerate_config: no such file .*params/accelerate/zero9.yaml"):
        SftParams(processes=2, accelerate_config="params/accelerate/zero9.yaml")


def test_wandb_logs_offline_into_the_run_directory_and_peak_memory_is_measured(
    tiny_model, dataset_dir, tmp_path, monkeypatch
):
    from tunebook.params import SftParams
    from tunebook.sft import train_sft, training_data

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = {"max_steps": 2, "logging_steps": 1, "eval_steps": 2, "save_steps": 9, "max_length": 128}
    params = SftParams(trainer=trainer, wandb_project="tunebook-test")
    out_dir = tmp_path / "run1" / "sft"
    result = train_sft(params, tiny_model, training_data(params, dataset_dir, []), out_dir, seed=0, progress=False)
    (run,) = (out_dir / "wandb").glob("offline-run-*")
    logged = next(run.glob("run-*.wandb")).read_bytes()  # the offline run's record log, what `wandb sync` sends
    assert b"train/loss" in logged and b"eval/loss" in logged and b"tunebook-test" in logged
    assert result.metrics["peak_memory_gb"] >= 0
    assert list((out_dir / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard still logs beside W&B


def test_the_report_sets_the_plans_memory_estimate_beside_the_measured_peak(tiny_model):
    import pandas as pd

    from tunebook.params import SftParams
    from tunebook.sft import SftResult, memory_comparison

    result = SftResult(Path("unused"), tiny_model, "hash", pd.DataFrame(), {"peak_memory_gb": 0.25}, 1, 2)
    lora = memory_comparison(SftParams(), tiny_model, result).set_index("memory")
    full = memory_comparison(SftParams(method="full"), tiny_model, result).set_index("memory")
    assert list(lora.index) == ["weights", "trained parameters", "activations", "total"]
    assert lora.loc["total", "measured peak GB"] == 0.25
    assert full.loc["weights", "estimated GB"] == 0  # nothing frozen: every weight is a trained parameter
    assert full.loc["trained parameters", "estimated GB"] > 10 * lora.loc["trained parameters", "estimated GB"]


def test_a_real_base_about_to_train_with_demo_scale_settings_warns():
    """Llama 3.1 8B (its shipped config, on the meta device: no memory) with the demo's learning rate."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunebook import paths
    from tunebook.params import SftParams
    from tunebook.sft import warn_demo_scale

    config = AutoConfig.from_pretrained(paths.project_root() / "params" / "examples" / "llama-3.1-8b-config.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    with pytest.warns(UserWarning, match=r"demo-scale settings \(learning_rate 0.003\).*base of 8B parameters"):
        warn_demo_scale(SftParams(trainer={"learning_rate": 3e-3}), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_demo_scale(SftParams(), model)  # the real-model defaults


def test_train_sft_warns_of_demo_scale_settings_on_a_real_base(tiny_model, tmp_path, monkeypatch):
    """train_sft checks the model it loaded: here the tiny model, counted as real by lowering the bar."""
    from datasets import Dataset

    from tunebook.params import SftParams
    from tunebook.params import blocks as params_module
    from tunebook.sft import TrainingData, train_sft

    monkeypatch.setattr(params_module, "REAL_MODEL_PARAMETERS", 0)
    rows = [{"messages": MESSAGES} for _ in range(4)]
    data = TrainingData(Dataset.from_list(rows), Dataset.from_list([]), "h", tmp_path, [])
    params = SftParams(trainer={"max_steps": 1, "learning_rate": 3e-3, "max_length": 64}, precision="fp32")
    with pytest.warns(UserWarning, match=r"sft.trainer has demo-scale settings \(learning_rate 0.003\)"):
        train_sft(params, tiny_model, data, tmp_path / "sft", seed=0, progress=False)


def test_the_report_shows_each_resolved_config_field_that_differs_from_the_librarys_default(tmp_path):
    from datasets import Dataset

    from tunebook.chat import CHATML, ChatTemplate
    from tunebook.params import SftParams
    from tunebook.sft import TrainingData, resolved_configs

    data = TrainingData(Dataset.from_list([{"messages": MESSAGES}]), Dataset.from_list([]), "h", tmp_path, [])
    params = SftParams(method="qlora", trainer={"learning_rate": 3e-3}, lora={"r": 4}, precision="fp32")
    template = ChatTemplate(CHATML, "model", "assistant")
    table = resolved_configs(params, data, tmp_path / "run" / "sft", seed=7, template=template)
    shown = {(row["config"], row["field"]): (row["value"], row["library default"]) for _, row in table.iterrows()}
    assert shown[("SFTConfig", "learning_rate")] == ("0.003", "2e-05")  # the params' own
    assert shown[("SFTConfig", "lr_scheduler_type")] == ("cosine", "linear")  # tunebook's default
    assert shown[("SFTConfig", "bf16")] == ("False", "True")  # tunebook's precision, against TRL's bf16 on a CPU
    assert shown[("SFTConfig", "seed")] == ("7", "42") and shown[("SFTConfig", "assistant_only_loss")][0] == "True"
    assert shown[("LoraConfig", "r")] == ("4", "8") and shown[("LoraConfig", "task_type")][0] == "CAUSAL_LM"
    assert shown[("BitsAndBytesConfig", "bnb_4bit_quant_type")] == ("nf4", "fp4")
    assert ("SFTConfig", "per_device_train_batch_size") not in shown  # 8, as TRL's own default
    assert ("SFTConfig", "eval_strategy") not in shown  # no validation split
    full = resolved_configs(SftParams(method="full"), data, tmp_path / "run" / "sft", seed=7, template=template)
    assert set(full["config"]) == {"SFTConfig"}  # no adapter, no quantisation


def test_a_log_history_becomes_a_row_per_step_and_split_that_logged_the_columns():
    log_history = [
        {"step": 1, "loss": 0.9, "rewards/margins": 0.1, "rewards/accuracies": 0.5, "learning_rate": 1e-5},
        {"step": 2, "eval_loss": 0.8, "eval_rewards/margins": 0.2, "eval_rewards/accuracies": 0.75},
        # TRL's last entry: the run's summary, with what was logged after the last logging step
        {"step": 3, "train_loss": 0.85, "rewards/margins": 0.3, "rewards/accuracies": 1.0},
    ]
    logged = {"loss": "loss", "reward margin": "rewards/margins", "reward accuracy": "rewards/accuracies"}
    table = history(log_history, logged, {"train": "", "val": "eval_"})
    assert list(table.columns) == ["step", "split", "loss", "reward margin", "reward accuracy"]
    assert table[["step", "split"]].values.tolist() == [[1, "train"], [2, "val"], [3, "train"]]
    assert table["reward margin"].tolist() == [0.1, 0.2, 0.3] and pd.isna(table["loss"].iloc[2])
    losses = history(log_history, {"loss": "loss"}, {"train": ""})
    assert losses.values.tolist() == [[1, "train", 0.9]]
