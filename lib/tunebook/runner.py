"""Running a params file: papermill per stage, the stage cache, the run manifest and the runs index.

Each stage notebook is executed with its params section injected, saved as reports/<run>/NN_stage.ipynb
(the record of the run) and rendered to HTML. A stage is reused instead of re-run when its notebook, its
params section, its inputs (upstream outputs, files it reads) and the source of the tunebook modules it runs
(the import closure of its notebook's imports, less the report-drawing `plots` and `reports`) are unchanged,
no stage it reads re-ran, and its outputs are still on disk. The key leaves the run's name out: an ingest or
generate stage another run completed with the same key is shared, its outputs and report copied, not redone.

A model named `tiny` never reaches a stage: before a stage whose params name it runs, the offline model is built
(or reused) from the run's chunks, and the stage is given its directory (see tunebook.tiny), with the build's
key among the stage's inputs.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory

import nbformat
import papermill
from IPython.core.inputtransformer2 import TransformerManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError
from tqdm import tqdm
from traitlets.config import Config

import tunebook
from tunebook import paths, reports
from tunebook.files import PROGRESS_FILE, hash_tree, read_progress, sha256_file, sha256_text, write_atomic
from tunebook.params import Params, mask_override, mask_secrets

KERNEL = "tunebook"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "chromadb",
    "papermill",
    "sentence-transformers",
    "llama-cpp-python",
)
# Each stage reads the outputs of these earlier stages; their hashes are part of its cache key. DPO and RL read
# nothing of evaluate's: they train on train prompts only, since test failures must never train.
UPSTREAM = {
    "ingest": (),
    "generate": ("ingest",),
    "sft": ("ingest", "generate"),
    "evaluate": ("ingest", "generate", "sft"),
    "dpo": ("ingest", "generate", "sft"),
    "rl": ("ingest", "generate", "sft", "dpo"),
    "export": ("generate", "sft", "dpo", "rl"),
}
# Bulky or time-stamped by-products that are not part of a stage's output identity.
NOT_OUTPUTS = ("checkpoints", "tensorboard", "wandb")
# Stages another run may hand over whole when its cache key is this run's: their outputs are files alone (no
# registry entry names them), so copying them is doing the work. Runs of one sweep ingest and generate once.
SHAREABLE = ("ingest", "generate")
# The installed package, whose modules' source is part of the cache keys of the stages that run them.
PACKAGE = Path(tunebook.__file__).parent
# Modules that only draw a stage's report (figures, the summary box). A notebook's own imports of them stay out
# of its key, so that fixing a plot does not retrain a model; a reused stage keeps the report drawn when it
# ran, and `tunebook run --force` (or `--from`) redraws it. A stage module that imported one would keep it in.
PRESENTATION = frozenset({"tunebook.plots", "tunebook.reports"})


class RunError(Exception):
    """A run that cannot start or that failed; the message is one line for the terminal."""


@dataclass
class StagePlan:
    stage: str
    cache_key: str
    cached: bool
    shared_from: str | None = None  # another run whose completed stage has this cache key, to copy instead

    @property
    def label(self) -> str:
        return "cached" if self.cached else f"shared from {self.shared_from}" if self.shared_from else "run"


def describe(plans: list[StagePlan]) -> str:
    """`ingest [cached], sft [run], ...`: what a run would do with each stage."""
    return ", ".join(f"{plan.stage} [{plan.label}]" for plan in plans)


def select_stages(stages: list[str] | None = None, from_stage: str | None = None) -> list[str]:
    for name in [*(stages or []), *([from_stage] if from_stage else [])]:
        if name not in paths.STAGES:
            raise RunError(f"unknown stage '{name}' (stages: {', '.join(paths.STAGES)})")
    selected = list(paths.STAGES if not stages else [s for s in paths.STAGES if s in stages])
    if from_stage:
        selected = [s for s in selected if paths.STAGES.index(s) >= paths.STAGES.index(from_stage)]
    return selected


def manifest_path(run_id: str) -> Path:
    return paths.reports_dir() / run_id / "run.json"


def lock_path(run_id: str) -> Path:
    return manifest_path(run_id).with_name(".lock")


@contextmanager
def run_lock(run_id: str) -> Iterator[None]:
    """Held for a whole run: two runs on one id would write the same manifest and stage directories."""
    with exclusive(lock_path(run_id), f"run {run_id}"):
        yield


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """An flock on `path`, or a RunError naming `what` and its holder. An flock dies with its process, so a run
    killed with -9 leaves no lock behind to clean up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "pid unknown"  # empty while the holder is still writing it
            raise RunError(f"{what} is already running ({holder}); wait for it or stop it") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}, since {now()}")
        lock.flush()
        yield


