from tunebook import generate
from tunebook.ingest import Chunk
from tunebook.params import GenerateParams
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


def test_rows_are_deduplicated_capped_and_conversational():
    chunks = [chunk(DOC, index=0), chunk(DOC, index=1)]
    generated = generate.generate_rows(chunks, GenerateParams(max_samples=2), progress=False)
    assert generated.counts == {"chunks": 2, "generated": 6, "duplicates_removed": 3, "capped": 1, "kept": 2}
    row = generated.rows[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["chunk_id"] == "json.md-0"


def test_split_is_deterministic_and_stable_when_rows_are_added():
    rows = [{"id": generate._digest(f"q{i}")} for i in range(1000)]
    splits = generate.split_rows(rows, 0.1, 0.1)
    assert sum(len(s) for s in splits.values()) == 1000
    assert 50 < len(splits["test"]) < 150
    more = generate.split_rows(rows + [{"id": generate._digest(f"new{i}")} for i in range(100)], 0.1, 0.1)
    assert {r["id"] for r in splits["test"]} <= {r["id"] for r in more["test"]}


def test_dataset_files_and_card(tmp_path):
    generated = generate.generate_rows([chunk(DOC)], GenerateParams(), progress=False)
    splits = generate.split_rows(generated.rows, 0.0, 0.34)
    card = generate.write_dataset(splits, tmp_path, {"name": "t", "teacher": "extractive", "counts": generated.counts})
    assert generate.read_split(tmp_path, "train") + generate.read_split(tmp_path, "test") != []
    assert generate.read_card(tmp_path) == card
    assert card["splits"] == {name: len(rows) for name, rows in splits.items()}
    assert "Dataset hash" in (tmp_path / "README.md").read_text()
    again = generate.write_dataset(splits, tmp_path, {"name": "t", "teacher": "extractive", "counts": {}})
    assert again["dataset_hash"] == card["dataset_hash"]
    assert not list(tmp_path.glob(".*tmp"))
