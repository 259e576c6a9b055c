"""Campaigns against a real OpenAI-compatible server (llama-cpp-python's, over the tiny model's GGUF) on
loopback: the protocol, the response cache, kill -9 and resume, and parse failures of a teacher that talks
nonsense."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from test_generate import stdlib_chunks

from tunebook import generate, ingest
from tunebook.files import read_complete_lines
from tunebook.params import GenerateParams

# Run as a separate process, so that it can be killed with -9 like a real campaign.
CAMPAIGN_SCRIPT = """
import json, sys
from pathlib import Path

import pytest
from tunebook import generate
from tunebook.chunking import Chunk
from tunebook.params import GenerateParams
spec = json.loads(Path(sys.argv[1]).read_text())
chunks = [Chunk(**c) for c in spec["chunks"]]
params = GenerateParams.model_validate(spec["params"])
campaign = generate.run_campaign(generate.plan_jobs(chunks, params), params, Path(spec["out_dir"]), progress=False)
print(json.dumps({"requests": campaign.requests, "cache_hits": campaign.cache_hits, "resumed": campaign.resumed}))
"""


def campaign_params(base_url: str, **overrides) -> GenerateParams:
    teachers = [
        {
            "name": "served",
            "backend": "openai",
            "model": "tiny",
            "base_url": base_url,
            "questions": "extractive",
            "max_new_tokens": 24,
        },
        {"name": "extractive", "backend": "extractive"},
    ]
    return GenerateParams(teachers=teachers, context_chunks=0, concurrency=2, **overrides)


def start_campaign(tmp_path: Path, workdir: Path, chunks, params: GenerateParams, out_dir: Path) -> subprocess.Popen:
    spec = tmp_path / f"spec-{out_dir.name}.json"
    spec.write_text(
        json.dumps({"chunks": [asdict(c) for c in chunks], "params": params.model_dump(), "out_dir": str(out_dir)})
    )
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(workdir)}
    return subprocess.Popen(
        [sys.executable, "-c", CAMPAIGN_SCRIPT, str(spec)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def outcome(records: list[dict]) -> tuple[set, set, set]:
    """What a campaign produced, whatever order its jobs finished in."""
    jobs = {(r["job"], r["teacher"]) for r in records}
    samples = {(s["id"], s["messages"][1]["content"]) for r in records for s in r["samples"]}
    failures = {(f["id"], f["step"]) for r in records for f in r["failures"]}
    return jobs, samples, failures


def test_openai_teacher_answers_through_the_protocol_and_the_cache(llama_server, tmp_path):
    chunks = stdlib_chunks(tmp_path, ("bisect",))
    params = campaign_params(llama_server.base_url)
    jobs = generate.plan_jobs(chunks, params)
    first = generate.run_campaign(jobs, params, tmp_path / "a", progress=False)
    served = [r for r in first.records if r["teacher"] == "served"]
    assert served and first.requests == sum(r["requests"] for r in served) > 0
    # Every answer the server wrote is a sample, or a failure that keeps what it said: the tiny model talks
    # in blank lines and seldom ends its turn within 24 tokens.
    answers = [s for r in served for s in r["samples"]] + [f for r in served for f in r["failures"]]
    assert len(answers) == first.requests and all(f["output"] for r in served for f in r["failures"])
    cut_off = "cut off: no end of turn within max_new_tokens (24)"
    assert {f["error"] for r in served for f in r["failures"]} <= {"an empty answer", cut_off}
    # A finished campaign re-run sends nothing, and so does the same campaign in a new directory.
    again = generate.run_campaign(jobs, params, tmp_path / "a", progress=False)
    assert (again.requests, again.resumed) == (0, len(jobs))
    elsewhere = generate.run_campaign(jobs, params, tmp_path / "b", progress=False)
    assert (elsewhere.requests, elsewhere.cache_hits) == (0, first.requests)
    assert outcome(elsewhere.records) == outcome(first.records)


def settled(server, quiet_s: float = 1.0, timeout_s: float = 30.0) -> int:
    """The server's count of answered requests once it has not changed for quiet_s."""
    count, since, deadline = server.requests_answered(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        if (now := server.requests_answered()) != count:
            count, since = now, time.monotonic()
    return count


def test_killed_at_5_random_points_then_resumed_loses_nothing_and_sends_nothing_twice(llama_server, tmp_path, workdir):
    # Enough jobs that the campaign is still running when it is killed: llama.cpp answers in milliseconds.
    chunks = stdlib_chunks(tmp_path, ("bisect", "heapq", "json", "textwrap", "shlex", "fnmatch"))
    params = campaign_params(llama_server.base_url)
    answered_at_start = llama_server.requests_answered()
    reference = finish(start_campaign(tmp_path, tmp_path / "reference-workdir", chunks, params, tmp_path / "ref"))
    expected = outcome(read_complete_lines(tmp_path / "ref" / generate.CAMPAIGN_LOG))

    out_dir = tmp_path / "killed"
    log = out_dir / generate.CAMPAIGN_LOG
    kill_points = sorted(random.Random(0).sample(range(2, len(chunks) - 5), 5))  # jobs done when it is killed
    for point in kill_points:
        done = len(log.read_text().splitlines()) if log.exists() else 0
        process = start_campaign(tmp_path, workdir, chunks, params, out_dir)
        deadline = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= max(point, done + 1)):
            assert process.poll() is None and time.monotonic() < deadline, "the campaign ended before the kill"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_before_kill = log.read_text().splitlines()
        assert all(json.loads(line) for line in done_before_kill)  # parseable at the moment of the kill
        assert len(done_before_kill) < len(chunks)

    # The server may still be answering a request the last killed campaign sent: count once it is quiet.
    answered_before = settled(llama_server)
    resumed = finish(start_campaign(tmp_path, workdir, chunks, params, out_dir))
    records = read_complete_lines(log)
    assert resumed["resumed"] >= len(done_before_kill)
    assert len(records) == len({r["job"] for r in records}) == len(chunks)  # 0 duplicated
    assert outcome(records) == expected  # 0 lost, and the same samples
    # The server's own count: only the requests in flight at each kill can have been sent twice.
    assert llama_server.requests_answered() - answered_before == resumed["requests"]
    sent_again = llama_server.requests_answered() - answered_at_start - reference["requests"]
    assert reference["requests"] <= sent_again <= reference["requests"] + len(kill_points) * params.concurrency