def read_manifest(run_id: str) -> dict:
    return reports.read_manifest(run_id)


def plan_stages(params: Params, selected: list[str], force: bool = False) -> list[StagePlan]:
    """Which selected stages would run and which would be reused from the previous run with this id."""
    previous = dict(read_manifest(params.run.id).get("stages", {}))
    plans, upstream_changed = [], set()
    reading = params  # whose files the next stage's inputs are: another run's once this run is to share its work
    for stage in selected:
        key = cache_key(reading, stage, previous)
        before = previous.get(stage, {})
        cached = (
            not force
            and not upstream_changed.intersection(UPSTREAM[stage])
            and before.get("status") in reports.DONE
            and before.get("cache_key") == key
            and before.get("outputs_hash") == outputs_hash(params.run.id, stage)
        )
        donor = None if cached or force or stage not in SHAREABLE else donor_run(params.run.id, stage, key)
        if donor:  # the stages after it will read the donor's outputs (its chunks, for the tiny model's key)
            previous[stage] = {"outputs_hash": outputs_hash(donor, stage)}
            reading = params.model_copy(update={"run": params.run.model_copy(update={"id": donor})})
        if not cached:
            upstream_changed.add(stage)
        plans.append(StagePlan(stage, key, cached, donor))
    return plans


def donor_run(run_id: str, stage: str, key: str) -> str | None:
    """Another run whose stage completed with this cache key and whose outputs are still as it left them."""
    for manifest in reports.manifests():
        other = manifest.get("run_id")
        record = manifest.get("stages", {}).get(stage, {})
        if (
            other != run_id
            and record.get("status") in reports.DONE
            and record.get("cache_key") == key
            and record.get("outputs_hash") == outputs_hash(other, stage)
        ):
            return other
    return None


def cache_key(params: Params, stage: str, manifest_stages: dict) -> str:
    """What decides a stage's outputs, without the run's own name: two runs whose stage has one key would write
    the same outputs (each under its own directory), so one may share them with the other."""
    parameters = {key: value for key, value in stage_parameters(params, stage).items() if key != "run_id"}
    # The run's directory appears in the paths it is given (its tiny model's link): one name for every run.
    named = json.dumps(parameters, sort_keys=True, default=str).replace(f"runs/{params.run.id}/", "runs/RUN/")
    parts = {
        "notebook": hash_tree(paths.notebook_path(stage)),
        "code": code_hash(stage, PACKAGE),
        "params": named,
        "inputs": input_hashes(params, stage, manifest_stages),
    }
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def code_hash(stage: str, package: Path) -> str:
    """Content hash of the source of the tunebook modules the stage runs."""
    modules = stage_modules(stage, package)
    return sha256_text("".join(f"{name}:{sha256_file(_module_file(name, package))}\n" for name in modules))


def stage_modules(stage: str, package: Path) -> tuple[str, ...]:
    """The tunebook modules (in `package`) a stage runs: the import closure of its notebook's tunebook imports,
    less the notebook's own imports of the presentation modules. Found statically, imports inside functions
    included: a lazy import is code the stage runs."""
    found: set[str] = set()
    todo = list(_notebook_imports(paths.notebook_path(stage), package) - PRESENTATION)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(_modules_among(_source_imports(_module_file(name, package), name), package))
    return tuple(sorted(found))


