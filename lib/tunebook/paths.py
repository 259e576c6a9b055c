"""Where things live: the project (code, params, notebooks) and the workdir (data/, reports/)."""

from __future__ import annotations

import os
from pathlib import Path

STAGES = ("ingest", "generate", "sft", "evaluate", "dpo", "rl", "export")
NOTEBOOKS = {stage: f"{i:02d}_{stage}" for i, stage in enumerate(STAGES)}


def project_root() -> Path:
    """The checkout holding notebooks/ and params/ (tunebook is installed editable from lib/)."""
    if env := os.environ.get("TUNEBOOK_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def workdir() -> Path:
    """Where data/ and reports/ are written; tests point TUNEBOOK_WORKDIR at a temporary directory."""
    if env := os.environ.get("TUNEBOOK_WORKDIR"):
        return Path(env).resolve()
    return project_root()


def resolve(path: str | Path) -> Path:
    """Params hold paths relative to the workdir, so a run is the same wherever it is started from."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else workdir() / path


def locate(path: str | Path) -> Path | None:
    """A file params name, relative to the workdir first, then to the checkout (which ships params/general/);
    None when neither holds it (a hub id, a task name)."""
    return next((found for found in (resolve(path), project_root() / path) if found.is_file()), None)


def model_source(name: str) -> str:
    """A model as params name it, as transformers loads it: a local directory (relative to the workdir) by its
    real path, so that a link (the run's tiny model) is pinned to the build it points at; else a hub id."""
    local = resolve(name)
    return str(local.resolve()) if local.is_dir() else name


def data_dir() -> Path:
    return workdir() / "data"


def reports_dir() -> Path:
    return workdir() / "reports"


def models_dir() -> Path:
    return data_dir() / "models"


def chroma_dir() -> Path:
    return data_dir() / "chroma"


def run_dir(run_id: str) -> Path:
    return data_dir() / "runs" / run_id


def stage_dir(run_id: str, stage: str) -> Path:
    """A stage's artifacts; created on demand so a notebook can run alone in JupyterLab."""
    path = run_dir(run_id) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebook_path(stage: str) -> Path:
    return project_root() / "notebooks" / f"{NOTEBOOKS[stage]}.ipynb"
