"""Stage 01: teacher campaigns over the chunks -> quality pipeline -> train/val/test splits, which
`tunebook.dataset` writes (JSONL + dataset card) and every later stage reads.

A campaign is a list of jobs, one per chunk, each given to a teacher by weight: the extractive one, or a
chat model asked through `tunebook.llm`'s pool. A job's id is a hash of everything that decides its answer,
and each finished job is appended to campaign.jsonl as one line. A campaign killed at any point resumes
with the jobs it has not finished; their requests already answered come from the response cache, so
nothing is lost and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tunebook import llm, paths, quality
from tunebook.chunking import Chunk
from tunebook.dataset import SPLITS, Dataset
from tunebook.files import (
    PROGRESS_FILE,
    append_line,
    hash_fraction,
    jsonl_text,
    read_complete_lines,
    sha256_text,
    write_atomic,
)
from tunebook.params import GenerateParams, PromptParams, TeacherParams
from tunebook.teachers import extractive

CAMPAIGN_LOG = "campaign.jsonl"


class DatasetError(ValueError):
    """Rows that cannot make a dataset every later stage can use; the message is the one line to show."""


class CampaignError(RuntimeError):
    """A campaign that had to stop; what it finished is saved and a new run resumes from there."""


@dataclass(frozen=True)
class Job:
    id: str
    index: int  # position in the campaign, which orders the rows whatever order the jobs finish in
    chunk: Chunk
    teacher: str
    context: tuple[Chunk, ...] = ()


# --- planning -------------------------------------------------------------------------------------------


def assign_teacher(chunk_id: str, teachers: list[TeacherParams]) -> str:
    """A chunk's teacher, drawn by weight from a hash of its id: stable across runs and resumes."""
    position = hash_fraction(sha256_text(chunk_id)) * sum(t.weight for t in teachers)
    for teacher in teachers:
        position -= teacher.weight
        if position < 0:
            return teacher.name
    return teachers[-1].name


def related_chunks(collection, chunks: list[Chunk], k: int, batch_size: int = 64) -> dict[str, list[str]]:
    """The ids of the k chunks nearest to each chunk in the Chroma collection, itself excluded."""
    related: dict[str, list[str]] = {}
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        result = collection.query(query_texts=[c.text for c in batch], n_results=k + 1, include=[])
        for chunk, ids in zip(batch, result["ids"], strict=True):
            related[chunk.id] = [i for i in ids if i != chunk.id][:k]
    return related


def plan_jobs(chunks: list[Chunk], params: GenerateParams, collection=None) -> list[Job]:
    """One job per chunk; chunks given to chat teachers carry related chunks from Chroma as context."""
    specs = {t.name: t for t in params.teachers}
    assigned = [(chunk, assign_teacher(chunk.id, params.teachers)) for chunk in chunks]
    chatty = [chunk for chunk, name in assigned if _chain_chats(name, specs)]
    related = {}
    if chatty and params.context_chunks:
        if collection is None:
            raise ValueError("chat teachers retrieve context from the Chroma collection: pass it, or context_chunks: 0")
        related = related_chunks(collection, chatty, params.context_chunks)
    by_id = {chunk.id: chunk for chunk in chunks}
    jobs = []
    for index, (chunk, name) in enumerate(assigned):
        context = tuple(by_id[i] for i in related.get(chunk.id, []) if i in by_id)
        decided_by = {
            "chunk": chunk.id,
            "context": [c.id for c in context],
            "teachers": [_as_loaded(specs[n]).model_dump() for n in fallback_chain(name, specs)],
            "prompts": params.prompts.model_dump(),
            "questions_per_chunk": params.questions_per_chunk,
            "extractive_answer_chars": params.extractive_answer_chars,
            "extractive_templates": extractive.TEMPLATES,  # what the extractive teacher asks, as it asks it
        }
        job_id = sha256_text(json.dumps(decided_by, sort_keys=True))[:16]
        jobs.append(Job(job_id, index, chunk, name, context))
    return jobs


