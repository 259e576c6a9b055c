"""Sweeps without running them: variants from a grid or a search, their ids, the plan with shared stages counted
once and its budget gate, Optuna asked and told, resume's checks, and the one-line errors."""

import json
import math

import pytest
from zoo import FAMILIES

from tunebook import paths, sweep
from tunebook.cli import EXIT_BAD_INPUT, EXIT_OVER_BUDGET, main
from tunebook.params import ParamsError, SearchRangeParams

CI = paths.project_root() / "params" / "ci.yaml"
STAGES = ["ingest", "generate", "sft", "evaluate"]


def load(*grid, overrides=(), **given):
    return sweep.load_sweep(CI, list(overrides), STAGES, list(grid), **given)


def test_grid_values_are_yaml_with_exponents_as_numbers_and_bracketed_commas_kept():
    grid = sweep.parse_grid(["sft.trainer.learning_rate=1e-4,2e-4", "evaluate.models=[base,sft],[sft]", "a.b=x"])
    assert grid == {
        "sft.trainer.learning_rate": [1e-4, 2e-4],
        "evaluate.models": [["base", "sft"], ["sft"]],
        "a.b": ["x"],
    }
    with pytest.raises(ParamsError, match=r"--grid sft.lora.r: expected key.path=value1,value2"):
        sweep.parse_grid(["sft.lora.r"])


def test_a_grid_is_every_combination_named_by_its_settings_the_first_the_baseline():
    spec = load("sft.lora.r=8,16", "sft.trainer.learning_rate=3e-3,1e-3", sweep_id="lora")
    found = sweep.variants(spec)
    assert [v.id for v in found] == [
        "lora-r8-learning_rate0.003",
        "lora-r8-learning_rate0.001",
        "lora-r16-learning_rate0.003",
        "lora-r16-learning_rate0.001",
    ]
    assert found[0].settings == {"sft.lora.r": 8, "sft.trainer.learning_rate": 0.003}
    assert found[3].overrides() == [
        "sft.lora.r=16",
        "sft.trainer.learning_rate=0.001",
        "run.id=lora-r16-learning_rate0.001",
    ]
    params = sweep.variant_params(spec, found[3])
    assert params.sft.lora["r"] == 16 and params.sft.trainer["learning_rate"] == 0.001
    assert params.run.id == "lora-r16-learning_rate0.001"


def test_short_names_take_as_many_key_parts_as_tell_keys_apart():
    assert sweep.short_names(["sft.trainer.learning_rate", "dpo.trainer.learning_rate", "sft.lora.r"]) == {
        "sft.trainer.learning_rate": "sft_trainer_learning_rate",
        "dpo.trainer.learning_rate": "dpo_trainer_learning_rate",
        "sft.lora.r": "r",
    }
    spec = load("evaluate.judge.rubric=a b,a_b")  # one id once made safe for a run id: numbered
    assert [v.id for v in sweep.variants(spec)] == ["ci-rubrica_b", "ci-rubrica_b-2"]


def test_random_trials_are_the_params_as_written_then_seeded_draws_within_their_ranges():
    search = {
        "sft.trainer.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "sft.lora.r": {"low": 4, "high": 32, "integer": True},
        "sft.lora.lora_dropout": {"choices": [0.0, 0.1]},
    }
    overrides = [f"sweep.search={json.dumps(search)}"]
    found = sweep.variants(load(overrides=overrides, trials=5))
    assert found[0].id == "ci-base" and found[0].settings == {}
    assert [v.id.split("-")[1] for v in found[1:]] == ["t01", "t02", "t03", "t04", "t05"]
    for variant in found[1:]:
        rate, rank, dropout = variant.settings.values()
        assert 1e-4 <= rate <= 1e-2 and float(f"{rate:.3g}") == rate
        assert isinstance(rank, int) and 4 <= rank <= 32 and dropout in (0.0, 0.1)
    assert [v.settings for v in sweep.variants(load(overrides=overrides, trials=5))] == [v.settings for v in found]
    again = sweep.variants(load(overrides=[*overrides, "sweep.seed=1"], trials=5))
    assert [v.settings for v in again] != [v.settings for v in found]


