"""Evaluation's generation: batched greedy decoding vs one prompt at a time, with the same answers.

models.generate at the demo's evaluate.batch_size and at batch size 1, both greedy with the demo's
evaluate.max_new_tokens, on the demo's tiny base model and the questions of the demo dataset's test split
(then its val split, up to --prompts). Each side runs --repeats times, interleaved, and keeps its best
time, so load from other processes on the machine weighs on both alike. Results go to
reports/bench/evaluate.json.

    .venv/bin/python benchmarks/bench_evaluate.py [--prompts 128] [--repeats 3] [--threads 1] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_sft import demo_dataset
from record import write_summary

from tunebook import dataset, documents, models, paths
from tunebook.params import load_params
from tunebook.tiny import build_tiny


def timed(
    loaded: models.LoadedModel, conversations: list[list[dict]], max_new_tokens: int, batch_size: int
) -> tuple[list[models.Generation], float]:
    """The answers and the seconds they took."""
    start = time.perf_counter()
    answers = models.generate(loaded, conversations, max_new_tokens, batch_size, progress=False)
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    # One by default: on a machine shared with other work, torch's threads stall waiting for each other at
    # every op (measured here: 10-50x slower with 2 threads on 2 busy cores), which swamps what is measured.
    parser.add_argument("--threads", type=int, default=1)
    # The demo data and tiny model stay here between runs (its pre-training takes minutes on a CPU); the
    # build is cached by content, so a changed corpus or tiny section still builds afresh.
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = load_params(paths.project_root() / "params" / "demo.yaml")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    os.environ["TUNEBOOK_WORKDIR"] = str(scratch)
    dataset_dir = demo_dataset(scratch, demo.ingest.stdlib_modules)
    texts = [d.text for d in documents.read_documents(scratch / "corpus", [".md"])[0]]
    model_dir = str(build_tiny(texts, scratch / "models", demo.tiny, progress=False))

    rows = dataset.read_split(dataset_dir, "test") + dataset.read_split(dataset_dir, "val")
    conversations = [row["messages"][:-1] for row in rows[: args.prompts]]
    loaded = models.load_model("base", model_dir)
    max_new_tokens, batch_size = demo.evaluate.max_new_tokens, demo.evaluate.batch_size
    seconds: dict[int, list[float]] = {1: [], batch_size: []}
    answers: dict[int, list[list[models.Generation]]] = {1: [], batch_size: []}
    for _ in range(args.repeats):
        for size in seconds:
            generations, elapsed = timed(loaded, conversations, max_new_tokens, size)
            answers[size].append(generations)
            seconds[size].append(elapsed)
    reference = answers[1][0]
    identical = all(run == reference for runs in answers.values() for run in runs)
    differing = sum(a != b for a, b in zip(answers[batch_size][0], reference, strict=True))
    best = {size: min(times) for size, times in seconds.items()}
    speedup = best[1] / best[batch_size]
    print(
        f"{len(conversations)} prompts: one at a time {best[1]:.1f}s, batch_size {batch_size} "
        f"{best[batch_size]:.1f}s: {speedup:.2f}x; identical answers: {identical}"
    )

    def timing(size: int) -> dict:
        return {
            "seconds": [round(s, 2) for s in seconds[size]],
            "prompts_per_s": round(len(conversations) / best[size], 2),
        }

    summary = {
        "benchmark": "evaluate: greedy generation with models.generate, batched (left padding, KV cache, batches "
        "of similar length) vs one prompt at a time; demo tiny base model, demo dataset questions",
        "command": f"python benchmarks/bench_evaluate.py --prompts {args.prompts} --repeats {args.repeats} "
        f"--threads {args.threads}",
        "prompts": len(conversations),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "device": models.device().type,
        "threads": torch.get_num_threads(),
        "answers_stopped": sum(g.stopped for g in reference),
        "one_at_a_time": timing(1),
        "batched": timing(batch_size),
        "speedup": round(speedup, 2),
        "identical_answers": identical,
        "differing_answers": differing,
        "goal": "speedup >= 4 with identical answers",
    }
    write_summary("evaluate", summary)


if __name__ == "__main__":
    main()