def _notebook_imports(notebook_path: Path, package: Path) -> set[str]:
    names: set[str] = set()
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:  # magics become Python first
            tree = ast.parse(TransformerManager().transform_cell(cell.source))
        except SyntaxError:  # the cell fails when the stage runs, and the notebook's own hash is in the key
            continue
        names |= _imported_names(tree, "", False)
    return _modules_among(names, package)


def _source_imports(path: Path, name: str) -> frozenset[str]:
    stat = path.stat()
    return _parsed_imports(path, name, stat.st_mtime_ns, stat.st_size)


@cache
def _parsed_imports(path: Path, name: str, mtime_ns: int, size: int) -> frozenset[str]:
    """A module's imports, parsed once while the file stays as it is (a plan keys every stage, and a run again)."""
    return frozenset(_imported_names(ast.parse(path.read_bytes(), str(path)), name, path.name == "__init__.py"))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every absolute name an import anywhere in `tree` could load: `from a import b` may load `a.b`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the package `module` is (or is in)
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _modules_among(names: set[str], package: Path) -> set[str]:
    """The names that are tunebook modules, with the packages above each (importing tunebook.a.b runs
    tunebook/__init__.py and tunebook/a/__init__.py too)."""
    found = {name for name in names if _module_file(name, package)}
    above = {name.rsplit(".", i)[0] for name in found for i in range(1, name.count(".") + 1)}
    return found | {name for name in above if _module_file(name, package)}


def _module_file(name: str, package: Path) -> Path | None:
    top, *rest = name.split(".")
    if top != "tunebook" or "" in rest:
        return None
    files = [
        package.joinpath(*rest, "__init__.py"),
        *([package.joinpath(*rest[:-1], f"{rest[-1]}.py")] if rest else []),
    ]
    return next((path for path in files if path.is_file()), None)


def stage_parameters(params: Params, stage: str) -> dict:
    """What papermill injects into the stage's notebook: its params, a `tiny` model as the run's directory."""
    from tunebook import tiny  # torch and transformers, which `tunebook runs` never needs

    return tiny.staged(params).stage_parameters(stage)


def input_hashes(params: Params, stage: str, manifest_stages: dict) -> dict[str, str | None]:
    """Content hashes of what a stage reads: upstream outputs, for ingest the corpus itself, for sft the general
    data mixed in, for evaluate the user's benchmark file, human ratings and general-ability files, for export the
    llama.cpp it converts and serves with, and the build key of the tiny model its params name."""
    from tunebook import tiny

    hashes = {up: manifest_stages.get(up, {}).get("outputs_hash") for up in UPSTREAM[stage]}
    if tiny.tiny_keys(params, stage):  # the run's tiny directory is one name for whichever build it links
        hashes["tiny"] = tiny.run_key(params)
    if stage == "ingest":
        corpus = paths.resolve(params.ingest.corpus_dir)
        # The demo corpus is written by the stage from the installed Python's own documentation.
        generated = bool(params.ingest.stdlib_modules)
        hashes["corpus"] = sys.version if generated else hash_tree(corpus) if corpus.is_dir() else None
    if stage == "export":  # its GGUF converter and llama.cpp come with this version
        hashes["llama-cpp-python"] = _version("llama-cpp-python")
    if stage == "sft":  # the general data mixed in, and what it is decontaminated against
        hashes.update(_file_hashes([*(source.path for source in params.sft.mix), *(params.sft.mix_against or [])]))
    if stage == "evaluate":
        for name in ("benchmark_file", "human_ratings"):
            if path := getattr(params.evaluate, name):
                hashes[name] = hash_tree(paths.resolve(path)) if paths.resolve(path).is_file() else None
        forgetting = params.evaluate.forgetting
        hashes.update(_file_hashes([forgetting.text or "", *forgetting.tasks]))
    return hashes


