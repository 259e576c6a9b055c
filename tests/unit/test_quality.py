"""The quality pipeline's filters, one at a time, on rows shaped like the generate stage's."""

import pytest

from tunebook import quality
from tunebook.params import FilterParams

CHUNK = (
    "json.dumps serializes obj to a JSON formatted str using this conversion table. If skipkeys is true, "
    "dict keys that are not of a basic type are skipped instead of raising a TypeError."
)


def row(question: str, answer: str, chunk_id: str = "c1", context_ids: tuple[str, ...] = ()) -> dict:
    return {
        "id": question,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "chunk_id": chunk_id,
        "context_ids": list(context_ids),
    }


def test_length_filter_bounds_questions_and_answers():
    rows = [
        row("What does json.dumps do?", "It serializes obj."),
        row("Why?", "Because."),
        row("A fine question?", "x"),
    ]
    kept, removed = quality.by_length(rows, FilterParams(min_question_chars=10, min_answer_chars=2))
    assert kept == rows[:1] and removed == rows[1:]
    kept, _ = quality.by_length(rows[:1], FilterParams(max_answer_chars=10))
    assert kept == []


def test_repetitive_answers_are_removed():
    looping = row("What is the signature of json.dump?", "```python\n```python\n```python\n" * 5)
    prose = row("What does json.dumps do?", "It serializes obj to a JSON formatted str, as the table shows.")
    kept, removed = quality.by_repetition([looping, prose], max_repetition=0.3)
    assert kept == [prose] and removed == [looping]
    assert quality.repetition("one two three one two three one two three") > 0.5
    assert quality.repetition("short") == 0.0


def test_grounding_scores_answers_against_their_sources():
    grounded = row("What does json.dumps do?", "It serializes obj to a JSON formatted str.")
    invented = row("What does json.loads do?", "Launches rockets towards distant galaxies quickly.")
    from_context = row("Where?", "Bananas grow in tropical orchards.", chunk_id="c1", context_ids=("c2",))
    sources = {"c1": CHUNK, "c2": "Bananas grow in tropical orchards."}
    kept, removed = quality.by_grounding([grounded, invented, from_context], sources, threshold=0.5)
    assert kept == [grounded, from_context] and removed == [invented]
    assert grounded["grounding"] == 1.0 and invented["grounding"] == 0.0
    assert quality.grounding_score("the and of", [CHUNK]) == 1.0  # nothing to check


def test_near_duplicates_keep_the_first_of_each_group():
    base = "If skipkeys is true, dict keys that are not of a basic type are skipped instead of raising a TypeError"
    rows = [
        row("What happens with skipkeys in json.dumps?", base + "."),
        row("What happens with skipkeys in json.dumps ?", base + ", always."),  # the same row, reworded a hair
        row("What does json.dumps return?", "A JSON formatted str."),
    ]
    kept, removed = quality.near_duplicates(rows, threshold=0.8)
    assert kept == [rows[0], rows[2]] and removed == [rows[1]]
    kept, removed = quality.near_duplicates(rows, threshold=0.98)
    assert len(kept) == 3


def test_decontamination_removes_train_rows_sharing_an_ngram_with_held_out_rows():
    shared = "dict keys that are not of a basic type are skipped instead of raising a TypeError"
    splits = {
        "train": [row("What does skipkeys do?", f"With skipkeys, {shared}."), row("Other?", "An unrelated answer.")],
        "val": [],
        "test": [row("Explain skipkeys.", f"When set, {shared}!")],
    }
    clean, removed, report = quality.decontaminate(splits, n=13)
    assert [r["messages"][0]["content"] for r in removed] == ["What does skipkeys do?"]
    assert clean["train"] == [splits["train"][1]] and clean["test"] == splits["test"]
    assert report["train_rows_overlapping"] == 1 and report["ngram"] == 13
    _, removed, _ = quality.decontaminate(splits, n=30)  # longer than any shared run
    assert removed == []


def test_ngram_overlap_scores_each_text_against_the_references():
    train = [f"With skipkeys, {CHUNK}", "An unrelated answer about something else entirely."]
    copied = CHUNK  # every 13-gram of it is in the first training text
    half = "dict keys that are not of a basic type are skipped instead of raising a TypeError, " + (
        "whereas this tail was written fresh for the test and shares nothing at all with train"
    )
    fresh = "A question written from scratch that shares no thirteen word run with any training row at all."
    short = "dict keys that are not of a basic type"  # 9 words, copied, but too short to tell
    overlaps = quality.ngram_overlap([copied, half, fresh, short], train)
    assert overlaps[0] == 1.0 and overlaps[2] == 0.0 and overlaps[3] == 0.0
    grams = quality.ngrams(half, 13)
    assert overlaps[1] == pytest.approx(len(grams & quality.ngrams(train[0], 13)) / len(grams))
    assert 0 < overlaps[1] < 1
    assert quality.ngram_overlap([short], train, n=5) == [1.0]
    assert quality.ngram_overlap([copied], []) == [0.0]


def test_ngram_overlap_agrees_with_decontamination():
    shared = "dict keys that are not of a basic type are skipped instead of raising a TypeError"
    train = [row("What does skipkeys do?", f"With skipkeys, {shared}."), row("Other?", "An unrelated answer.")]
    test = [row("Explain skipkeys.", f"When set, {shared}!")]
    _, removed, _ = quality.decontaminate({"train": train, "val": [], "test": test}, n=13)
    overlaps = quality.ngram_overlap([quality.answer(r) for r in train], [quality.answer(r) for r in test])
    assert [r for r, overlap in zip(train, overlaps, strict=True) if overlap > 0] == removed