def fallback_chain(name: str, specs: dict[str, TeacherParams]) -> list[str]:
    chain = [name]
    while (fallback := specs[chain[-1]].fallback) is not None and fallback not in chain:
        chain.append(fallback)
    return chain


def _chain_chats(name: str, specs: dict[str, TeacherParams]) -> bool:
    return any(specs[n].backend != "extractive" for n in fallback_chain(name, specs))


# --- the chat teachers ----------------------------------------------------------------------------------


def _chat_teachers(params: GenerateParams) -> list[TeacherParams]:
    """The chat teachers as `tunebook.llm` takes them."""
    return [_as_loaded(spec) for spec in params.teachers if spec.backend != "extractive"]


def _as_loaded(spec: TeacherParams) -> TeacherParams:
    """A teacher with an hf model's local directory by its real path, which job ids and the response cache key
    on: the run's tiny directory is a link, which a rebuild points at another build."""
    return spec.model_copy(update={"model": paths.model_source(spec.model)}) if spec.backend == "hf" else spec


async def _chat(pool: llm.Pool, name: str, messages: list[dict], tally: Counter) -> llm.Reply:
    reply, sent = await pool.chat(name, messages)
    tally["requests" if sent else "cache_hits"] += 1
    return reply


# --- one job --------------------------------------------------------------------------------------------


def parse_questions(reply: str, n: int) -> tuple[list[str], str | None]:
    """The questions in a teacher's reply (a JSON list of strings), or ([], why it is not one)."""
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end < start:
        return [], "no JSON list in the reply"
    try:
        value = json.loads(reply[start : end + 1])
    except json.JSONDecodeError as err:
        return [], f"invalid JSON ({err.msg})"
    if not isinstance(value, list) or not all(isinstance(q, str) for q in value):
        return [], "not a list of strings"
    questions = [" ".join(q.split()) for q in value if q.strip()][:n]
    return (questions, None) if questions else ([], "an empty list")


def _messages(prompts: PromptParams, user: str) -> list[dict]:
    return [{"role": "system", "content": prompts.system}, {"role": "user", "content": user}]


def question_id(question: str) -> str:
    """A row's id: its question, hashed. Deduplication and the split both key on it."""
    return sha256_text(question)[:16]


def _row(question: str, answer: str, template: str, teacher: str, job: Job) -> dict:
    return {
        "id": question_id(question),
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "teacher": teacher,
        "template": template,
        "source": job.chunk.source,
        "chunk_id": job.chunk.id,
        "context_ids": [c.id for c in job.context],
    }


async def _ask(pool: llm.Pool, spec: TeacherParams, job: Job, params: GenerateParams) -> dict:
    """One teacher's samples and parse failures for one chunk."""
    name, tally = spec.name, Counter()
    if spec.backend == "extractive":
        pairs = _extractive(job.chunk, params)
        samples = [_row(qa.question, qa.answer, qa.template, name, job) for qa in pairs]
        return {"teacher": name, "samples": samples, "failures": [], "requests": 0, "cache_hits": 0}
    fields = {
        "n": params.questions_per_chunk,
        "source": job.chunk.source,
        "chunk": job.chunk.text,
        "context": "\n\n---\n\n".join(c.text for c in job.context) or "(none)",
    }
    samples, failures = [], []
    if spec.questions == "extractive":
        questions = [qa.question for qa in _extractive(job.chunk, params)]
    else:
        questions = await _write_questions(pool, name, job, params, fields, tally, failures)
    for question in questions:
        row_id = question_id(question)
        try:
            reply = await _chat(
                pool, name, _messages(params.prompts, params.prompts.answer.format(**fields, question=question)), tally
            )
        except ValueError as err:
            failures.append({"id": row_id, "step": "answer", "error": str(err), "output": ""})
            continue
        error = _answer_error(reply, spec.max_new_tokens)
        if error:
            failures.append({"id": row_id, "step": "answer", "error": error, "output": reply.text[:500]})
        else:
            samples.append(_row(question, reply.text.strip(), f"{spec.questions}-question", name, job))
    return {"teacher": name, "samples": samples, "failures": failures, **tally}


