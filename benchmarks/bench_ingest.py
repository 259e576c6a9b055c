"""Ingest: streaming, batch-embedded ingest of a generated corpus vs embedding every chunk one call at a time.

A seeded generator writes English-like Markdown documents (headings, paragraphs, lists; sentences built from a
fixed vocabulary, so no two chunks are alike) of about 10 KB each: a small corpus (--small-mb) and a large one
(--large-mb, the small one is its prefix). Each measurement runs in its own fresh process, so its peak RSS
(ru_maxrss) is its own:

- streaming: ingest.ingest_corpus with the default IngestParams (embedding_dtype "auto") into a fresh embedded
  collection, on the small and on the large corpus; peak RSS of the two is the "memory stays flat" figure;
- streaming float32: the same on the small corpus with embedding_dtype "float32", which separates what batching
  gives from what bfloat16 gives;
- one at a time: the naive way, collection.add of one chunk per call with the collection's own (float32)
  embedding function, on the first --sample chunks of the small corpus.

Models are loaded and warmed before the clock starts; the RSS at that point is recorded as each process's
baseline. Results go to reports/bench/ingest.json.

    .venv/bin/python benchmarks/bench_ingest.py [--small-mb 5] [--large-mb 20] [--sample 1500] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_summary

DOC_BYTES = 10_000
SEED = 18
COLLECTION = "bench"

# --- the generated corpus --------------------------------------------------------------------------------------

NOUNS = """
account adapter agreement algorithm analysis answer archive assembly attribute audit balance batch boundary
bracket branch buffer budget cable cache calendar catalogue channel chapter checkpoint circuit claim clause
client cluster column committee component condition configuration connection constraint contract controller
counter customer dashboard database deadline default delivery dependency deployment device diagram directory
document domain draft engine entry environment estimate event evidence exception experiment factor feature
field filing filter format framework function gateway gradient guideline handler hardware header history
incident index input instrument interface inventory invoice issue journal kernel label layer ledger library
license limit manual margin measurement memory message method metric migration model module monitor network
notice object operator option order outline output package panel parameter partner patch pattern payment
permission pipeline platform policy pool procedure process product profile protocol provider query queue
record region register release report repository request requirement resource response review revision
routine sample schedule schema scope section sensor sequence server service session signal snapshot socket
specification stage statement storage strategy stream structure subsystem summary supplier surface switch
table target task template tenant terminal threshold ticket token tolerance transaction transfer trigger
update upgrade user valve variable vendor version volume warning warranty workflow workload worker
""".split()
VERBS = """
accepts adjusts allocates applies approves archives assigns balances builds caches calibrates captures checks
collects compares compiles computes configures confirms connects contains converts copies creates defines
delivers describes detects determines documents drains enables encodes ensures estimates evaluates exports
extends extracts filters flags forwards generates groups handles identifies ignores imports includes indexes
inspects installs invokes isolates joins limits lists loads locks logs maintains maps marks measures merges
monitors moves normalises notifies opens orders parses passes prepares preserves processes produces protects
publishes queries records reduces refreshes registers rejects releases removes renders replaces reports
requests requires resolves restores retains returns reviews rotates samples schedules selects sends separates
serialises signs sorts splits stores streams submits summarises supports suspends tracks transfers translates
triggers updates validates verifies writes
""".split()
ADJECTIVES = """
active annual automatic available basic binary central clean closed common complete compressed concurrent
consistent critical current custom daily default dedicated detailed direct distributed dynamic early
efficient empty encrypted entire existing expected external final fixed formal global hidden incremental
independent initial internal invalid large latest legal linear local logical main manual maximum minimum
mobile monthly native nested new nominal normal numeric official open optional original outdated parallel
partial pending periodic permanent persistent physical previous primary private public quarterly raw
readable recent redundant regional relevant remote required reserved restricted safe scheduled secondary
secure separate sequential shared short similar simple single small stable standard static strict structured
temporary total typical unique unused upstream urgent valid verbose visible weekly written
""".split()
ADVERBS = """
automatically briefly carefully clearly correctly currently directly eventually explicitly finally first
frequently generally immediately independently initially later manually normally often only periodically
previously promptly quickly rarely regularly safely separately silently simply slowly soon strictly
temporarily typically usually
""".split()
PREPOSITIONS = "about across after against along around before behind below beside between beyond by during for from inside into near of on onto outside over through throughout to toward under until upon with within without".split()  # noqa: E501
DETERMINERS = "the the the a each every this that its their any another no some".split()
CONJUNCTIONS = "and but so yet because although while unless whereas once".split()


class Writer:
    """English-like Markdown from a seeded generator: the same seed writes the same corpus on any machine."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def phrase(self) -> str:
        rng = self.rng
        words = [rng.choice(DETERMINERS)]
        if rng.random() < 0.6:
            words.append(rng.choice(ADJECTIVES))
        words.append(rng.choice(NOUNS))
        if rng.random() < 0.3:
            words += [rng.choice(PREPOSITIONS), rng.choice(DETERMINERS), rng.choice(NOUNS)]
        return " ".join(words)

    def clause(self) -> str:
        rng = self.rng
        words = [self.phrase()]
        if rng.random() < 0.25:
            words.append(rng.choice(ADVERBS))
        words += [rng.choice(VERBS), self.phrase()]
        if rng.random() < 0.5:
            words += [rng.choice(PREPOSITIONS), self.phrase()]
        return " ".join(words)

    def sentence(self) -> str:
        rng = self.rng
        text = self.clause()
        if rng.random() < 0.4:
            text += f", {rng.choice(CONJUNCTIONS)} {self.clause()}"
        if rng.random() < 0.1:
            text += f" ({rng.randint(2, 9999)} {rng.choice(NOUNS)}s)"
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def title(self) -> str:
        words = [self.rng.choice(ADJECTIVES), self.rng.choice(NOUNS)]
        if self.rng.random() < 0.5:
            words += [self.rng.choice(["and", "of", "for", "in"]), self.rng.choice(NOUNS)]
        return " ".join(word if word in {"and", "of", "for", "in"} else word.capitalize() for word in words)

    def paragraph(self) -> str:
        if self.rng.random() < 0.15:
            return "\n".join(f"- {self.sentence()}" for _ in range(self.rng.randint(3, 6)))
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 8)))

    def document(self, number: int, size: int) -> str:
        parts = [f"# {self.title()} ({number})"]
        length = len(parts[0])
        while length < size:
            marker = "###" if self.rng.random() < 0.3 else "##"
            block = [f"{marker} {self.title()}"] + [self.paragraph() for _ in range(self.rng.randint(1, 4))]
            parts += block
            length += sum(len(part) + 2 for part in block)
        return "\n\n".join(parts) + "\n"


