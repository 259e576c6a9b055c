"""RL: GRPO with its rollouts generated in batches vs one completion at a time, inside TRL's GRPOTrainer.

The RL stage's own train_rl on the demo's tiny model (with a short SFT adapter on the demo dataset as the starting
model), rewarded by the demo's signature check and format penalty, with the demo's rl.trainer settings; the only
difference between the two sides is rl.batch_size: the demo's, or 1. Each side trains --steps optimizer steps,
--repeats times, interleaved, and keeps its best time. Completions/s and optimizer steps/s go to
reports/bench/rl.json.

    .venv/bin/python benchmarks/bench_rl.py [--steps 8] [--repeats 3] [--threads N] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bench_sft import demo_dataset
from record import write_summary

from tunebook import documents, models, paths, registry, rl
from tunebook.params import load_params
from tunebook.sft import register_model, train_sft, training_data
from tunebook.tiny import build_tiny

RUN = "bench"


def starting_model(scratch: Path, demo) -> None:
    """The demo dataset as run `bench`'s generate stage, and a short SFT adapter on the tiny model, registered."""
    dataset_dir = demo_dataset(scratch, demo.ingest.stdlib_modules)
    for path in dataset_dir.iterdir():  # the splits and the card (the run directories live below it too)
        if path.is_file():
            shutil.copy(path, paths.stage_dir(RUN, "generate"))
    texts = [d.text for d in documents.read_documents(scratch / "corpus", [".md"])[0]]
    model_dir = str(build_tiny(texts, scratch / "models", demo.tiny, progress=False))
    sft_params = demo.sft.model_copy(update={"base_model": model_dir, "trainer": {**demo.sft.trainer, "max_steps": 60}})
    data = training_data(sft_params, paths.stage_dir(RUN, "generate"), [])
    result = train_sft(sft_params, model_dir, data, paths.stage_dir(RUN, "sft"), seed=0, progress=False)
    register_model(RUN, result, sft_params, data)


def timed(params, prompts) -> tuple[float, int]:
    """Seconds of GRPO training (TRL's train_runtime: rollouts, rewards and optimizer steps) and the steps run."""
    start = time.perf_counter()
    result = rl.train_rl(params, RUN, prompts, paths.stage_dir(RUN, "rl"), seed=0, progress=False)
    elapsed = time.perf_counter() - start
    return result.metrics.get("train_runtime", elapsed), int(result.history["step"].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    # 0: torch's default, as the stage runs (both cores here). Batching is what lets those threads work: one
    # sequence's small matmuls leave them idle (measured: 2.5x with one thread, 3.2x with two).
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = load_params(paths.project_root() / "params" / "demo.yaml")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-rl-"))
    os.environ["TUNEBOOK_WORKDIR"] = str(scratch)
    if f"{RUN}:sft" not in registry.entries():
        starting_model(scratch, demo)
    trainer = {**demo.rl.trainer, "max_steps": args.steps}
    base = demo.rl.model_copy(update={"model": "sft", "trainer": trainer})
    prompts = rl.train_prompts(RUN, base, seed=0)
    batched = demo.rl.batch_size
    sides = {"batched": base, "one_at_a_time": base.model_copy(update={"batch_size": 1})}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    steps = 0
    for _ in range(args.repeats):
        for side, params in sides.items():
            elapsed, steps = timed(params, prompts)
            seconds[side].append(elapsed)
    completions = steps * trainer["per_device_train_batch_size"]
    best = {side: min(times) for side, times in seconds.items()}
    speedup = best["one_at_a_time"] / best["batched"]
    print(
        f"{steps} GRPO steps, {completions} completions: batched ({batched} a pass) {best['batched']:.1f}s, one at a "
        f"time {best['one_at_a_time']:.1f}s: {speedup:.2f}x"
    )

    def timing(side: str) -> dict:
        return {
            "seconds": [round(s, 2) for s in seconds[side]],
            "completions_per_s": round(completions / best[side], 2),
            "optimizer_steps_per_s": round(steps / best[side], 3),
        }

    summary = {
        "benchmark": "rl: GRPO (TRL's GRPOTrainer through tunebook.rl.train_rl) with rollouts from "
        "models.generate_tokens in batches of rl.batch_size vs one completion at a time; demo tiny model with a "
        "short SFT adapter, the demo's rl.trainer and rewards (signature check, ROUGE-L, format), fp32",
        "command": f"python benchmarks/bench_rl.py --steps {args.steps} --repeats {args.repeats} "
        f"--threads {args.threads}",
        "steps": steps,
        "completions": completions,
        "num_generations": trainer["num_generations"],
        "max_completion_length": trainer["max_completion_length"],
        "batch_size": batched,
        "device": models.device().type,
        "threads": torch.get_num_threads(),
        "batched": timing("batched"),
        "one_at_a_time": timing("one_at_a_time"),
        "speedup": round(speedup, 2),
        "goal": "speedup >= 3 on CPU",
    }
    write_summary("rl", summary)


if __name__ == "__main__":
    main()