def _file_hashes(names: list[str]) -> dict[str, str]:
    """The local files among names (a hub id or task name is none): a JSONL's content, a task YAML's with the data
    beside it; relative to the workdir, then the checkout."""
    hashes = {}
    for name in names:
        if name.endswith((".jsonl", ".parquet", ".yaml", ".yml")) and (found := paths.locate(name)):
            hashes[name] = hash_tree(found.parent if name.endswith((".yaml", ".yml")) else found)
    return hashes


def outputs_hash(run_id: str, stage: str) -> str | None:
    directory = paths.run_dir(run_id) / stage
    if not directory.is_dir():
        return None
    return sha256_text("".join(hash_tree(p) for p in sorted(directory.iterdir()) if p.name not in NOT_OUTPUTS))


def run_pipeline(
    params: Params,
    params_file: Path,
    selected: list[str],
    force: bool = False,
    show_code: bool = False,
    progress: bool = True,
    overrides: list[str] = (),
    sweep: dict | None = None,
) -> dict:
    """Execute (or reuse) the selected stages in order; returns the final manifest, which records the
    `--set` overrides on top of the params file, and for a sweep's variant its sweep and settings."""
    with run_lock(params.run.id):
        return _run_stages(params, params_file, selected, force, show_code, progress, list(overrides), sweep)


def _run_stages(
    params: Params,
    params_file: Path,
    selected: list[str],
    force: bool,
    show_code: bool,
    progress: bool,
    overrides: list[str],
    sweep: dict | None,
) -> dict:
    run_id = params.run.id
    report_dir = paths.reports_dir() / run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    previous = read_manifest(run_id)
    manifest = _new_manifest(params, params_file, overrides, previous, sweep)
    plans = {plan.stage: plan for plan in plan_stages(params, selected, force)}
    _missing_upstream(run_id, selected, manifest)
    for stage in selected:
        plan = plans[stage]
        record = manifest["stages"].setdefault(stage, {})
        executed = report_dir / f"{paths.NOTEBOOKS[stage]}.ipynb"
        if plan.cached:
            record["status"] = "cached"
            _log(f"[{stage}] unchanged, reusing {paths.NOTEBOOKS[stage]} from the previous run")
            if record.get("code_shown", False) != show_code and executed.exists():
                reports.render_html(executed, show_code)  # --show-code (or its absence) applies to reused reports too
                record["code_shown"] = show_code
            continue
        # Cache keys depend on upstream outputs, which a re-run or shared stage may just have changed; whether
        # another run did this work is asked again now.
        key = cache_key(params, stage, manifest["stages"])
        donor = None if force or stage not in SHAREABLE else donor_run(run_id, stage, key)
        if donor:
            _share(donor, run_id, stage)
            record.pop("error", None)
            record.update(
                status="shared",
                shared_from=donor,
                cache_key=key,
                inputs=input_hashes(params, stage, manifest["stages"]),
                outputs_hash=outputs_hash(run_id, stage),
                report=f"{paths.NOTEBOOKS[stage]}.html",
                seconds=0.0,
            )
            _log(f"[{stage}] the same work as run {donor}'s: its outputs and report copied")
            _save(manifest)
            continue
        record.pop("error", None)
        record.update(
            status="running",
            cache_key=key,
            inputs=input_hashes(params, stage, manifest["stages"]),
            modules=list(stage_modules(stage, PACKAGE)),  # the code its key covers, for a reader asking why it ran
            started=now(),
        )
        _save(manifest)
        started = time.monotonic()
        try:
            _resolve_tiny(params, stage, progress)
            _execute(params, stage, executed, progress)
        except PapermillExecutionError as err:
            error = {
                "cell": err.cell_index,
                "exec_count": err.exec_count,
                "ename": err.ename,
                "evalue": str(err.evalue)[:500],
            }
            what = f"in cell {err.cell_index}: {err.ename}: {str(err.evalue)[:300]}"
            raise _stage_failed(manifest, stage, error, started, executed, show_code, what) from None
        except DeadKernelError as err:
            # No traceback to show: the kernel process is gone, most often killed for memory.
            why = f"the kernel died ({err}); it was most likely killed for running out of memory"
            cell = _mark_dead_cell(executed, why)
            error = {"cell": cell, "ename": type(err).__name__, "evalue": why}
            where = f"in cell {cell}" if cell is not None else "before its first cell"
            raise _stage_failed(manifest, stage, error, started, executed, show_code, f"{where}: {why}") from None
        except BaseException as err:  # Ctrl-C too: a run that is not running must not say it is
            _fail(manifest, stage, {"cell": None, "ename": type(err).__name__, "evalue": str(err)[:500]}, started)
            _save(manifest)
            reports.write_index()
            raise
        record.update(
            status="completed",
            seconds=round(time.monotonic() - started, 1),
            outputs_hash=outputs_hash(run_id, stage),
            report=f"{paths.NOTEBOOKS[stage]}.html",
            code_shown=show_code,
        )
        reports.render_html(executed, show_code)
        _save(manifest)
    manifest.update(status="completed", finished=now(), failed=None, headline=reports.headline_metrics(run_id))
    _save(manifest)
    reports.write_index()
    return manifest