def write_corpus(corpus_dir: Path, megabytes: float, seed: int = SEED) -> dict:
    """Documents of about DOC_BYTES each, 100 to a folder, until the corpus holds `megabytes` of text."""
    writer, total, count = Writer(seed), 0, 0
    while total < megabytes * 1_000_000:
        text = writer.document(count, DOC_BYTES)
        path = corpus_dir / f"part_{count // 100:03d}" / f"doc_{count:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
        count += 1
    return {"documents": count, "megabytes": round(total / 1_000_000, 2)}


# --- the measurements, each in its own process ------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def stream(corpus: Path, scratch: Path, dtype: str) -> dict:
    """ingest_corpus as stage 00 runs it, default params but for the embedding dtype."""
    from tunebook import documents, ingest
    from tunebook.params import IngestParams

    collection = ingest.open_collection(scratch / "chroma", COLLECTION, ingest.EMBEDDED_MODEL)
    ingest.embedding_function(ingest.EMBEDDED_MODEL, dtype)(["warm up the model"])  # cached: ingest reuses it
    collection._embedding_function(["warm up the model"])
    params = IngestParams(corpus_dir=str(corpus), embedding_dtype=dtype)
    baseline, baseline_peak = rss_mb(), peak_rss_mb()
    start = time.perf_counter()
    files = documents.find_files(corpus, [".md"])
    result = ingest.ingest_corpus(corpus, files, collection, scratch / "chunks.jsonl", params, progress=False)
    seconds = time.perf_counter() - start
    assert result.added == result.chunks == collection.count(), (result, collection.count())
    return {
        "documents": result.documents,
        "chunks": result.chunks,
        "near_duplicates": len(result.near_duplicates),
        "seconds": round(seconds, 2),
        "docs_per_s": round(result.documents / seconds, 2),
        "chunks_per_s": round(result.chunks / seconds, 2),
        "rss_after_load_mb": round(baseline, 1),
        "peak_rss_after_load_mb": round(baseline_peak, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "embedding_dtype": ingest.resolved_dtype(dtype),
    }


def one_at_a_time(corpus: Path, scratch: Path, sample: int) -> dict:
    """The naive way: one collection.add per chunk, embedded by the collection's own float32 function."""
    from tunebook import chunking, documents, ingest
    from tunebook.params import IngestParams

    defaults = IngestParams()
    chunks: list[chunking.Chunk] = []
    for path in documents.find_files(corpus, [".md"]):
        document = documents.read_file(corpus, path)
        chunks += chunking.chunk_document(document, defaults.chunk_chars, defaults.overlap_chars)
        if len(chunks) >= sample:
            break
    chunks = chunks[:sample]
    collection = ingest.open_collection(scratch / "chroma", COLLECTION, ingest.EMBEDDED_MODEL)
    collection._embedding_function(["warm up the model"])
    baseline, baseline_peak = rss_mb(), peak_rss_mb()
    start = time.perf_counter()
    for chunk in chunks:
        metadata = {"source": chunk.source, "index": chunk.index, "heading": chunk.heading}
        collection.add(ids=[chunk.id], documents=[chunk.text], metadatas=[metadata])
    seconds = time.perf_counter() - start
    assert collection.count() == len(chunks)
    return {
        "chunks": len(chunks),
        "documents_sampled": len({chunk.source for chunk in chunks}),
        "seconds": round(seconds, 2),
        "chunks_per_s": round(len(chunks) / seconds, 2),
        "rss_after_load_mb": round(baseline, 1),
        "peak_rss_after_load_mb": round(baseline_peak, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "embedding_dtype": "float32",
    }


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    mode, corpus, scratch = args.child
    scratch_dir = Path(scratch)
    scratch_dir.mkdir(parents=True)
    if mode == "one_at_a_time":
        row = one_at_a_time(Path(corpus), scratch_dir, args.sample)
    else:
        row = stream(Path(corpus), scratch_dir, mode.removeprefix("stream_"))
    print(json.dumps(row))


def measure(mode: str, corpus: Path, scratch: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(scratch)}
    command = [sys.executable, __file__, "--child", mode, str(corpus), str(scratch / f"run-{mode}-{corpus.name}")]
    command += ["--threads", str(args.threads), "--sample", str(args.sample)]
    print(f"-- {mode} on {corpus.name} ...", flush=True)
    output = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    row = json.loads(output.strip().splitlines()[-1])
    print(f"   {row}", flush=True)
    return row


# --- the run --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=float, default=5)
    parser.add_argument("--large-mb", type=float, default=20)
    parser.add_argument("--sample", type=int, default=1500, help="chunks for the one-at-a-time baseline")
    # torch's own default (one thread per core), as the ingest stage runs; every measurement runs with the same.
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CORPUS", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from tunebook import ingest

    wall = time.perf_counter()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    small, large = scratch / "corpus-small", scratch / "corpus-large"
    corpora = {"small": write_corpus(small, args.small_mb), "large": write_corpus(large, args.large_mb)}
    print(f"corpora under {scratch}: {corpora}", flush=True)

    rows = {
        "one_at_a_time": measure("one_at_a_time", small, scratch, args),
        "streaming_small": measure("stream_auto", small, scratch, args),
        "streaming_large": measure("stream_auto", large, scratch, args),
        "streaming_small_float32": measure("stream_float32", small, scratch, args),
    }
    baseline = rows["one_at_a_time"]["chunks_per_s"]
    speedup = rows["streaming_large"]["chunks_per_s"] / baseline
    float32_speedup = rows["streaming_small_float32"]["chunks_per_s"] / baseline
    dtype_gain = rows["streaming_small"]["chunks_per_s"] / rows["streaming_small_float32"]["chunks_per_s"]
    rss_ratio = rows["streaming_large"]["peak_rss_mb"] / rows["streaming_small"]["peak_rss_mb"]
    growth = {name: round(row["peak_rss_mb"] - row["rss_after_load_mb"], 1) for name, row in rows.items()}
    goals = {
        "speedup >= 5": {"value": round(speedup, 2), "met": speedup >= 5},
        "rss_ratio <= 1.2": {"value": round(rss_ratio, 3), "met": rss_ratio <= 1.2},
    }
    seconds = time.perf_counter() - wall

    print()
    print(f"{'run':<26}{'docs':>7}{'chunks':>8}{'s':>9}{'docs/s':>9}{'chunks/s':>10}{'RSS load':>10}{'peak RSS':>10}")
    for name, row in rows.items():
        print(
            f"{name:<26}{row.get('documents', row.get('documents_sampled', 0)):>7}{row['chunks']:>8}"
            f"{row['seconds']:>9.1f}{row.get('docs_per_s', float('nan')):>9.1f}{row['chunks_per_s']:>10.1f}"
            f"{row['rss_after_load_mb']:>10.0f}{row['peak_rss_mb']:>10.0f}"
        )
    print(f"speedup (streaming {args.large_mb:g} MB vs one at a time): {speedup:.2f}x")
    print(f"  of which batching alone (float32, {args.small_mb:g} MB): {float32_speedup:.2f}x")
    print(f"  and {rows['streaming_small']['embedding_dtype']} over float32: {dtype_gain:.2f}x")
    print(f"peak RSS {args.large_mb:g} MB / {args.small_mb:g} MB: {rss_ratio:.3f}")
    for goal, outcome in goals.items():
        print(f"goal {goal}: {outcome['value']} {'met' if outcome['met'] else 'MISSED'}")
    print(f"whole benchmark: {seconds:.0f}s")

    write_summary(
        "ingest",
        {
            "benchmark": "ingest: ingest.ingest_corpus (streaming documents, batch embedding, default IngestParams) "
            "into a fresh embedded Chroma collection, vs one collection.add per chunk embedded by the collection's "
            "own float32 function; generated English-like Markdown corpora, each run in its own process",
            "command": f"python benchmarks/bench_ingest.py --small-mb {args.small_mb:g} --large-mb {args.large_mb:g} "
            f"--sample {args.sample} --threads {args.threads}",
            "corpora": {f"{args.small_mb:g}MB": corpora["small"], f"{args.large_mb:g}MB": corpora["large"]},
            "document_bytes": DOC_BYTES,
            "seed": SEED,
            "embedding_model": ingest.EMBEDDED_MODEL,
            "embedding_dtype_auto": ingest.resolved_dtype("auto"),
            "cpu": cpu_model(),
            "threads": args.threads or f"torch default ({os.cpu_count()} cores)",
            "one_at_a_time_sample": f"the first {rows['one_at_a_time']['chunks']} chunks of the {args.small_mb:g} MB "
            "corpus",
            "runs": rows,
            "rss_growth_mb": growth,
            "speedup": round(speedup, 2),
            "float32_batched_speedup": round(float32_speedup, 2),
            "auto_dtype_over_float32": round(dtype_gain, 2),
            "rss_ratio": round(rss_ratio, 3),
            "goals": goals,
            "seconds": round(seconds, 1),
            "note": "2 shared cores with other work running: timings are noisy; the ratios are what to compare",
        },
    )


if __name__ == "__main__":
    main()
