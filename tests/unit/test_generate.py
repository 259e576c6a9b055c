import json
from pathlib import Path

import datasets
import pytest

from tunebook import chunking, documents, generate, ingest
from tunebook.chunking import Chunk
from tunebook.dataset import SPLITS, read_card, read_split, write_dataset
from tunebook.files import PROGRESS_FILE, read_complete_lines
from tunebook.params import GenerateParams, ParamsError, load_params
from tunebook.teachers import extractive

DOC = """## json.dumps

```python
json.dumps(obj, *, skipkeys=False, indent=None)
```

Serialize ``obj`` to a JSON formatted ``str``. More text follows here.

## Overview

This section explains the general ideas of the module in one sentence.
"""


def chunk(text: str, source: str = "json.md", index: int = 0) -> Chunk:
    return Chunk(id=f"{source}-{index}", source=source, index=index, heading="", text=text)


def test_teacher_asks_grounded_questions():
    pairs = extractive.ask(DOC, max_answer_chars=300)
    by_template = {qa.template: qa for qa in pairs}
    assert by_template["signature"].question == "What is the signature of `json.dumps`?"
    assert by_template["signature"].answer == "json.dumps(obj, *, skipkeys=False, indent=None)"
    assert by_template["purpose"].answer == "Serialize ``obj`` to a JSON formatted ``str``."
    assert by_template["topic"].question == "What does the documentation say about Overview?"
    for qa in pairs:
        assert qa.answer in " ".join(DOC.split())


def test_teacher_skips_long_answers_and_unterminated_fences():
    assert extractive.ask(DOC, max_answer_chars=20) == []
    cut = "## f\n\n```python\nf(x)\n"  # the chunk ends inside the code block
    assert extractive.ask(cut, 300) == []


def extractive_only(**overrides) -> GenerateParams:
    return GenerateParams(teachers=[{"name": "extractive", "backend": "extractive"}], **overrides)


def stdlib_chunks(tmp_path: Path, modules: tuple[str, ...] = ("json", "bisect")) -> list[Chunk]:
    ingest.write_stdlib_corpus(list(modules), tmp_path / "corpus")
    docs, _ = documents.read_documents(tmp_path / "corpus", [".md"])
    return chunking.chunk_documents(docs, 900, 150)


def run(jobs, params, out_dir):
    return generate.run_campaign(jobs, params, out_dir, progress=False)


def test_teachers_are_assigned_by_weight_and_stably():
    params = GenerateParams(
        teachers=[
            {"name": "a", "backend": "extractive", "weight": 3},
            {"name": "b", "backend": "extractive", "weight": 1},
        ]
    )
    names = [generate.assign_teacher(f"chunk-{i}", params.teachers) for i in range(4000)]
    assert 0.72 < names.count("a") / len(names) < 0.78
    assert names == [generate.assign_teacher(f"chunk-{i}", params.teachers) for i in range(4000)]


@pytest.mark.parametrize(
    "reply,questions,error",
    [
        ('["What is X?", "Why Y?"]', ["What is X?", "Why Y?"], None),
        ('Sure! Here they are:\n["What is X?"]\nHope this helps.', ["What is X?"], None),
        ('["a?", "b?", "c?", "d?"]', ["a?", "b?", "c?"], None),
        ("```python\n```python\n", [], "no JSON list in the reply"),
        ("[What is X?]", [], "invalid JSON (Expecting value)"),
        ("[1, 2]", [], "not a list of strings"),
        ('[" "]', [], "an empty list"),
    ],
)
def test_questions_are_parsed_from_json_lists_only(reply, questions, error):
    assert generate.parse_questions(reply, 3) == (questions, error)


