"""`tunebook sweep`: variants of one params file, each a normal run of its own, that share the work they have in
common, run as local processes or as tasks on a Ray cluster, and are compared on one page (tunebook.compare).

A variant is the params file with some keys set: every combination of a grid (`--grid sft.lora.r=8,16`), or draws
from the ranges of `sweep.search` (`--trials N`), at random or asked of Optuna for one target metric. Its run id is
the sweep's id and its settings (`SWEEP-r8-learning_rate0.0001`), and its manifest names its sweep. Variants whose
ingest and generate params agree share those stages (tunebook.runner): the first of them runs them before the
others start, which then copy them, so a sweep of SFT settings ingests and generates once.

The sweep's record, reports/sweeps/<id>.json, says what each variant is and how it ended (failed: at which stage and
cell, with its log beside the record); `--resume` re-runs only the variants that did not complete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from tunebook import evaluate, paths, plan, reports, runner
from tunebook.files import write_atomic
from tunebook.params import (
    Params,
    ParamsError,
    SearchRangeParams,
    SweepParams,
    load_params,
    mask_override,
    override_value,
)
from tunebook.params.schema import error_message

BASE = "base"  # the trial of the params as written: a search's baseline variant


@dataclass
class Sweep:
    """What a sweep runs: a params file and its overrides, how the variants differ, and the stages of each run."""

    id: str
    params_file: Path
    overrides: list[str]
    spec: SweepParams  # the params' sweep section, with the command line's --grid and --trials over it
    stages: list[str]
    params: Params  # the params file with its overrides: the sweep's budget

    @property
    def record_path(self) -> Path:
        return record_path(self.id)

    def target(self) -> tuple[str | None, str]:
        """(system, score) of the target metric; no system means each variant's final model."""
        system, _, score = self.spec.metric.rpartition(".")
        return system or None, score


@dataclass
class Variant:
    id: str
    settings: dict[str, Any]  # key.path: value, on top of the sweep's params

    def overrides(self) -> list[str]:
        return [*(f"{key}={json.dumps(value)}" for key, value in self.settings.items()), f"run.id={self.id}"]


def sweeps_dir() -> Path:
    return paths.reports_dir() / "sweeps"


def record_path(sweep_id: str) -> Path:
    return sweeps_dir() / f"{sweep_id}.json"


def load_sweep(
    params_file: Path,
    overrides: list[str],
    stages: list[str],
    grid: list[str] = (),
    trials: int | None = None,
    sampler: str | None = None,
    metric: str | None = None,
    sweep_id: str | None = None,
) -> Sweep:
    """The sweep of a params file: its `sweep:` section, with the command line's settings over it (a --grid there is
    the sweep's grid, whatever trials the section asks for; --trials, a search, whatever grid it has)."""
    params = load_params(params_file, overrides)
    given = {"trials": trials, "sampler": sampler, "metric": metric, "id": sweep_id}
    section = params.sweep.model_dump() | {key: value for key, value in given.items() if value is not None}
    if grid:
        section.update(grid=parse_grid(grid), trials=trials or 0)
    elif trials:
        section["grid"] = {}
    try:
        spec = SweepParams.model_validate(section)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ParamsError(f"{params_file}: sweep.{key}: {error_message(first)}") from None
    if not spec.grid and not spec.trials:
        raise ParamsError(
            f"{params_file}: nothing to sweep: give --grid KEY=V1,V2 or --trials N over sweep.search (or a sweep: "
            "section)"
        )
    if spec.grid and spec.trials:
        raise ParamsError(f"{params_file}: sweep: a grid or trials, not both")
    if spec.trials and not spec.search:
        raise ParamsError(f"{params_file}: sweep.search: --trials draws from its ranges, and it has none")
    if spec.trials and spec.sampler == "optuna":
        for key, space in spec.search.items():
            if any(isinstance(choice, list | dict) for choice in space.choices or []):
                raise ParamsError(
                    f"{params_file}: sweep.search.{key}: Optuna's choices are numbers, strings or booleans; sweep "
                    "lists with --grid or the random sampler"
                )
    sweep = Sweep(spec.id or params.run.id, Path(params_file), list(overrides), spec, stages, params)
    score = sweep.target()[1]
    if score not in evaluate.SCORES and not score.startswith("check_"):
        known = ", ".join([*evaluate.SCORES, "check_NAME"])
        raise ParamsError(f"{params_file}: sweep.metric: {spec.metric} is not a per-item score ({known})")
    return sweep


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`--grid key.path=v1,v2` items as {key.path: [values]}; each value is YAML, as in --set (`[a,b]` is a list)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ParamsError(f"--grid {item}: expected key.path=value1,value2")
        grid[key.strip()] = [_value(text) for text in _split(values)]
    return grid


