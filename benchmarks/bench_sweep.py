"""Sweeps: a 4-variant grid of SFT settings as `tunebook sweep`, one and two variants at a time, vs the same 4 variants
as separate `tunebook run`s that each do their own ingest and generate.

Every side runs params/ci.yaml's ingest, generate, sft and evaluate through the real CLI, from an empty workdir
(so each builds its tiny model once, too); each separate run has a workdir of its own, as a run per variant was
before sweeps (in one workdir, later runs would copy the first one's ingest and generate). Wall seconds per side,
the stages each side actually executed (completed, not shared or cached, from the manifests) and the ratios go to
reports/bench/sweep.json.

    .venv/bin/python benchmarks/bench_sweep.py [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_summary

from tunebook import paths

PARAMS = str(paths.project_root() / "params" / "ci.yaml")
STAGES = "ingest,generate,sft,evaluate"
GRID = {"sft.lora.r": ["8", "16"], "sft.trainer.learning_rate": ["0.003", "0.001"]}
TUNEBOOK = str(Path(sys.executable).with_name("tunebook"))


def tunebook(workdir: Path, *args: str) -> None:
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(workdir)}
    done = subprocess.run([TUNEBOOK, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"tunebook {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def executed(workdir: Path) -> dict[str, int]:
    """How many times each stage really ran across the workdir's runs (completed, not shared or cached)."""
    counts = dict.fromkeys(STAGES.split(","), 0)
    for manifest in workdir.glob("**/reports/*/run.json"):
        for stage, record in json.loads(manifest.read_text())["stages"].items():
            counts[stage] += record.get("status") == "completed" or (
                record.get("status") == "cached" and "shared_from" not in record
            )
    return counts


def side(scratch: Path, name: str, work) -> dict:
    workdir = scratch / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    start = time.perf_counter()
    work(workdir)
    seconds = round(time.perf_counter() - start, 1)
    print(f"{name}: {seconds} s, stages run {executed(workdir)}", flush=True)
    return {"seconds": seconds, "stages_run": executed(workdir)}


def separate(workdir: Path) -> None:
    """Each variant in a workdir of its own, as one run per variant was before sweeps: nothing to share."""
    for rank in GRID["sft.lora.r"]:
        for rate in GRID["sft.trainer.learning_rate"]:
            overrides = ["--set", f"run.id=r{rank}-lr{rate}", "--set", f"sft.lora.r={rank}"]
            overrides += ["--set", f"sft.trainer.learning_rate={rate}"]
            tunebook(workdir / f"r{rank}-lr{rate}", "run", PARAMS, "--stages", STAGES, "--confirm", *overrides)


def sweep(jobs: int):
    grid = [arg for key, values in GRID.items() for arg in ("--grid", f"{key}={','.join(values)}")]
    return lambda workdir: tunebook(
        workdir, "sweep", PARAMS, *grid, "--stages", STAGES, "--jobs", str(jobs), "--id", "bench", "--confirm"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results = {
        "separate_runs": side(scratch, "separate", separate),
        "sweep_jobs_1": side(scratch, "sweep1", sweep(1)),
        "sweep_jobs_2": side(scratch, "sweep2", sweep(2)),
    }
    base = results["separate_runs"]["seconds"]
    summary = {
        "benchmark": "4 variants of params/ci.yaml (sft.lora.r 8/16 x learning_rate 0.003/0.001), stages ingest to "
        "evaluate, from an empty workdir each: 4 separate `tunebook run`s vs `tunebook sweep` with --jobs 1 and 2",
        "command": "python benchmarks/bench_sweep.py",
        **results,
        "speedup_shared_work": round(base / results["sweep_jobs_1"]["seconds"], 2),
        "speedup_shared_work_and_2_jobs": round(base / results["sweep_jobs_2"]["seconds"], 2),
        "speedup_2_jobs_over_1": round(results["sweep_jobs_1"]["seconds"] / results["sweep_jobs_2"]["seconds"], 2),
    }
    write_summary("sweep", summary)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
