"""Campaign throughput against a real local OpenAI-compatible server: 8 requests in flight vs one at a time.

The server is `transformers serve` over the offline tiny model, on loopback. Both campaigns send the
same requests, each with an empty response cache; a third run re-runs the finished campaign and must
send nothing. Results go to reports/bench/generate.json.

    .venv/bin/python benchmarks/bench_generate.py [--modules json,bisect,heapq] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from record import write_summary

from tunebook import chunking, documents, generate, ingest, servers
from tunebook.params import GenerateParams, TinyParams
from tunebook.tiny import build_tiny

BENCH_TINY = TinyParams(
    vocab_size=600,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=128,
    context_length=128,
    steps=60,
    batch_size=8,
)


def campaign(jobs, params: GenerateParams, scratch: Path, name: str) -> dict:
    """Run the jobs in a workdir of their own (so with an empty cache, unless reused) and time it."""
    os.environ["TUNEBOOK_WORKDIR"] = str(scratch / name.split(":")[0])
    started = time.perf_counter()
    result = generate.run_campaign(jobs, params, scratch / name.replace(":", "-"), progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "requests": result.requests, "cache_hits": result.cache_hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="json,bisect,heapq", help="stdlib modules whose docs are the corpus")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    ingest.write_stdlib_corpus(args.modules.split(","), scratch / "corpus")
    docs, _ = documents.read_documents(scratch / "corpus", [".md"])
    chunks = chunking.chunk_documents(docs, 900, 150)
    model_dir = str(build_tiny([d.text for d in docs], scratch / "models", BENCH_TINY, progress=False))

    results = {}
    for batching in (True, False):
        mode = "batching server" if batching else "one-request-at-a-time server"
        with servers.openai_server(model_dir, scratch / f"serve-{batching}.log", batching=batching) as base_url:
            teacher = {
                "name": "served",
                "backend": "openai",
                "model": model_dir,
                "base_url": base_url,
                "questions": "extractive",
                "max_new_tokens": args.max_new_tokens,
            }
            runs = {}
            for concurrency in (1, args.concurrency):
                params = GenerateParams(teachers=[teacher], concurrency=concurrency, context_chunks=0)
                jobs = generate.plan_jobs(chunks, params)
                runs[f"concurrency_{concurrency}"] = campaign(jobs, params, scratch, f"{mode}-{concurrency}")
            runs["cache_rerun"] = campaign(jobs, params, scratch, f"{mode}-{args.concurrency}:rerun")
        sequential, parallel = runs["concurrency_1"], runs[f"concurrency_{args.concurrency}"]
        assert sequential["requests"] == parallel["requests"] > 0, runs
        runs["speedup"] = round(sequential["seconds"] / parallel["seconds"], 2)
        results[mode] = runs
        print(
            f"{mode}: {sequential['requests']} requests, 1 in flight {sequential['seconds']} s, "
            f"{args.concurrency} in flight {parallel['seconds']} s: {runs['speedup']}x; "
            f"cache re-run sent {runs['cache_rerun']['requests']}"
        )

    summary = {
        "benchmark": "generate: campaign concurrency and response cache against transformers serve (tiny model)",
        "command": "python benchmarks/bench_generate.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "chunks": len(chunks),
        "results": results,
        "goal": "speedup >= 4 with 8 in flight; cache re-run sends 0 requests",
    }
    write_summary("generate", summary)


if __name__ == "__main__":
    main()