def _extractive(chunk: Chunk, params: GenerateParams) -> list[extractive.QA]:
    """The extractive teacher's questions about a chunk; one under no heading of its document (a plain-text or
    PDF page) gets continuation questions that name its file."""
    document = None if chunk.heading else Path(chunk.source).name
    return extractive.ask(chunk.text, params.extractive_answer_chars, document)


def _answer_error(reply: llm.Reply, max_new_tokens: int) -> str | None:
    if not reply.text.strip():
        return "an empty answer"
    if not reply.stopped:
        return f"cut off: no end of turn within max_new_tokens ({max_new_tokens})"
    return None


async def _write_questions(
    pool: llm.Pool, name: str, job: Job, params: GenerateParams, fields: dict, tally: Counter, failures: list[dict]
) -> list[str]:
    """The teacher's questions about the chunk; a reply that is not a JSON list is a parse failure."""
    try:
        reply = await _chat(pool, name, _messages(params.prompts, params.prompts.question.format(**fields)), tally)
        questions, error = parse_questions(reply.text, params.questions_per_chunk)
        output = reply.text
    except ValueError as err:  # the server answered, but not in the protocol
        output, questions, error = "", [], str(err)
    if error:
        failures.append({"id": job.id, "step": "questions", "error": error, "output": output[:500]})
    return questions


async def _run_job(pool: llm.Pool, specs: dict[str, TeacherParams], job: Job, params: GenerateParams) -> dict:
    """The job's record from its teacher, or from the fallbacks in turn when a teacher is unavailable."""
    errors = []
    for name in fallback_chain(job.teacher, specs):
        try:
            record = await _ask(pool, specs[name], job, params)
        except llm.Unavailable as err:
            errors.append(str(err))
            continue
        return {
            "job": job.id,
            "index": job.index,
            "chunk_id": job.chunk.id,
            "assigned": job.teacher,
            "fallback_errors": errors,
            "requests": 0,
            "cache_hits": 0,
            **record,
        }
    raise CampaignError(errors[-1])


# --- the campaign ---------------------------------------------------------------------------------------


@dataclass
class Campaign:
    records: list[dict]  # one per job, in job order
    resumed: int  # jobs already finished when this run started
    requests: int  # requests sent by this run
    cache_hits: int  # requests answered from the cache by this run
    seconds: float


def run_campaign(jobs: list[Job], params: GenerateParams, out_dir: Path, progress: bool = True) -> Campaign:
    """Run (or resume) the jobs not yet in out_dir/campaign.jsonl; returns every job's record."""
    return llm.run_sync(_campaign(jobs, params, out_dir, progress))


async def _campaign(jobs: list[Job], params: GenerateParams, out_dir: Path, progress: bool) -> Campaign:
    started = time.monotonic()
    log = out_dir / CAMPAIGN_LOG
    wanted = {job.id for job in jobs}
    finished = {r["job"]: r for r in read_complete_lines(log) if r["job"] in wanted}
    # Records of another campaign definition (other prompts, teachers...) are dropped, not reused.
    write_atomic(log, jsonl_text(finished.values()))
    todo = [job for job in jobs if job.id not in finished]
    specs = {t.name: t for t in params.teachers}
    pool = llm.Pool(_chat_teachers(params), llm.Limits.of(params))
    tracker = _Progress(out_dir / PROGRESS_FILE, len(jobs), len(finished), progress)
    # A job asks one request at a time, so the pool's limit on requests in flight is also the one on jobs; the
    # jobs beyond it wait here, rather than all start at once and none finish until every question is asked.
    jobs_in_flight = asyncio.Semaphore(params.concurrency)

    async def work(job: Job) -> None:
        async with jobs_in_flight:
            record = await _run_job(pool, specs, job, params)
        append_line(log, record)
        finished[job.id] = record
        tracker.advance()

    try:
        async with asyncio.TaskGroup() as group:
            for job in todo:
                group.create_task(work(job))
    except* CampaignError as errors:
        raise CampaignError(
            f"{errors.exceptions[0]}; {len(finished)}/{len(jobs)} jobs are saved in {log}: run again to resume"
        ) from None
    finally:
        tracker.close()
        await pool.aclose()
    records = sorted(finished.values(), key=lambda r: r["index"])
    return Campaign(records, len(jobs) - len(todo), pool.cache.sent, pool.cache.hits, time.monotonic() - started)


