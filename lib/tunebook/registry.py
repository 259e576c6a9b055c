"""Trained models by name: `base`, `sft`, `dpo` (this run's) or `RUN_ID:stage` (any run's).

Each entry records what is needed to trust and reload a model: its base and the base's hash, the
dataset hash, the params it was trained with, its metrics and where its adapter lives.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from tunebook import paths
from tunebook.files import hash_tree, write_atomic


class RegistryError(LookupError):
    pass


def registry_path() -> Path:
    return paths.data_dir() / "registry.json"


def entries() -> dict[str, dict]:
    path = registry_path()
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def register(run_id: str, stage: str, entry: dict) -> str:
    """Record (or replace) the model a run's stage produced; returns its name."""
    name = f"{run_id}:{stage}"
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Runs on one workdir share the registry: without the lock, two runs finishing together would each
    # write back what they read, and one entry would be lost. The lock file, not registry.json, is locked
    # because write_atomic replaces registry.json with a new file.
    with open(path.with_name("registry.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        models = entries()
        models[name] = {"name": name, "run_id": run_id, "stage": stage, **entry}
        write_atomic(path, json.dumps(models, indent=2, sort_keys=True) + "\n")
    return name


def register_continued(
    run_id: str, stage: str, start: str, adapter_dir: Path, dataset_hash: str, reference: str, params, metrics: dict
) -> str:
    """Record the adapter of a stage that trains a registered adapter further (DPO, RL): its base and chat
    template are the starting model's (`start`, also its reference), its identity the hash of what it saved."""
    started = entry(start, run_id)
    return register(
        run_id,
        stage,
        {
            **{key: started.get(key) for key in ("base_model", "base_hash", "chat_template")},
            "adapter": str(adapter_dir),
            "model_dir": None,
            "output_hash": hash_tree(adapter_dir),
            "dataset_hash": dataset_hash,
            "reference": reference,
            "params": params.model_dump(),
            "metrics": metrics,
        },
    )


def entry(name: str, run_id: str) -> dict:
    """The registry entry of a model name: `RUN_ID:stage` as given, or a stage of this run."""
    models = entries()
    found = models.get(name if ":" in name else f"{run_id}:{name}")
    if found is None:
        known = ", ".join(sorted(models)) or "none yet"
        raise RegistryError(f"no model named '{name}' in {registry_path()} (known: {known})")
    return found


def resolve(name: str, run_id: str) -> dict:
    """{'name', 'base_model', 'adapter', 'tokenizer', 'identity'} for a model name as params and notebooks write
    it. The identity is the content hash of the weights it names (None for an entry recorded without hashes).
    `base` is prompted with the chat template its fine-tune was trained with (`tokenizer`: where that is), so
    base and fine-tune answer the same prompts, even for a base model that had no template of its own."""
    if name == "base":
        trained = entries().get(f"{run_id}:sft")
        if trained is None:
            raise RegistryError(f"'base' is the base of run {run_id}'s SFT model, and run {run_id} has none")
        identity = trained.get("base_hash")
        return {
            "name": "base",
            "base_model": trained["base_model"],
            "adapter": None,
            "tokenizer": trained.get("adapter") or trained.get("model_dir"),
            "identity": identity,
        }
    found = entry(name, run_id)
    # A fully fine-tuned model is a model directory of its own; an adapter goes on top of its base.
    if found.get("model_dir"):
        identity = found.get("output_hash")
    else:
        hashes = (found.get("base_hash"), found.get("output_hash"))
        identity = "+".join(hashes) if all(hashes) else None
    return {
        "name": name,
        "base_model": found.get("model_dir") or found["base_model"],
        "adapter": found["adapter"],
        "tokenizer": None,
        "identity": identity,
    }