def _split(text: str) -> list[str]:
    """Comma-separated values, commas inside brackets or braces kept."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _value(text: str) -> Any:
    value = override_value(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def variants(sweep: Sweep) -> list[Variant]:
    """Every variant of a grid, or the params as written and `trials` random draws; an Optuna search has its
    first variant here and asks for the others as it goes (Search)."""
    spec = sweep.spec
    if spec.grid:
        names = short_names(list(spec.grid))
        combinations = [dict(zip(spec.grid, values, strict=True)) for values in itertools.product(*spec.grid.values())]
        return _unique([Variant(variant_id(sweep.id, names, settings), settings) for settings in combinations])
    found = [Variant(f"{sweep.id}-{BASE}", {})]
    if spec.sampler == "random":
        rng = random.Random(spec.seed)
        names = short_names(list(spec.search))
        for trial in range(1, spec.trials + 1):
            settings = {key: draw(space, rng) for key, space in spec.search.items()}
            found.append(Variant(variant_id(sweep.id, names, settings, f"t{trial:02d}"), settings))
    return _unique(found)


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part, or as many parts as tell it from the others (`sft_trainer_learning_rate` only when
    `dpo.trainer.learning_rate` is swept too)."""

    def suffix(key: str, depth: int) -> str:
        return "_".join(key.split(".")[-depth:])

    names = {}
    for key in keys:
        depth = 1
        while depth < key.count(".") + 1 and any(
            suffix(other, depth) == suffix(key, depth) for other in keys if other != key
        ):
            depth += 1
        names[key] = suffix(key, depth)
    return names


def variant_id(sweep_id: str, names: dict[str, str], settings: dict[str, Any], prefix: str = "") -> str:
    parts = [*([prefix] if prefix else []), *(f"{names[key]}{_slug(value)}" for key, value in settings.items())]
    return "-".join([sweep_id, *parts])


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def _unique(found: list[Variant]) -> list[Variant]:
    """Settings whose ids collide once made safe for a run id ('a b' and 'a_b') get a number each."""
    seen: dict[str, int] = {}
    for variant in found:
        seen[variant.id] = seen.get(variant.id, 0) + 1
        if seen[variant.id] > 1:
            variant.id = f"{variant.id}-{seen[variant.id]}"
    return found


def draw(space: SearchRangeParams, rng: random.Random) -> Any:
    """A value of a searched key, to 3 significant digits (a run id and a table need no more)."""
    if space.choices is not None:
        return rng.choice(space.choices)
    if space.log:
        value = math.exp(rng.uniform(math.log(space.low), math.log(space.high)))
    else:
        value = rng.uniform(space.low, space.high)
    return round(value) if space.integer else _rounded(value, space)


def _rounded(value: float, space: SearchRangeParams) -> float:
    """To 3 significant digits (a run id and a table need no more), kept within the range."""
    return min(max(float(f"{value:.3g}"), space.low), space.high)


def variant_params(sweep: Sweep, variant: Variant) -> Params:
    try:
        return load_params(sweep.params_file, [*sweep.overrides, *variant.overrides()])
    except ParamsError as err:
        message = str(err)
        for key in variant.settings:  # the key was swept, not --set
            message = message.replace(f"--set {key}", f"--grid {key}" if sweep.spec.grid else f"sweep.search.{key}")
        raise ParamsError(f"sweep {sweep.id}, variant {variant.id}: {message}") from None


# --- where the next variant comes from ---------------------------------------------------------------------------