class _Progress:
    """A tqdm bar (rate, ETA) and progress.json, which `tunebook runs` reads while the stage runs."""

    def __init__(self, path: Path, total: int, done: int, show: bool) -> None:
        self.path, self.total, self.done = path, total, done
        self.bar = tqdm(total=total, initial=done, desc="campaign", unit="chunk", disable=not show)
        self.started, self.start_done, self.written = time.monotonic(), done, 0.0
        self._write()

    def advance(self) -> None:
        self.done += 1
        self.bar.update(1)
        if time.monotonic() - self.written > 1 or self.done == self.total:
            self._write()

    def _write(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else None
        state = {"done": self.done, "total": self.total, "rate_per_s": round(rate, 3), "eta_s": eta}
        write_atomic(self.path, json.dumps(state) + "\n")
        self.written = time.monotonic()

    def close(self) -> None:
        self.bar.close()
        self.path.unlink(missing_ok=True)


def failures(records: list[dict]) -> pd.DataFrame:
    rows = [{"teacher": r["teacher"], "chunk_id": r["chunk_id"], **f} for r in records for f in r["failures"]]
    return pd.DataFrame(rows, columns=["teacher", "chunk_id", "id", "step", "error", "output"])


# --- the dataset ----------------------------------------------------------------------------------------


def build_dataset(records: list[dict], chunks: list[Chunk], params: GenerateParams) -> Dataset:
    """Parse failures are counted, then each filter removes what fails it; every count is kept."""
    filters = params.filters
    rows = [sample for record in records for sample in record["samples"]]
    counts = {
        "jobs": len(records),
        "parse_failures": sum(len(r["failures"]) for r in records),
        "generated": len(rows),
    }
    removed: dict[str, list[dict]] = {}
    sources = {chunk.id: chunk.text for chunk in chunks}
    steps = [
        ("duplicates", _dedupe),
        ("length", lambda rs: quality.by_length(rs, filters)),
        ("repetitive", lambda rs: quality.by_repetition(rs, filters.max_repetition)),
        ("ungrounded", lambda rs: quality.by_grounding(rs, sources, filters.grounding_threshold)),
        ("near_duplicates", lambda rs: quality.near_duplicates(rs, filters.near_duplicate_threshold)),
    ]
    for name, step in steps:
        rows, removed[name] = step(rows)
        counts[f"{name}_removed"] = len(removed[name])
    removed["capped"] = rows[params.max_samples :]
    rows = rows[: params.max_samples]
    counts["capped_removed"] = len(removed["capped"])
    if len(rows) < (needed := rows_needed(params)):
        filtered = counts["generated"] - len(rows)
        raise DatasetError(
            f"{len(rows)} rows: too few for train/val/test (need at least {needed} with val_fraction "
            f"{params.val_fraction:g} and test_fraction {params.test_fraction:g}): add documents or teachers, or "
            f"loosen generate.filters (they removed {filtered} of {counts['generated']} generated rows)"
            + _parse_failures_hint(records)
        )
    splits = split_rows(rows, params.val_fraction, params.test_fraction)
    splits, removed["contaminated"], report = quality.decontaminate(splits, filters.decontamination_ngram)
    counts["contaminated_removed"] = len(removed["contaminated"])
    if not splits["train"]:
        raise DatasetError(
            f"{len(rows)} rows: every train row shares a {filters.decontamination_ngram}-gram with val or test, "
            "so none is left to train on: add documents or teachers, or raise generate.filters.decontamination_ngram"
        )
    counts["kept"] = sum(len(rs) for rs in splits.values())
    recipe = {
        "filters": filters.model_dump(),
        "prompts": params.prompts.model_dump(),
        "extractive_templates": extractive.TEMPLATES,
    }
    thin = thin_data_warning(len(splits["train"]), params.min_train_rows)
    table = teacher_table(records, splits, params)
    return Dataset(splits, counts, removed, table, failures(records), recipe, report, [thin] if thin else [])


def _parse_failures_hint(records: list[dict]) -> str:
    """Where the rows went when teachers' replies did not parse, for the one-line error."""
    errors = [failure["error"] for record in records for failure in record["failures"]]
    if not errors:
        return ""
    return f"; {len(errors)} teacher replies failed to parse (first: {errors[0]}), each recorded in {CAMPAIGN_LOG}"


def thin_data_warning(train_rows: int, min_train_rows: int) -> str | None:
    """One line when train is thinner than generate.min_train_rows: the card and the SFT report show it."""
    if train_rows >= min_train_rows:
        return None
    return (
        f"train has {train_rows} rows, fewer than generate.min_train_rows ({min_train_rows}): a fine-tune on so "
        "little data mostly learns its answers by heart; add documents or teachers"
    )


def teacher_table(records: list[dict], splits: dict[str, list[dict]], params: GenerateParams) -> pd.DataFrame:
    """Each teacher's yield, failure rate and quality: the figures to pick the better data by."""
    kept = [row for rows in splits.values() for row in rows]
    table = []
    for spec in params.teachers:
        own = [r for r in records if r["teacher"] == spec.name]
        generated = sum(len(r["samples"]) for r in own)
        parse_failures = sum(len(r["failures"]) for r in own)
        mine = [row for row in kept if row["teacher"] == spec.name]
        table.append(
            {
                "teacher": spec.name,
                "backend": spec.backend,
                "model": spec.model or "-",
                "jobs": len(own),
                "fallback_jobs": sum(r["assigned"] != spec.name for r in own),
                "requests": sum(r["requests"] for r in own),
                "cache_hits": sum(r["cache_hits"] for r in own),
                "generated": generated,
                "parse_failures": parse_failures,
                "failure_rate": round(parse_failures / max(1, parse_failures + generated), 3),
                "kept": len(mine),
                "kept_share": round(len(mine) / max(1, generated), 3),
                "mean_grounding": round(sum(r["grounding"] for r in mine) / len(mine), 3) if mine else None,
            }
        )
    return pd.DataFrame(table)


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per question: the same question twice is either a copy or an ambiguous target."""
    seen: set[str] = set()
    unique, removed = [], []
    for row in rows:
        (removed if row["id"] in seen else unique).append(row)
        seen.add(row["id"])
    return unique, removed


def split_rows(rows: list[dict], val_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
    """Split by a hash of the question, so a row's split never changes when the corpus grows. In a small
    dataset a held-out split with a share that the hash left empty takes the train row placed nearest its range
    (the lowest hash), so that evaluation never meets an empty split."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in rows:
        position = hash_fraction(row["id"])
        name = "test" if position < test_fraction else "val" if position < test_fraction + val_fraction else "train"
        splits[name].append(row)
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and not splits[name] and len(splits["train"]) > 1:
            nearest = min(splits["train"], key=lambda row: hash_fraction(row["id"]))
            splits["train"].remove(nearest)
            splits[name].append(nearest)
    return splits


def rows_needed(params: GenerateParams) -> int:
    """The fewest rows that give every split with a share at least one row: one train row, and enough rows for
    the smallest held-out share to make one."""
    held_out = [f for f in (params.val_fraction, params.test_fraction) if f > 0]
    return max(1 + len(held_out), *(math.ceil(1 / f - 1e-9) for f in held_out))