def test_teacher_params_refuse_secrets_and_unknown_fallbacks(tmp_path):
    path = tmp_path / "p.yaml"
    teacher = "{name: gpt, backend: openai, model: m, base_url: 'http://x/v1', api_key: sk-1}"
    path.write_text(f"ingest:\n  stdlib_modules: [json]\ngenerate:\n  teachers:\n    - {teacher}\n")
    with pytest.raises(ParamsError, match=r"generate.teachers.0: 'api_key' must not be in params .*api_key_env"):
        load_params(path)
    path.write_text(
        "ingest:\n  stdlib_modules: [json]\ngenerate:\n  teachers:\n    - {name: a, backend: extractive, fallback: b}\n"
    )
    with pytest.raises(ParamsError, match="teacher 'a' falls back to unknown teacher 'b'"):
        load_params(path)


def test_campaign_writes_one_record_per_job_and_resumes_without_duplicates(tmp_path):
    chunks = stdlib_chunks(tmp_path)
    params = extractive_only()
    jobs = generate.plan_jobs(chunks, params)
    out_dir = tmp_path / "out"
    first = run(jobs, params, out_dir)
    log = out_dir / generate.CAMPAIGN_LOG
    assert [r["job"] for r in first.records] == [job.id for job in jobs]
    assert first.resumed == 0 and not (out_dir / PROGRESS_FILE).exists()

    # A process killed mid-write leaves a torn last line, and the last jobs not written at all.
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-3]) + lines[-3][:25])
    again = run(jobs, params, out_dir)
    assert again.resumed == len(jobs) - 3
    assert again.records == first.records
    logged = [r["job"] for r in read_complete_lines(log)]
    assert sorted(logged) == sorted(job.id for job in jobs)  # nothing lost, nothing twice


def test_changed_campaign_definition_starts_afresh(tmp_path):
    chunks = stdlib_chunks(tmp_path, ("bisect",))
    out_dir = tmp_path / "out"
    run(generate.plan_jobs(chunks, extractive_only()), extractive_only(), out_dir)
    other = extractive_only(extractive_answer_chars=100)
    campaign = run(generate.plan_jobs(chunks, other), other, out_dir)
    assert campaign.resumed == 0
    assert len((out_dir / generate.CAMPAIGN_LOG).read_text().splitlines()) == len(chunks)