class Search:
    """The variants still to run, in order; with Optuna, a new trial is asked whenever a slot frees, and told the
    target metric of every variant that ends (a failed one as failed). `told` are the trials of an earlier
    attempt (settings, value), which a resumed study learns from."""

    def __init__(
        self,
        sweep: Sweep,
        todo: list[Variant],
        asked: int = 0,
        told: list[tuple[dict, float]] = (),
        ask: bool = True,  # False: these variants and no more (the leaders of shared stages)
    ):
        self.sweep, self.todo, self.asked, self.trials = sweep, list(todo), asked, {}
        self.study = None
        if ask and sweep.spec.trials and sweep.spec.sampler == "optuna":
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=sweep.spec.seed)
            self.study = optuna.create_study(direction=sweep.spec.direction, sampler=sampler)
            self.distributions = _distributions(sweep.spec.search)
            for settings, value in told:
                self.study.add_trial(
                    optuna.trial.create_trial(params=settings, distributions=self.distributions, value=value)
                )

    def more(self) -> bool:
        return bool(self.todo) or (self.study is not None and self.asked < self.sweep.spec.trials)

    def next(self) -> Variant:
        if self.todo:
            variant = self.todo.pop(0)
            if self.study is not None and variant.settings:  # a trial run again (--resume): told like a new one
                self.study.enqueue_trial(variant.settings)
                self.trials[variant.id] = self.study.ask(self.distributions)
            return variant
        self.asked += 1
        trial = self.study.ask(self.distributions)
        search = self.sweep.spec.search
        settings = {
            key: _rounded(v, search[key]) if isinstance(v, float) and search[key].choices is None else v
            for key, v in trial.params.items()
        }
        names = short_names(list(self.sweep.spec.search))
        variant = Variant(variant_id(self.sweep.id, names, settings, f"t{self.asked:02d}"), settings)
        self.trials[variant.id] = trial
        return variant

    def tell(self, variant: Variant, value: float | None) -> None:
        if (trial := self.trials.pop(variant.id, None)) is not None:
            import optuna

            if value is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, value)


def _distributions(search: dict[str, SearchRangeParams]) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    return {
        key: CategoricalDistribution(space.choices)
        if space.choices is not None
        else IntDistribution(int(space.low), int(space.high), log=space.log)
        if space.integer
        else FloatDistribution(space.low, space.high, log=space.log)
        for key, space in search.items()
    }


# --- the plan: shared stages once, plus each variant ---------------------------------------------------------------


@dataclass
class SweepPlan:
    stages: dict[str, list[runner.StagePlan]]  # per variant, labelled as the sweep will run them
    total: plan.Plan  # shared builds (the tiny model) once, then each variant's training
    leaders: dict[str, list[str]]  # variant -> the shared stages it runs before the variants that copy them
    followers: dict[str, list[str]]  # leader -> the variants that copy its shared stages

    def format(self, sweep: Sweep, jobs: int) -> str:
        baseline = variants(sweep)[0].id
        lines = [f"sweep {sweep.id} ({sweep.params_file}): {len(self.stages)} variants to run, baseline {baseline}"]
        for variant, stages in self.stages.items():
            lines.append(f"  {variant}: {runner.describe(stages)}")
        if sweep.spec.sampler == "optuna" and sweep.spec.trials:
            lines.append(
                f"  ... and {sweep.spec.trials} trials asked of Optuna, each estimated as the params as written"
            )
        lines.append(plan.format_plan(self.total))
        if jobs > 1:
            lines.append(
                f"with --jobs {jobs}, up to {jobs} variants at once on this machine, each needing its peak memory"
            )
        return "\n".join(lines)


