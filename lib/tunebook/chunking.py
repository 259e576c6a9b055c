"""Documents -> heading-aware chunks whose text is an exact slice of the document, and the chunk files.

Chunk ids are a hash of (source, text): re-chunking an unchanged document gives the same ids, on any machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tunebook.documents import Document
from tunebook.files import atomic_writer, jsonl_text


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    index: int  # position among the chunks of its source
    heading: str  # the Markdown heading of the section the chunk starts in ("" before any heading)
    text: str


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


def chunk_documents(docs: Iterable[Document], chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """Every document's chunks (see `chunk_document`), in order."""
    return [chunk for doc in docs for chunk in chunk_document(doc, chunk_chars, overlap_chars)]


def chunk_document(doc: Document, chunk_chars: int, overlap_chars: int) -> Iterator[Chunk]:
    """Split a document into chunks of at most `chunk_chars` characters.

    Chunks break preferably at section starts, then paragraphs, then sentences, never mid-word (unless
    a single word is longer than a chunk); fenced code blocks that fit stay whole. A chunk that continues
    a section starts with up to `overlap_chars` of the previous chunk's tail. Identical chunks (same
    source and text) are kept once.
    """
    if chunk_chars < 1 or not 0 <= overlap_chars < chunk_chars:
        raise ValueError(
            f"need chunk_chars >= 1 and 0 <= overlap_chars < chunk_chars, got {chunk_chars}, {overlap_chars}"
        )
    seen: set[str] = set()
    for start, end, heading in _chunk_spans(doc.text, chunk_chars, overlap_chars):
        text = doc.text[start:end]
        chunk_id = chunk_hash(doc.source, text)
        if chunk_id not in seen:
            yield Chunk(id=chunk_id, source=doc.source, index=len(seen), heading=heading, text=text)
            seen.add(chunk_id)


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


def write_chunks(chunks: Iterable[Chunk], path: Path) -> None:
    """JSONL, one chunk per line, streamed through a temporary file so a crash never leaves half a file."""
    with atomic_writer(path) as out:
        for chunk in chunks:
            out.write(chunk_line(chunk))


def chunk_line(chunk: Chunk) -> str:
    return jsonl_text([asdict(chunk)])


def read_chunks(path: Path) -> list[Chunk]:
    return list(iter_chunks(path))


def iter_chunks(path: Path) -> Iterator[Chunk]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                chunk = Chunk(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(f"{path}:{line_number}: not a chunk record ({err})") from err
            yield chunk