def test_a_rebuilt_model_behind_the_same_directory_is_a_new_campaign(tmp_path, workdir):
    """The run's tiny directory is a link: its jobs are keyed on the build it points at, so a rebuild's campaign
    resumes none of the old build's answers."""
    chunks = stdlib_chunks(tmp_path, ("bisect",))
    link = workdir / "data" / "runs" / "t" / "tiny"
    link.parent.mkdir(parents=True)
    teacher = {"name": "local", "backend": "hf", "model": "data/runs/t/tiny"}
    params = GenerateParams(teachers=[teacher], context_chunks=0)
    planned = []
    for build in ("tiny-aaa", "tiny-bbb"):
        (workdir / "data" / "models" / build).mkdir(parents=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..", "..", "models", build), target_is_directory=True)
        planned.append({job.id for job in generate.plan_jobs(chunks, params)})
    assert planned[0].isdisjoint(planned[1])


def test_dataset_counts_every_step_and_loads_with_datasets(tmp_path):
    chunks = stdlib_chunks(tmp_path)
    params = extractive_only(val_fraction=0.2, test_fraction=0.2)
    campaign = run(generate.plan_jobs(chunks, params), params, tmp_path / "out")
    dataset = generate.build_dataset(campaign.records, chunks, params)
    counts = dataset.counts
    removed = sum(v for k, v in counts.items() if k.endswith("_removed"))
    assert counts["generated"] - removed == counts["kept"] == sum(len(rows) for rows in dataset.splits.values())
    assert list(counts)[:3] == ["jobs", "parse_failures", "generated"]
    assert counts["contaminated_removed"] == len(dataset.removed["contaminated"])
    teacher = dataset.teachers.iloc[0]
    assert (teacher["teacher"], teacher["jobs"], teacher["kept"]) == ("extractive", len(chunks), counts["kept"])

    card = write_dataset(dataset, tmp_path / "out", "t")
    assert read_card(tmp_path / "out") == json.loads(json.dumps(card))
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Teachers" in readme and "| extractive |" in readme and "contaminated_removed" in readme
    assert "Reply with a JSON list" in readme  # the prompts are recorded
    files = {split: str(tmp_path / "out" / f"{split}.jsonl") for split in SPLITS}
    loaded = datasets.load_dataset("json", data_files=files)
    assert {split: len(loaded[split]) for split in SPLITS} == card["splits"]
    assert loaded["train"][0]["messages"][1]["role"] == "assistant"
    # The stages read the splits through read_split, which checks every row.
    assert {split: read_split(tmp_path / "out", split) for split in SPLITS} == dataset.splits


def test_split_is_deterministic_and_stable_when_rows_are_added():
    rows = [{"id": f"{i:016x}"[::-1]} for i in range(1000)]
    splits = generate.split_rows(rows, 0.1, 0.1)
    assert sum(len(s) for s in splits.values()) == 1000
    assert 50 < len(splits["test"]) < 150
    more = generate.split_rows(rows + [{"id": f"{i:016x}"} for i in range(5000, 5100)], 0.1, 0.1)
    assert {r["id"] for r in splits["test"]} <= {r["id"] for r in more["test"]}


@pytest.mark.parametrize("n", [10, 11, 12, 15, 20])
def test_every_split_gets_a_row_once_there_are_enough(n):
    # Rows the hash would all place outside test (and all but one outside val): the case of a small dataset.
    ids = (f"{i:016x}"[::-1] for i in range(10_000))
    outside = [i for i in ids if generate.hash_fraction(i) >= 0.1]
    in_val = next(i for i in outside if generate.hash_fraction(i) < 0.2)
    rows = [{"id": i} for i in [in_val, *[i for i in outside if generate.hash_fraction(i) >= 0.2][: n - 1]]]
    assert generate.rows_needed(extractive_only()) == 10
    splits = generate.split_rows(rows, 0.1, 0.1)
    assert all(splits[name] for name in SPLITS) and sum(len(s) for s in splits.values()) == n
    # What the hash held out stays held out: only a split the hash left empty takes a train row.
    placed = {row["id"]: name for name, rs in splits.items() for row in rs}
    for row in rows:
        position = generate.hash_fraction(row["id"])
        assert position >= 0.2 or placed[row["id"]] == ("test" if position < 0.1 else "val")


def test_a_held_out_split_the_hash_left_empty_takes_the_nearest_train_row():
    rows = [{"id": f"{i:016x}"[::-1]} for i in range(12)]
    lowest = min(rows, key=lambda row: generate.hash_fraction(row["id"]))
    splits = generate.split_rows(rows, 0.0, 0.001)
    assert splits["test"] == [lowest] and len(splits["train"]) == 11
    assert not splits["val"]  # val has no share: it stays empty
    assert generate.rows_needed(extractive_only(val_fraction=0.0, test_fraction=0.25)) == 4


def test_too_few_rows_stop_the_stage_in_one_line_and_write_nothing(tmp_path):
    chunks = [chunk(DOC)]
    params = extractive_only()
    campaign = run(generate.plan_jobs(chunks, params), params, tmp_path / "out")
    rows = sum(len(r["samples"]) for r in campaign.records)
    assert 0 < rows < 10
    with pytest.raises(generate.DatasetError) as stopped:
        generate.build_dataset(campaign.records, chunks, params)
    assert str(stopped.value).startswith(f"{rows} rows: too few for train/val/test (need at least 10 with ")
    assert "add documents or teachers, or loosen generate.filters" in str(stopped.value)
    assert "\n" not in str(stopped.value) and not (tmp_path / "out" / "train.jsonl").exists()


def test_thin_train_data_is_flagged_in_the_card(tmp_path):
    chunks = stdlib_chunks(tmp_path)
    params = extractive_only(val_fraction=0.2, test_fraction=0.2, min_train_rows=10_000)
    campaign = run(generate.plan_jobs(chunks, params), params, tmp_path / "out")
    dataset = generate.build_dataset(campaign.records, chunks, params)
    card = write_dataset(dataset, tmp_path / "out", "t")
    [warning] = card["warnings"]
    assert warning.startswith(f"train has {card['splits']['train']} rows, fewer than generate.min_train_rows (10000)")
    assert f"**Warning:** {warning}" in (tmp_path / "out" / "README.md").read_text()
    enough = generate.build_dataset(campaign.records, chunks, params.model_copy(update={"min_train_rows": 1}))
    assert enough.warnings == []


def test_unreachable_endpoint_falls_back_or_stops_resumably(tmp_path):
    chunks = stdlib_chunks(tmp_path, ("bisect",))
    down = {"name": "down", "backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    with_fallback = GenerateParams(
        teachers=[{**down, "fallback": "extractive"}, {"name": "extractive", "backend": "extractive", "weight": 1e-9}],
        max_retries=1,
        context_chunks=0,
    )
    campaign = run(generate.plan_jobs(chunks, with_fallback), with_fallback, tmp_path / "a")
    assert {r["teacher"] for r in campaign.records} == {"extractive"}
    assert "failed after 2 tries (ConnectError" in campaign.records[0]["fallback_errors"][0]

    alone = GenerateParams(teachers=[down], max_retries=1, context_chunks=0)
    with pytest.raises(generate.CampaignError, match=r"'down': http://127.0.0.1:9/v1 failed after 2 tries"):
        run(generate.plan_jobs(chunks, alone), alone, tmp_path / "b")
    assert (tmp_path / "b" / generate.CAMPAIGN_LOG).read_text() == ""  # resumable, nothing half-written


def test_the_sft_stage_reads_the_cards_warnings_for_its_report(tmp_path):
    from tunebook.params import SftParams
    from tunebook.sft import training_data

    chunks = stdlib_chunks(tmp_path)
    params = extractive_only(val_fraction=0.2, test_fraction=0.2, min_train_rows=10_000)
    campaign = run(generate.plan_jobs(chunks, params), params, tmp_path / "out")
    card = write_dataset(generate.build_dataset(campaign.records, chunks, params), tmp_path / "out", "t")
    assert training_data(SftParams(), tmp_path / "out", chunks).warnings == card["warnings"] != []


NOTICE = """Field notes from the greenhouse trial.

The tomato plants in bay four were watered with the drip system at 400 ml per
plant per day. Leaf curl appeared on six plants after the heat wave.

Short line.

We moved the shade cloth to the south side and raised the misting interval to every twenty minutes.
"""


def test_unheaded_text_gets_continuation_questions_grounded_in_it():
    pairs = extractive.ask(NOTICE, 300, document="notes.txt")
    assert [qa.template for qa in pairs] == ["continuation", "continuation"]
    first = pairs[0]
    assert first.question == 'In notes.txt, how does the sentence that begins "The tomato plants in bay four" go on?'
    assert first.answer == "were watered with the drip system at 400 ml per plant per day."
    assert all(qa.answer in " ".join(NOTICE.split()) for qa in pairs)  # verbatim, white space folded
    assert extractive.ask(NOTICE, 300) == []  # text under a heading of its document gets none


def test_plain_text_and_pdf_pages_give_rows_through_the_campaign(tmp_path):
    corpus = Path(__file__).parents[1] / "fixtures" / "corpus"
    docs, _ = documents.read_documents(corpus, [".txt", ".pdf"])
    chunks = chunking.chunk_documents(docs, 900, 150)
    assert {c.source for c in chunks} == {"field_notes.txt", "lighthouse_log.pdf"} and not any(
        c.heading for c in chunks
    )
    params = extractive_only()
    campaign = run(generate.plan_jobs(chunks, params), params, tmp_path / "out")
    rows = [row for record in campaign.records for row in record["samples"]]
    assert {row["source"] for row in rows} == {"field_notes.txt", "lighthouse_log.pdf"}
    assert {row["template"] for row in rows} == {"continuation"}
    sources = {c.id: " ".join(c.text.split()) for c in chunks}
    assert all(row["messages"][1]["content"] in sources[row["chunk_id"]] for row in rows)