def plan_sweep(sweep: Sweep, planned: list[Variant]) -> SweepPlan:
    """What each variant would do, and the sweep's total cost: a build several variants share (the tiny model from
    one corpus) counted once, each variant's training once each. Variants whose shared stages (ingest, generate) would
    run with the same keys copy them from the first of them, which runs them first."""
    from tunebook import tiny

    stages, estimates, groups, note = {}, [], {}, ""
    for variant in planned:
        params = variant_params(sweep, variant)
        stages[variant.id] = runner.plan_stages(params, sweep.stages)
        shared = tuple(s.cache_key for s in stages[variant.id] if s.stage in runner.SHAREABLE and s.label == "run")
        if shared:
            groups.setdefault(shared, []).append(variant.id)
        own = plan.estimate(params, sweep.params_file, *tiny.plan_inputs(params))
        note = note or own.note
        for estimate in own.estimates:
            if estimate.stage != "sft":
                if estimate not in estimates:
                    estimates.append(estimate)
            else:
                estimates.append(plan.Estimate(**{**asdict(estimate), "stage": f"sft {variant.id}"}))
    asked = [e for e in estimates if e.stage == f"sft {sweep.id}-{BASE}"] if sweep.spec.sampler == "optuna" else []
    for trial in range(1, sweep.spec.trials + 1 if asked else 0):  # Optuna's trials are not known before they run
        estimates.append(plan.Estimate(**{**asdict(asked[0]), "stage": f"sft trial {trial}"}))
    leaders, followers = {}, {}
    for members in groups.values():
        leader, *others = members
        if others or asked:  # Optuna's trials, asked later, copy what the params as written ran first
            leaders[leader] = [s.stage for s in stages[leader] if s.stage in runner.SHAREABLE and s.label == "run"]
            followers[leader] = others
            for other in others:
                for stage in stages[other]:
                    if stage.stage in leaders[leader]:
                        stage.shared_from = leader
    budget = sweep.params.run.budget
    return SweepPlan(stages, plan.Plan(estimates, note, budget.max_hours, budget.max_memory_gb), leaders, followers)


# --- one variant, in a process of its own ----------------------------------------------------------------------------


@dataclass
class Task:
    """What a local job or a Ray worker needs to run one variant (or only its shared stages, as a leader)."""

    workdir: str
    params_file: str
    overrides: list[str]
    stages: list[str]
    sweep: dict  # the manifest's `sweep`: id and settings
    log: str
    show_code: bool
    threads: int | None = None  # torch's threads in the variant's kernels: a share of the machine's cores

    @property
    def run_id(self) -> str:
        return self.overrides[-1].removeprefix("run.id=")


def execute(task: Task) -> dict:
    """Run one variant (tunebook.runner, as `tunebook run` would), its output into its log; returns how it ended:
    status, and for a failure the one line and the stage and cell it failed in."""
    os.environ["TUNEBOOK_WORKDIR"] = task.workdir
    if task.threads:
        os.environ.update(OMP_NUM_THREADS=str(task.threads), MKL_NUM_THREADS=str(task.threads))
    started = time.monotonic()
    outcome = {"where": f"{platform.node()} pid {os.getpid()}"}
    Path(task.log).parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            params = load_params(task.params_file, task.overrides)
            runner.run_pipeline(
                params,
                Path(task.params_file),
                task.stages,
                show_code=task.show_code,
                progress=False,
                overrides=task.overrides,
                sweep=task.sweep,
            )
            outcome["status"] = "completed"
        except Exception as err:  # anything: the other variants go on, and this one says where it stopped
            message = (str(err) or type(err).__name__).splitlines()[0][:400]
            print(f"tunebook: {message}", flush=True)
            # The manifest says where only if this attempt got as far as a stage (not a held lock, not bad params).
            in_stage = not isinstance(err, ParamsError | runner.RunError) or re.match(r"stage \w+ failed", str(err))
            outcome.update(status="failed", error=message, failed=_failed_stage(task.run_id) if in_stage else None)
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome


def _ray_execute(task: Task) -> dict:
    import ray

    return execute(task) | {"where": f"ray node {ray.get_runtime_context().get_node_id()[:12]} pid {os.getpid()}"}


class LocalJobs:
    """Variants as processes of this machine, `jobs` at a time: a variant killed for memory takes no other with it."""

    def __init__(self, jobs: int):
        self.capacity = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def submit(self, task: Task) -> subprocess.Popen:
        task.threads = self.threads
        task_file = Path(task.log).with_suffix(".task.json")
        write_atomic(task_file, json.dumps(asdict(task)))
        Path(task.log).with_suffix(".outcome.json").unlink(missing_ok=True)
        with open(task.log, "a", encoding="utf-8") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tunebook.sweep", str(task_file)], stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self, running: dict) -> tuple[Any, dict]:
        while True:
            for process, task in running.items():
                if process.poll() is not None:
                    found = Path(task.log).with_suffix(".outcome.json")
                    if found.is_file():
                        return process, json.loads(found.read_text(encoding="utf-8"))
                    why = f"its process ended with exit code {process.returncode} before it finished (see its log)"
                    failed = _failed_stage(task.run_id)
                    return process, {"status": "failed", "error": why, "where": f"pid {process.pid}", "failed": failed}
            time.sleep(0.5)

    def stop(self, running: dict) -> None:
        """Interrupt the running variants as Ctrl-C would (each records where it stopped), then kill the slow."""
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def close(self) -> None:
        pass