def test_a_log_range_draws_evenly_in_the_exponent():
    rng = __import__("random").Random(0)
    draws = [sweep.draw(SearchRangeParams(low=1e-6, high=1e-2, log=True), rng) for _ in range(400)]
    below = sum(value < 1e-4 for value in draws) / len(draws)
    assert 0.4 < below < 0.6  # half the exponents lie below the middle one; uniform draws would put 1% there
    assert all(math.isfinite(value) for value in draws)


def test_optuna_is_asked_as_slots_free_and_told_each_result():
    search = json.dumps({"sft.trainer.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}})
    spec = load(overrides=[f"sweep.search={search}"], trials=3, sampler="optuna")
    assert [v.id for v in sweep.variants(spec)] == ["ci-base"]  # the trials are asked as the search goes
    search = sweep.Search(spec, sweep.variants(spec))
    order = []
    while search.more():
        variant = search.next()
        order.append(variant.id)
        search.tell(variant, 10.0 * len(order) if len(order) != 3 else None)  # the third failed
    assert order[0] == "ci-base" and [name.split("-")[1] for name in order[1:]] == ["t01", "t02", "t03"]
    assert len(search.study.trials) == 3
    assert [t.state.name for t in search.study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    # Resumed, a study learns from the trials that completed, runs the failed one again (and is told how it ends),
    # and asks only for those still missing.
    failed = sweep.Variant("ci-t02-learning_rate0.005", {"sft.trainer.learning_rate": 0.005})
    resumed = sweep.Search(spec, [failed], asked=2, told=[({"sft.trainer.learning_rate": 0.001}, 20.0)])
    assert len(resumed.study.trials) == 1 and resumed.more()
    assert resumed.next() == failed
    resumed.tell(failed, 30.0)
    assert resumed.study.trials[-1].params == failed.settings and resumed.study.trials[-1].value == 30.0
    assert resumed.next().id.startswith("ci-t03-") and not resumed.more()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "nothing to sweep: give --grid KEY=V1,V2 or --trials N"),
        ({"grid": ["sft.lora.r=8,16"], "trials": 2}, "sweep: a grid or trials, not both"),
        ({"trials": 2}, "sweep.search: --trials draws from its ranges, and it has none"),
        ({"grid": ["sft.lora.r=8"], "metric": "sft.perplexity"}, "sweep.metric: sft.perplexity is not a per-item"),
        ({"grid": ["sft.lora.r=8,8"]}, "sweep.grid: grid key sft.lora.r: give one or more different values"),
        ({"grid": ["sft.lora.r=8"], "sampler": "grid"}, "sweep.sampler"),
        (
            {
                "trials": 2,
                "sampler": "optuna",
                "overrides": ["sweep.search={evaluate.models: {choices: [[base], [sft]]}}"],
            },
            "sweep.search.evaluate.models: Optuna's choices are numbers, strings or booleans",
        ),
    ],
)
def test_a_sweep_that_cannot_run_is_one_line(given, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[")):
        sweep.load_sweep(CI, given.pop("overrides", []), STAGES, given.pop("grid", []), **given)


def test_a_bad_grid_key_names_the_variant_and_the_key(capsys):
    assert main(["sweep", str(CI), "--grid", "sft.lora_r=8,16", "--id", "bad"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    moved = "--grid sft.lora_r: moved to sft.lora.r, under the library's own name"
    assert err == f"tunebook: sweep bad, variant bad-lora_r8: {moved}\n"
    assert not (paths.reports_dir() / "sweeps").exists()  # nothing ran, nothing was recorded


def test_the_plan_counts_shared_work_once_and_the_gate_applies_to_the_total(capsys):
    grid = ["--grid", "sft.lora.r=8,16", "--grid", "sft.trainer.learning_rate=3e-3,1e-3", "--id", "lora"]
    assert main(["plan", str(CI), *grid, "--stages", ",".join(STAGES)]) == 0
    out = capsys.readouterr().out
    assert "sweep lora (" in out and "4 variants to run, baseline lora-r8-learning_rate0.003" in out
    assert "lora-r8-learning_rate0.003: ingest [run], generate [run], sft [run], evaluate [run]" in out
    shared = "ingest [shared from lora-r8-learning_rate0.003], generate [shared from lora-r8-learning_rate0.003]"
    assert f"lora-r16-learning_rate0.001: {shared}, sft [run]" in out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("tiny ", "sft "))]
    assert rows == ["tiny", "sft", "sft", "sft", "sft"]  # one tiny model for the sweep, an SFT per variant
    one = sweep.plan_sweep(spec := load("sft.lora.r=8"), sweep.variants(spec)).total
    four = sweep.plan_sweep(
        spec := load("sft.lora.r=8,16", "sft.trainer.learning_rate=3e-3,1e-3"), sweep.variants(spec)
    )
    tiny = one.estimates[0].hours
    assert four.total.hours == pytest.approx(tiny + 4 * (one.hours - tiny), rel=0.05)
    # over run.budget in total, though each variant alone is within it: nothing runs without --confirm
    assert main(["sweep", str(CI), *grid, "--set", f"run.budget.max_hours={one.hours * 1.5}"]) == EXIT_OVER_BUDGET
    assert "the sweep's total estimate exceeds run.budget" in capsys.readouterr().err
    assert not (paths.reports_dir() / "sweeps").exists()


def test_resume_needs_the_same_sweep(capsys):
    assert main(["sweep", str(CI), "--grid", "sft.lora.r=8,16", "--resume"]) == EXIT_BAD_INPUT
    assert "--resume: no sweep ci to resume" in capsys.readouterr().err
    spec = load("sft.lora.r=8,16")
    record = {"params_file": str(CI), "overrides": [], "spec": spec.spec.model_dump(), "variants": []}
    spec.record_path.parent.mkdir(parents=True)
    spec.record_path.write_text(json.dumps(record))
    with pytest.raises(ParamsError, match="--resume: sweep ci ran with another spec; give it another --id"):
        sweep.to_run(load("sft.lora.r=8,32"), resume=True)
    record["variants"] = [
        {"id": "ci-r8", "settings": {"sft.lora.r": 8}, "status": "completed"},
        {"id": "ci-r16", "settings": {"sft.lora.r": 16}, "status": "failed"},
    ]
    spec.record_path.write_text(json.dumps(record))
    todo, previous = sweep.to_run(spec, resume=True)
    assert [v.id for v in todo] == ["ci-r16"] and previous == record


def test_the_demo_params_declare_a_search(capsys):
    """params/demo.yaml's sweep section: `tunebook sweep params/demo.yaml` alone runs it, and plan --sweep shows it."""
    demo = str(paths.project_root() / "params" / "demo.yaml")
    assert main(["plan", demo, "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "sweep demo (" in out and "5 variants to run, baseline demo-base" in out
    trials = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  demo-t")]
    assert [trial.split("-")[1] for trial in trials] == ["t01", "t02", "t03", "t04"]
    for trial in trials:
        rate = float(trial.split("learning_rate")[1].split("-r")[0])
        assert 0.001 <= rate <= 0.01 and trial.rsplit("-r", 1)[1] in ("8", "16", "32")
    assert main(["plan", demo, "--sweep", "--trials", "8", "--sampler", "optuna", "--metric", "sft.f1"]) == 0
    assert "... and 8 trials asked of Optuna" in capsys.readouterr().out


def test_a_ray_address_where_nothing_answers_is_one_line_and_records_nothing(capsys):
    from tunebook import servers

    address = f"{servers.HOST}:{servers.free_port()}"
    assert main(["sweep", str(CI), "--grid", "sft.lora.r=8", "--stages", "ingest", "--ray", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tunebook: --ray {address}: nothing answers there (") and err.count("\n") == 1
    assert not (paths.reports_dir() / "sweeps" / "ci.json").exists()


def test_a_command_line_grid_or_search_is_the_sweep_whatever_the_section_asks():
    demo = paths.project_root() / "params" / "demo.yaml"  # its section: 4 random trials over sweep.search
    grid = sweep.load_sweep(demo, [], STAGES, ["sft.lora.r=8,16"])
    assert grid.spec.trials == 0 and [v.id for v in sweep.variants(grid)] == ["demo-r8", "demo-r16"]
    searched = sweep.load_sweep(demo, ["sweep.grid={sft.lora.r: [8, 16]}", "sweep.trials=0"], STAGES, trials=2)
    assert searched.spec.grid == {} and len(sweep.variants(searched)) == 3
    with pytest.raises(ParamsError, match="a grid or trials, not both"):
        sweep.load_sweep(demo, [], STAGES, ["sft.lora.r=8,16"], trials=2)


def test_the_variants_copying_a_failed_leaders_stages_fail_with_it():
    spec = load("sft.lora.r=8,16,32")
    todo = sweep.variants(spec)
    plan = sweep.plan_sweep(spec, todo)
    assert plan.leaders == {"ci-r8": ["ingest", "generate"]} and plan.followers == {"ci-r8": ["ci-r16", "ci-r32"]}
    record = {"sweep_id": "ci", "variants": [{"id": v.id, "settings": v.settings, "status": "pending"} for v in todo]}
    record["variants"][0].update(status="failed", failed={"stage": "generate", "cell": 4}, error="its shared ...")
    assert sweep._without_failed_leaders(record, todo, plan) == []
    for entry in record["variants"][1:]:
        assert entry["status"] == "failed" and entry["failed"] == {"stage": "generate", "cell": 4}
        assert entry["error"] == "the shared stages it copies failed in ci-r8"


class Interrupted:
    """The executor interface (tunebook.sweep.LocalJobs, RayCluster) with a Ctrl-C while variants run."""

    capacity, stopped = 2, None

    def submit(self, task):
        return task.run_id

    def wait(self, running):
        raise KeyboardInterrupt

    def stop(self, running):
        Interrupted.stopped = sorted(running)

    def close(self):
        pass


def test_a_stopped_sweep_stops_its_variants_and_records_them_failed(monkeypatch):
    spec = load("sft.lora.r=8,16")
    todo = sweep.variants(spec)
    plan = sweep.plan_sweep(spec, todo)
    monkeypatch.setattr(sweep, "LocalJobs", lambda jobs: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, todo, {}, plan, jobs=2)
    assert Interrupted.stopped == ["ci-r8"]  # the leader, running the shared stages
    record = sweep.read_record("ci")
    assert record["status"] == "failed" and record["variants"][0]["error"] == "the sweep stopped (KeyboardInterrupt)"
    assert [entry["status"] for entry in record["variants"]] == ["failed", "pending"]
    assert [v.id for v in sweep.to_run(spec, resume=True)[0]] == ["ci-r8", "ci-r16"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_sweep_of_a_stock_model_plans_each_variant_on_its_config(family, zoo):
    """Variants of a recipe on each family's model (the zoo): each variant's SFT estimate comes from that model's
    config and its own LoRA rank, and the sweep still shares one ingest and generate."""
    spec = load("sft.lora.r=8,16", overrides=[f"sft.base_model={zoo(family)}"])
    plan = sweep.plan_sweep(spec, sweep.variants(spec))
    sft = {e.stage: e for e in plan.total.estimates if e.stage.startswith("sft ")}
    r8, r16 = sft["sft ci-r8"], sft["sft ci-r16"]
    assert r8.params == r16.params > 0 and r16.trainable == 2 * r8.trainable
    assert plan.leaders == {"ci-r8": ["ingest", "generate"]} and plan.followers == {"ci-r8": ["ci-r16"]}
    assert sweep.variant_params(spec, sweep.variants(spec)[1]).sft.base_model == str(zoo(family))