def test_a_teacher_that_writes_no_json_gets_parse_failures_with_ids(llama_server, tmp_path):
    chunks = stdlib_chunks(tmp_path, ("bisect", "heapq"))
    collection = ingest.open_collection(tmp_path / "chroma", "ctx", ingest.EMBEDDED_MODEL)
    ingest.index_chunks(collection, chunks, progress=False)
    params = GenerateParams(
        teachers=[
            {
                "name": "served",
                "backend": "openai",
                "model": "tiny",
                "base_url": llama_server.base_url,
                "max_new_tokens": 24,
            }
        ],
        context_chunks=2,
        concurrency=4,
    )
    jobs = generate.plan_jobs(chunks, params, collection)
    assert all(len(job.context) == 2 and job.chunk not in job.context for job in jobs)
    campaign = generate.run_campaign(jobs, params, tmp_path / "out", progress=False)
    table = generate.failures(campaign.records)
    assert sorted(table["id"]) == sorted(job.id for job in jobs)  # one per job, named by the job's id
    assert set(table["step"]) == {"questions"} and table["error"].str.len().min() > 0
    assert generate.teacher_table(campaign.records, {}, params).iloc[0]["failure_rate"] == 1.0
    # No row to split: the stage stops in one line that says where the replies went.
    with pytest.raises(generate.DatasetError) as stopped:
        generate.build_dataset(campaign.records, chunks, params)
    assert str(stopped.value).startswith("0 rows: too few for train/val/test")
    assert f"; {len(jobs)} teacher replies failed to parse (first: " in str(stopped.value)
    assert str(stopped.value).endswith("each recorded in campaign.jsonl")