class RayCluster:
    """Variants as tasks of a Ray cluster (`auto`: the one this machine has started, or an address), each asking for
    the CPUs, and where the cluster has them the GPUs, of its SFT processes. Every node must have tunebook installed
    and see the workdir (a shared file system)."""

    def __init__(self, address: str):
        import ray

        host, _, port = address.rpartition(":")
        if host and port.isdigit() and "://" not in address:  # Ray itself would retry a dead address for minutes
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as err:
                raise runner.RunError(
                    f"--ray {address}: nothing answers there ({err}); start a cluster with `ray start --head`"
                ) from None
        try:
            ray.init(address=address, log_to_driver=False, logging_level="error", configure_logging=False)
        except ConnectionError as err:
            raise runner.RunError(
                f"--ray {address}: no Ray cluster to join ({err}); start one with `ray start --head`"
            ) from None
        resources = ray.cluster_resources()
        self.gpus = resources.get("GPU", 0) > 0
        self.capacity = max(1, int(resources.get("CPU", 1)))
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        # A task no single node can hold would wait for ever: one CPU and one GPU per SFT process, on one node.
        self.largest = {kind: max((node.get(kind, 0) for node in nodes), default=0) for kind in ("CPU", "GPU")}
        self.remote = ray.remote(max_retries=0)(_ray_execute)
        self.ray = ray

    def submit(self, task: Task):
        processes = load_params(task.params_file, task.overrides).sft.processes
        asks = {"CPU": processes, "GPU": processes if self.gpus else 0}
        if any(asks[kind] > self.largest[kind] for kind in asks):
            raise runner.RunError(
                f"variant {task.run_id} asks for {asks['CPU']} CPUs and {asks['GPU']} GPUs (sft.processes "
                f"{processes}) on one node, and the largest node of the cluster has {self.largest}"
            )
        return self.remote.options(num_cpus=asks["CPU"], num_gpus=asks["GPU"]).remote(task)

    def wait(self, running: dict) -> tuple[Any, dict]:
        [ref], _ = self.ray.wait(list(running), num_returns=1)
        try:
            return ref, self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # the worker died, or the task could not start
            return ref, {"status": "failed", "error": str(err).splitlines()[0][:400], "where": "ray"}

    def stop(self, running: dict) -> None:
        for ref in running:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()


def _main(task_file: str) -> int:
    """`python -m tunebook.sweep TASK.json`: a local job, which leaves its outcome beside its log."""
    task = Task(**json.loads(Path(task_file).read_text(encoding="utf-8")))
    Path(task_file).unlink()  # it holds the --set overrides as given, which may name a key
    outcome = execute(task)
    write_atomic(Path(task.log).with_suffix(".outcome.json"), json.dumps(outcome))
    return 0


# --- the sweep ------------------------------------------------------------------------------------------------------


