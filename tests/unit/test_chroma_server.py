"""Ingest and retrieval against a real `chroma run` server on loopback, and the one-line errors readers get
when the collection or the server is not there."""

from __future__ import annotations

import socket
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings
from test_documents import fixture_docs
from test_ingest import reingest_edited_and_removed_files

from tunebook.chunking import chunk_documents
from tunebook.ingest import EMBEDDED_MODEL, get_collection, index_chunks, open_collection, search

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is the only thing these tests may talk to: any other connection fails the test."""
    connect = socket.socket.connect

    def loopback_connect(sock: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[0] in LOOPBACK):
            raise AssertionError(f"non-loopback network access attempted: {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_connect)


def test_index_and_search_through_the_server(tmp_path: Path, chroma_server: tuple[str, int]) -> None:
    host, port = chroma_server
    chroma_dir = tmp_path / "chroma"
    chunks = chunk_documents(fixture_docs(), chunk_chars=300, overlap_chars=60)
    collection = open_collection(chroma_dir, "served", EMBEDDED_MODEL, host=host, port=port)

    assert index_chunks(collection, chunks, batch_size=4, progress=False) == len(chunks)
    assert index_chunks(collection, chunks, batch_size=4, progress=False) == 0
    assert collection.configuration["hnsw"]["space"] == "cosine"
    hits = search(collection, "the dry-boil sensor will trip", k=3)
    assert (hits[0]["source"], hits[0]["heading"]) == ("kettle_guide.md", "First use")
    assert search(collection, "LED lantern range in nautical miles", k=1)[0]["source"] == "lighthouse_log.pdf"
    assert not chroma_dir.exists()  # nothing went to the embedded store


def test_a_reingest_through_the_server_embeds_only_changed_chunks_and_removes_stale_ones(
    tmp_path: Path, chroma_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = chroma_server
    collection = open_collection(tmp_path / "chroma", "changing", EMBEDDED_MODEL, host=host, port=port)
    reingest_edited_and_removed_files(tmp_path, collection, monkeypatch)
    assert not (tmp_path / "chroma").exists()


def test_a_second_client_sees_the_servers_collection(tmp_path: Path, chroma_server: tuple[str, int]) -> None:
    host, port = chroma_server
    chunks = chunk_documents(fixture_docs(), chunk_chars=300, overlap_chars=60)
    index_chunks(open_collection(tmp_path, "shared", EMBEDDED_MODEL, host=host, port=port), chunks, progress=False)

    # Every HttpClient has its own connection pool and state: this one can only see what the server holds.
    other = chromadb.HttpClient(host=host, port=port, settings=Settings(anonymized_telemetry=False))
    stored = other.get_collection("shared").get(ids=[chunks[0].id], include=["documents", "metadatas"])
    assert stored["documents"] == [chunks[0].text]
    assert stored["metadatas"][0]["source"] == chunks[0].source

    reader = get_collection(tmp_path, "shared", EMBEDDED_MODEL, host=host, port=port)
    assert reader.count() == len(chunks)
    assert reader.metadata["embedding_model"] == EMBEDDED_MODEL


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_get_collection_refuses_a_missing_or_empty_collection(
    tmp_path: Path, request: pytest.FixtureRequest, mode: str
) -> None:
    host, port = request.getfixturevalue("chroma_server") if mode == "server" else (None, 8000)
    chroma_dir = tmp_path / "chroma"
    location = str(chroma_dir) if host is None else f"http://{host}:{port}"
    name = f"never-ingested-{mode}"

    with pytest.raises(ValueError) as missing:
        get_collection(chroma_dir, name, EMBEDDED_MODEL, host=host, port=port)
    open_collection(chroma_dir, name, EMBEDDED_MODEL, host=host, port=port)
    with pytest.raises(ValueError) as empty:
        get_collection(chroma_dir, name, EMBEDDED_MODEL, host=host, port=port)

    expected = f"Chroma collection '{name}' at {location} is empty or missing: run the ingest stage first"
    assert str(missing.value) == str(empty.value) == expected


def test_an_unreachable_server_gives_one_line(tmp_path: Path) -> None:
    with socket.socket() as unused:  # bound but not listening: connecting to it is refused at once
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(ValueError) as unreachable:
            open_collection(tmp_path / "chroma", "demo", EMBEDDED_MODEL, host="127.0.0.1", port=port)

    message = str(unreachable.value)
    assert message.startswith(f"cannot reach the Chroma server at http://127.0.0.1:{port} (")
    assert "Connection refused" in message
    assert message.endswith(
        f": start it with `chroma run --path {tmp_path / 'chroma'} --port {port}` or unset chroma.host"
    )
    assert "\n" not in message
    assert unreachable.value.__suppress_context__ and unreachable.value.__cause__ is None


def test_ingest_and_generate_stages_run_on_the_server(chroma_server, workdir, capsys) -> None:
    """The stages themselves, through papermill: nothing goes to the embedded store, and a reader pointed at
    a store without the collection fails in one line that names it."""
    from tunebook import paths
    from tunebook.cli import main

    host, port = chroma_server
    ci = str(paths.project_root() / "params" / "ci.yaml")
    small = ["ingest.stdlib_modules=[json,bisect]", "generate.teachers=[{name: extractive, backend: extractive}]"]
    server = [f"chroma.host={host}", f"chroma.port={port}"]
    args = ["run", ci, "--stages", "ingest,generate", *(f"--set={s}" for s in small + server)]
    assert main(args) == 0
    assert not (workdir / "data" / "chroma").exists()
    assert (workdir / "data" / "runs" / "ci" / "generate" / "train.jsonl").read_text()

    assert main(["run", ci, "--stages", "generate", "--force", *(f"--set={s}" for s in small)]) == 1
    assert "Chroma collection 'ci-docs' at " in capsys.readouterr().err
