"""SFT peak memory: QLoRA (4-bit NF4 base, double quantisation) vs LoRA (bf16 base), same everything else.

The model is a random-init Llama of about 100M parameters built from a config (nothing is downloaded),
shaped so that weights dominate: a small vocabulary, batch 1, short sequences. Each method trains a few
steps through tunebook's own train_sft in a fresh process, and the peak comes from its PeakMemory
callback: torch's peak allocation on a GPU (the goal's measure); on a CPU, the bytes of the weights,
quantisation state and optimizer state (the activations of batch 1 x 64 tokens are small beside them).
Results go to reports/bench/memory.json.

    .venv/bin/python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from record import write_summary

from tunebook import documents, ingest
from tunebook.params import SftParams, TinyParams
from tunebook.sft import TrainingData, train_sft
from tunebook.tiny import init_model, train_tokenizer

SHAPE = TinyParams(vocab_size=2048, hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816)
MODULES = ["json", "csv", "textwrap", "string", "heapq"]


def build_model(scratch: Path) -> tuple[Path, int]:
    """The random-init model in bf16 with a real tokenizer and chat template; and its parameter count."""
    ingest.write_stdlib_corpus(MODULES, scratch / "corpus")
    texts = [d.text for d in documents.read_documents(scratch / "corpus", [".md"])[0]]
    model_dir = scratch / "model"
    model_dir.mkdir()
    tokenizer = train_tokenizer(texts, model_dir, SHAPE)
    model = init_model(tokenizer, SHAPE).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, sum(p.numel() for p in model.parameters())


def worker(method: str, model_dir: str, out_dir: str) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is item {i} of the list?"},
                {"role": "assistant", "content": f"Item {i} is the {i}th entry of the list."},
            ]
        }
        for i in range(32)
    ]
    data = TrainingData(Dataset.from_list(rows), Dataset.from_list([]), "bench", Path(out_dir), [])
    trainer = {
        "per_device_train_batch_size": 1,
        "max_length": 64,
        "max_steps": 4,
        "save_steps": 10**6,
        "eval_steps": 10**6,
        "logging_steps": 1,
    }
    params = SftParams(method=method, precision="bf16", trainer=trainer)
    result = train_sft(params, model_dir, data, Path(out_dir), seed=0, progress=False)
    print(json.dumps({"peak_memory_gb": result.metrics["peak_memory_gb"], "trainable": result.trainable_params}))


def measure(method: str, model_dir: Path, scratch: Path) -> dict:
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(scratch)}
    command = [sys.executable, __file__, "--worker", method, str(model_dir), str(scratch / method)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "MODEL_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    scratch = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    model_dir, parameters = build_model(scratch)
    peaks = {method: measure(method, model_dir, scratch) for method in ("lora", "qlora")}
    ratio = peaks["qlora"]["peak_memory_gb"] / peaks["lora"]["peak_memory_gb"]
    print(
        f"peak memory: LoRA (bf16 base) {peaks['lora']['peak_memory_gb']:.3f} GB, "
        f"QLoRA (NF4 base) {peaks['qlora']['peak_memory_gb']:.3f} GB: {ratio:.2f}x"
    )
    write_summary(
        "memory",
        {
            "benchmark": "sft peak memory, QLoRA (NF4, double quantisation, bf16 compute) vs LoRA (bf16 base); "
            "random-init Llama from a config, batch 1, 64 tokens, 4 steps, tunebook's train_sft",
            "command": "python benchmarks/bench_memory.py",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "measured as": "torch.cuda.max_memory_allocated"
            if torch.cuda.is_available()
            else "bytes of weights, quantisation state and optimizer state at step ends (no activations)",
            "parameters": parameters,
            "lora_peak_gb": peaks["lora"]["peak_memory_gb"],
            "qlora_peak_gb": peaks["qlora"]["peak_memory_gb"],
            "trainable_parameters": peaks["lora"]["trainable"],
            "qlora_over_lora": round(ratio, 3),
            "goal": "<= 0.45",
        },
    )


if __name__ == "__main__":
    main()
