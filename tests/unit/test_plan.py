import pytest

from tunebook import paths, plan, tiny
from tunebook.cli import main
from tunebook.params import load_params

EXAMPLE = paths.project_root() / "params" / "examples" / "llama3-8b-qlora.yaml"
DEMO = paths.project_root() / "params" / "demo.yaml"


def test_gpu_recipe_estimate_is_realistic(checkout_workdir):
    estimate = plan.estimate(load_params(EXAMPLE), EXAMPLE)
    (sft,) = estimate.estimates
    assert 7.9e9 < sft.params < 8.1e9  # Llama 3.1 8B
    # r=64 on all linear layers of Llama 3.1 8B: 167,772,160 LoRA parameters.
    assert sft.trainable == 167_772_160
    assert 5 < sft.memory_gb < 22
    assert estimate.over_budget  # 3 epochs of 18k rows exceed the example's 2-hour budget


def test_run_stops_at_the_budget_gate_without_confirm(checkout_workdir, capsys):
    assert main(["run", str(EXAMPLE)]) == 3
    captured = capsys.readouterr()
    assert "OVER BUDGET" in captured.out and "--confirm" in captured.err


def test_demo_is_within_budget(capsys):
    assert main(["plan", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "within budget" in out and "tiny" in out and "sft" in out


def test_the_planner_knows_no_tiny_and_plans_it_from_its_config_like_any_base(tmp_path):
    """The run builds tiny, so `tunebook plan` hands the planner its config and its pre-training; the same
    config as a config.json in sft.base_config (a base not on this machine) plans the same SFT."""
    demo = load_params(DEMO)
    config, before = tiny.plan_inputs(demo)
    planned = plan.estimate(demo, DEMO, config, before)
    assert [e.stage for e in planned.estimates] == ["tiny", "sft"]
    tiny_row, sft = planned.estimates
    assert tiny_row.params == tiny_row.trainable == sft.params > sft.trainable
    assert tiny_row.train_tokens == demo.tiny.steps * demo.tiny.batch_size * demo.tiny.context_length
    assert "cannot read the config of tiny" in plan.estimate(demo, DEMO).note
    config.save_pretrained(tmp_path)
    as_file = load_params(DEMO, [f"sft.base_config={tmp_path / 'config.json'}"])
    assert plan.estimate(as_file, DEMO).estimates == [sft]


def test_plan_warns_when_a_real_base_would_train_with_demo_scale_settings(checkout_workdir, capsys):
    """The demo's learning rate and epochs, pointed at Llama 3.1 8B (params/examples/llama-3.1-8b-config.json)."""
    demo_scale = ["sft.trainer.learning_rate=3e-3", "sft.trainer.num_train_epochs=10"]
    main(["plan", str(EXAMPLE), *(arg for override in demo_scale for arg in ("--set", override))])
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: sft.trainer has demo-scale settings (learning_rate 0.003, num_train_epochs 10), meant for the tiny "
        "demo model, on a base of 8B parameters: a real model trains with the defaults (learning_rate 0.0002, "
        "num_train_epochs 3; tunebook.params.SFT_TRAINER_DEFAULTS)"
    ]
    assert plan.estimate(load_params(EXAMPLE), EXAMPLE).warnings == []  # the recipe's own settings
    # The tiny demo model is meant to train at the demo's scale.
    demo = load_params(DEMO)
    demo_plan = plan.estimate(demo, DEMO, *tiny.plan_inputs(demo))
    assert demo_plan.estimates and demo_plan.warnings == []


def test_missing_config_explains(checkout_workdir):
    params = load_params(EXAMPLE, ["sft.base_config=null"])
    estimate = plan.estimate(params, EXAMPLE)
    assert estimate.estimates == [] and "set sft.base_config" in estimate.note


@pytest.mark.parametrize(
    "stages,start,expected",
    [(None, "sft", ["sft", "evaluate", "dpo", "rl", "export"]), ("generate,ingest", None, ["ingest", "generate"])],
)
def test_stage_selection(stages, start, expected):
    from tunebook.runner import select_stages

    assert select_stages(stages.split(",") if stages else None, start) == expected