def read_record(sweep_id: str) -> dict:
    path = record_path(sweep_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def to_run(sweep: Sweep, resume: bool) -> tuple[list[Variant], dict]:
    """The variants this sweep runs, and the record it continues: all of them, or with --resume those of the last
    attempt that did not complete (failed, or never finished), which must have been the same sweep."""
    record = read_record(sweep.id)
    if not resume:
        return variants(sweep), {}
    if not record:
        raise ParamsError(f"--resume: no sweep {sweep.id} to resume ({sweep.record_path} does not exist)")
    same = {
        "params_file": _path(sweep.params_file),
        "overrides": _masked(sweep.overrides),
        "spec": sweep.spec.model_dump(),
    }
    changed = [key for key, value in same.items() if record.get(key) != value]
    if changed:
        raise ParamsError(f"--resume: sweep {sweep.id} ran with another {', '.join(changed)}; give it another --id")
    return [Variant(v["id"], v["settings"]) for v in record["variants"] if v["status"] != "completed"], record


def run_sweep(
    sweep: Sweep,
    todo: list[Variant],
    record: dict,
    sweep_plan: SweepPlan,
    jobs: int = 1,
    ray_address: str | None = None,
    show_code: bool = False,
) -> dict:
    """Run the variants (the leaders' shared stages first), `jobs` at a time here or on a Ray cluster, recording
    each as it ends; then the sweep page and the runs index. Returns the record. Stopped (Ctrl-C, an error), the
    sweep stops its running variants and records them failed, so that --resume runs them again."""
    with runner.exclusive(sweeps_dir() / f".{sweep.id}.lock", f"sweep {sweep.id}"):
        runner.ensure_kernel()  # once, here: variants starting together would all install it at once
        executor = RayCluster(ray_address) if ray_address else LocalJobs(jobs)
        record = _new_record(sweep, todo, record, ray_address, jobs)
        capacity = jobs if jobs > 1 or not ray_address else executor.capacity
        running: dict[Any, tuple[Variant, Task]] = {}
        try:
            leaders = {v.id: sweep_plan.leaders[v.id] for v in todo if v.id in sweep_plan.leaders}
            if leaders:
                first = Search(sweep, [v for v in todo if v.id in leaders], ask=False)
                _run(sweep, first, executor, record, running, capacity, show_code, leaders)
                todo = _without_failed_leaders(record, todo, sweep_plan)
            earlier = [v for v in record["variants"] if v["id"] != f"{sweep.id}-{BASE}"]
            told = [
                (v["settings"], v["value"]) for v in earlier if v["status"] == "completed" and v["value"] is not None
            ]
            search = Search(sweep, todo, asked=len(earlier), told=told)
            _run(sweep, search, executor, record, running, capacity, show_code)
        except BaseException as err:
            executor.stop({handle: task for handle, (_, task) in running.items()})
            for variant, _ in running.values():
                _entry(record, variant).update(status="failed", error=f"the sweep stopped ({type(err).__name__})")
            record.update(finished=runner.now(), status="failed")
            _save(record)
            raise
        finally:
            executor.close()
        record.update(finished=runner.now(), status=_status(record))
        _save(record)
    from tunebook import compare

    try:
        record["page"] = str(compare.sweep_page(record))
    except Exception as err:  # the runs are done and recorded; a page that cannot be drawn must not hide that
        record["page"] = None
        print(f"tunebook: the sweep page could not be written ({type(err).__name__}: {err})", file=sys.stderr)
    _save(record)
    reports.write_index()
    return record


def _run(
    sweep: Sweep,
    search: Search,
    executor,
    record: dict,
    running: dict,
    capacity: int,
    show_code: bool,
    leaders: dict[str, list[str]] | None = None,
) -> None:
    """Keep `capacity` variants running until the search has none left; a leader runs only its shared stages."""
    total = len(search.todo) + (sweep.spec.trials - search.asked if search.study else 0)
    bar = tqdm(total=total, unit="variant", desc=f"sweep {sweep.id}" + (": shared stages" if leaders else ""))
    while search.more() or running:
        while search.more() and len(running) < capacity:
            variant = search.next()
            task = _task(sweep, variant, leaders[variant.id] if leaders else sweep.stages, show_code)
            entry = _entry(record, variant)
            entry.update(status="running", started=runner.now(), log=os.path.relpath(task.log, sweeps_dir()))
            _save(record)
            running[executor.submit(task)] = (variant, task)
        handle, outcome = executor.wait({h: t for h, (_, t) in running.items()})
        variant, task = running.pop(handle)
        entry = _entry(record, variant)
        entry.pop("failed", None), entry.pop("error", None)
        if leaders and outcome["status"] == "completed":  # its shared stages: the variant itself runs with the rest
            entry.update(status="pending")
        else:
            value = _value_of(sweep, variant.id) if outcome["status"] == "completed" else None
            entry.update(outcome, value=value)
            if leaders:
                entry["error"] = f"its shared stages ({', '.join(leaders[variant.id])}) failed: {entry['error']}"
            search.tell(variant, value)
            tqdm.write(_outcome_line(variant.id, entry), file=sys.stderr)
        _save(record)
        bar.update()
    bar.close()


def _without_failed_leaders(record: dict, todo: list[Variant], sweep_plan: SweepPlan) -> list[Variant]:
    """A leader whose shared stages failed fails the variants that would copy them (rather than have each redo,
    and most likely fail, the same work); --resume runs them all again."""
    failed = {entry["id"]: entry for entry in record["variants"] if entry["status"] == "failed"}
    leader_of = {follower: leader for leader in failed for follower in sweep_plan.followers.get(leader, [])}
    for variant in todo:
        if leader := leader_of.get(variant.id):
            _entry(record, variant).update(
                status="failed",
                failed=failed[leader].get("failed"),
                value=None,
                error=f"the shared stages it copies failed in {leader}",
            )
    _save(record)
    return [variant for variant in todo if variant.id not in failed and variant.id not in leader_of]


def _task(sweep: Sweep, variant: Variant, stages: list[str], show_code: bool) -> Task:
    return Task(
        workdir=str(paths.workdir()),
        params_file=str(sweep.params_file),
        overrides=[*sweep.overrides, *variant.overrides()],
        stages=stages,
        sweep={"id": sweep.id, "settings": variant.settings},
        log=str(sweeps_dir() / sweep.id / f"{variant.id}.log"),
        show_code=show_code,
    )


def _new_record(sweep: Sweep, todo: list[Variant], previous: dict, ray_address: str | None, jobs: int) -> dict:
    record = {
        "sweep_id": sweep.id,
        "params_file": _path(sweep.params_file),
        "overrides": _masked(sweep.overrides),
        "spec": sweep.spec.model_dump(),
        "stages": sweep.stages,
        "started": runner.now(),
        "finished": None,
        "status": "running",
        "executor": f"ray {ray_address}" if ray_address else f"local, {jobs} at a time",
        "variants": previous.get("variants", []),
    }
    for variant in todo:
        _entry(record, variant).update(status="pending")
    _save(record)
    return record


def _entry(record: dict, variant: Variant) -> dict:
    for entry in record["variants"]:
        if entry["id"] == variant.id:
            return entry
    record["variants"].append({"id": variant.id, "settings": variant.settings, "status": "pending"})
    return record["variants"][-1]


def _path(params_file: Path) -> str:
    return str(Path(params_file).resolve())


def _masked(overrides: list[str]) -> list[str]:
    return [mask_override(override) for override in overrides]


def _failed_stage(run_id: str) -> dict | None:
    """Where a variant's run stopped, from its manifest: the stage and cell it failed in, or the stage it was still
    running when its process died (no cell: a killed kernel or process says none)."""
    manifest = runner.read_manifest(run_id)
    if manifest.get("status") == "failed" and manifest.get("failed"):
        return manifest["failed"]
    running = [stage for stage, entry in manifest.get("stages", {}).items() if entry.get("status") == "running"]
    return {"stage": running[0], "cell": None} if running else None


def _save(record: dict) -> None:
    write_atomic(record_path(record["sweep_id"]), json.dumps(record, indent=2, sort_keys=True) + "\n")


def _status(record: dict) -> str:
    statuses = {entry["status"] for entry in record["variants"]}
    return "completed" if statuses == {"completed"} else "failed"


def _value_of(sweep: Sweep, run_id: str) -> float | None:
    """The variant's target metric (points), from the evaluation that scored its system."""
    system, score = sweep.target()
    scored = reports.evaluated_models(run_id)
    system = system or reports.final_model(list(scored))
    return scored.get(system, {}).get(score)


def _outcome_line(run_id: str, entry: dict) -> str:
    if entry["status"] == "completed":
        value = entry.get("value")
        return f"{run_id}: completed" + (f", {value:.1f}" if value is not None else "") + f" ({entry['seconds']:.0f} s)"
    failed = entry.get("failed") or {}
    where = f" in {failed['stage']}, cell {failed['cell']}" if failed else ""
    return f"{run_id}: FAILED{where}: {entry.get('error', '')} (log: {sweeps_dir() / entry.get('log', '')})"


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
