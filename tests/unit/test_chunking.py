"""Chunking: bounded, faithful slices on paragraph, sentence and word boundaries, with stable ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_documents import fixture_docs

from tunebook.chunking import chunk_documents, chunk_hash, read_chunks, write_chunks
from tunebook.documents import Document, read_documents
from tunebook.ingest import write_stdlib_corpus


def test_chunks_are_bounded_faithful_whole_words_and_overlapping(tmp_path: Path) -> None:
    write_stdlib_corpus(["json", "difflib"], tmp_path)
    docs = fixture_docs() + read_documents(tmp_path, [".md"])[0]
    texts = {doc.source: doc.text for doc in docs}

    chunks = chunk_documents(docs, chunk_chars=400, overlap_chars=80)

    assert all(0 < len(chunk.text) <= 400 for chunk in chunks)
    overlaps = []
    previous: tuple[str, int, int] = ("", 0, 0)  # source, start, end of the previous chunk
    for chunk in chunks:
        text = texts[chunk.source]
        # Chunks are slices of their document, in order: search from where the previous one started.
        start = text.index(chunk.text, previous[1] + 1 if previous[0] == chunk.source else 0)
        end = start + len(chunk.text)
        assert start == 0 or text[start - 1].isspace(), f"chunk starts mid-word: {chunk.text[:40]!r}"
        assert end == len(text) or text[end].isspace(), f"chunk ends mid-word: {chunk.text[-40:]!r}"
        if previous[0] == chunk.source:
            overlaps.append(max(previous[2] - start, 0))
        previous = (chunk.source, start, end)
    assert sum(1 for overlap in overlaps if overlap > 0) >= 10
    assert max(overlaps) <= 80


def test_chunking_keeps_code_blocks_whole_and_prefers_paragraphs() -> None:
    prose = "The first paragraph explains the setting. " * 5
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})" for i in range(12)) + "\n```"
    tail = "A closing paragraph. It has two sentences."
    doc = Document("guide.md", f"# Guide\n\n{prose.strip()}\n\n{code}\n\n{tail}\n")

    chunks = chunk_documents([doc], chunk_chars=320, overlap_chars=60)

    assert [chunk.text.count("```") for chunk in chunks if "```" in chunk.text] == [2]
    code_chunk = next(chunk for chunk in chunks if "```" in chunk.text)
    assert code in code_chunk.text
    assert chunks[0].text == f"# Guide\n\n{prose.strip()}"  # the break falls between paragraphs
    assert all(chunk.heading == "Guide" for chunk in chunks)


def test_chunk_ids_are_stable_unique_and_deduplicated() -> None:
    docs = fixture_docs()

    chunks = chunk_documents(docs, chunk_chars=300, overlap_chars=60)

    assert chunks == chunk_documents(docs, chunk_chars=300, overlap_chars=60)
    assert len({chunk.id for chunk in chunks}) == len(chunks)
    assert all(chunk.id == chunk_hash(chunk.source, chunk.text) for chunk in chunks)
    # Pinned: the id depends only on (source, text), so it is the same on every machine.
    notes = next(chunk for chunk in chunks if chunk.source == "field_notes.txt")
    assert notes.id == "64e497fadff2a07d"
    # A section repeated in a document is one chunk; the same text under another name is a new chunk.
    section = "# Boiling\n\nFill the kettle to the line and switch it on."
    repeated = Document("repeated.md", f"{section}\n\n{section}\n")
    twice = chunk_documents([repeated, Document("copy.md", repeated.text)], 60, 10)
    assert [(chunk.source, chunk.index, chunk.text) for chunk in twice] == [
        ("repeated.md", 0, section),
        ("copy.md", 0, section),
    ]


def test_chunks_record_their_section_heading() -> None:
    chunks = chunk_documents(fixture_docs(), chunk_chars=300, overlap_chars=60)

    for chunk in chunks:
        if heading_line := re.match(r"#+ (.+)\n", chunk.text):
            assert chunk.heading == heading_line.group(1)
    continuation = next(chunk for chunk in chunks if "rinse x3" in chunk.text)
    assert continuation.heading == "Descaling"
    assert not continuation.text.startswith("#") and "## Descaling" not in continuation.text
    assert next(chunk for chunk in chunks if "Bicycles cross free" in chunk.text).heading == "Toll"
    assert next(chunk for chunk in chunks if chunk.source == "field_notes.txt").heading == ""


def test_chunking_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="overlap_chars < chunk_chars"):
        chunk_documents(fixture_docs(), chunk_chars=100, overlap_chars=100)


# --- chunk files ---------------------------------------------------------------------------------------


def test_chunks_round_trip_through_jsonl(tmp_path: Path) -> None:
    chunks = chunk_documents(fixture_docs(), chunk_chars=300, overlap_chars=60)
    path = tmp_path / "run" / "chunks.jsonl"

    write_chunks(chunks, path)

    assert read_chunks(path) == chunks
    assert sorted(p.name for p in path.parent.iterdir()) == ["chunks.jsonl"]
    path.write_text(path.read_text() + '{"id": "x"}\n')
    with pytest.raises(ValueError, match=rf"chunks\.jsonl:{len(chunks) + 1}: not a chunk record"):
        read_chunks(path)


# --- Chroma --------------------------------------------------------------------------------------------