def _share(donor: str, run_id: str, stage: str) -> None:
    """Copy another run's stage outputs (and its executed notebook and report) into this run, replacing any."""
    target = paths.run_dir(run_id) / stage
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(paths.run_dir(donor) / stage, target, symlinks=True)
    for suffix in (".ipynb", ".html"):
        report = paths.reports_dir() / donor / f"{paths.NOTEBOOKS[stage]}{suffix}"
        if report.exists():
            shutil.copy2(report, paths.reports_dir() / run_id / report.name)


def _stage_failed(
    manifest: dict, stage: str, error: dict, started: float, executed: Path, show_code: bool, what: str
) -> RunError:
    """A stage that failed in its notebook: recorded, its report rendered up to the failure, and the one line
    the run ends with."""
    _fail(manifest, stage, error, started)
    reports.render_html(executed, show_code)
    _save(manifest)
    reports.write_index()
    return RunError(f"stage {stage} failed {what} (see {executed.with_suffix('.html')}; resume with --from {stage})")


def _fail(manifest: dict, stage: str, error: dict, started: float) -> None:
    manifest["stages"][stage].update(status="failed", seconds=round(time.monotonic() - started, 1), error=error)
    manifest.update(status="failed", failed={"stage": stage, "cell": error["cell"]}, finished=now())


def _mark_dead_cell(executed: Path, why: str) -> int | None:
    """The index of the cell the kernel died in, counted as papermill counts a failing cell (in the executed
    notebook, its injected parameters included), marked failed there with the reason as its output.
    papermill saves the notebook as each cell starts, but then marks the dead cell completed."""
    if not executed.exists():
        return None
    notebook = nbformat.read(executed, as_version=4)
    started = [i for i, cell in enumerate(notebook.cells) if cell.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return None
    cell = notebook.cells[started[-1]]
    cell.metadata.papermill.update(status="failed", exception=True)
    if cell.cell_type == "code":
        cell.outputs.append(nbformat.v4.new_output("error", ename="DeadKernelError", evalue=why, traceback=[why]))
    write_atomic(executed, nbformat.writes(notebook))
    return started[-1]


def _missing_upstream(run_id: str, selected: list[str], manifest: dict) -> None:
    first = selected[0] if selected else None
    for up in UPSTREAM.get(first, ()):
        if up not in selected and manifest["stages"].get(up, {}).get("status") not in reports.DONE:
            raise RunError(f"stage {first} needs {up}, which has not completed for run {run_id}: run it first")


def _resolve_tiny(params: Params, stage: str, progress: bool) -> None:
    """Build (or reuse) the tiny model the stage's params name, from this run's chunks, and link it at the
    directory the stage is given."""
    from tunebook import tiny

    if keys := tiny.tiny_keys(params, stage):
        _log(f"[{stage}] {', '.join(keys)}: the offline tiny model, from this run's chunks")
        try:
            model_dir = tiny.resolve(params, progress)
        except ValueError as err:  # a corpus too small for the params, or params that cannot be built
            raise RunError(f"stage {stage} needs the tiny model, which cannot be built: {err}") from None
        _log(f"[{stage}] {tiny.run_model_dir(params.run.id)} -> {model_dir}")


def _execute(params: Params, stage: str, executed: Path, progress: bool) -> None:
    _log(f"[{stage}] running {paths.NOTEBOOKS[stage]}.ipynb")
    # The kernel is reached over Unix sockets in a private directory rather than unencrypted loopback TCP; the
    # directory is short-named because a socket path may not exceed 107 bytes.
    with (
        _stage_progress(paths.run_dir(params.run.id) / stage, stage, progress),
        TemporaryDirectory(prefix="tunebook-kernel-") as sockets,
    ):
        papermill.execute_notebook(
            str(paths.notebook_path(stage)),
            str(executed),
            parameters=stage_parameters(params, stage),
            kernel_name=KERNEL,
            cwd=str(paths.notebook_path(stage).parent),
            progress_bar={"desc": f"{paths.NOTEBOOKS[stage]} cells"} if progress else False,
            config=Config(KernelManager={"transport": "ipc", "ip": f"{sockets}/kernel"}),
        )


@contextmanager
def _stage_progress(stage_dir: Path, stage: str, show: bool) -> Iterator[None]:
    """Mirror the progress a running notebook reports (progress.json) as a second bar in the terminal:
    papermill shows which cell runs, this shows how far a long cell (a campaign) has got, with its ETA."""
    (stage_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a crashed run's last word is not this run's
    if not show:
        yield
        return
    done = threading.Event()

    def follow() -> None:
        bar = None
        while not done.wait(0.5):
            state = read_progress(stage_dir)
            if state is None:
                continue
            if bar is None:
                # On a terminal, the line under papermill's bar; in a log, plain lines without cursor moves
                # (tqdm would otherwise stack it under papermill's bar with escape codes).
                below = 1 if sys.stderr.isatty() else 0
                bar = tqdm(total=state["total"], desc=f"{stage} progress", position=below, leave=False)
            bar.n = state["done"]
            bar.refresh()
        if bar is not None:
            bar.close()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        yield
    finally:
        done.set()
        follower.join()


def ensure_kernel() -> None:
    """Pin the kernel to this interpreter, installing its spec on first use."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="Python (tunebook)", prefix=sys.prefix)


def _new_manifest(params: Params, params_file: Path, overrides: list[str], previous: dict, sweep: dict | None) -> dict:
    return {
        "run_id": params.run.id,
        "name": params.name,
        "params_file": str(params_file),
        "overrides": [mask_override(override) for override in overrides],
        "params": mask_secrets(params.model_dump()),
        "status": "running",
        "started": now(),
        "finished": None,
        "failed": None,
        "git": _git_state(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "tunebook": tunebook.__version__,
        "stages": previous.get("stages", {}),
        "headline": previous.get("headline", {}),
        # a variant re-run on its own (tunebook run --set run.id=VARIANT) stays in its sweep
        "sweep": sweep or previous.get("sweep"),
    }


def _save(manifest: dict) -> None:
    write_atomic(manifest_path(manifest["run_id"]), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _git_state() -> dict:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=paths.project_root(), capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {"sha": sha or None, "dirty": bool(git("status", "--porcelain")) if sha else None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def now() -> str:
    """UTC, to the second: the time stamps of manifests and sweep records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
