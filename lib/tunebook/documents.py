"""Corpus files -> documents: every file under a corpus directory read as text, or accounted for.

Markdown and text are read as they are; HTML, PDF and office formats are converted to Markdown-like text, so
every document chunks the same way (headings, paragraphs, fenced code).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tunebook.files import corpus_files, describe_counts, ignored_extensions

TEXT_EXTENSIONS = (".md", ".txt")
HTML_EXTENSIONS = (".html", ".htm")
PDF_EXTENSIONS = (".pdf",)
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS + HTML_EXTENSIONS + PDF_EXTENSIONS


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the corpus dir, posix style
    text: str
    modified: float = 0.0  # the file's modification time (seconds since the epoch): "newest" among near-duplicates


class Skipped(NamedTuple):
    source: str
    reason: str


def find_files(corpus_dir: Path, extensions: list[str]) -> list[Path]:
    """The files under `corpus_dir` with one of `extensions`, sorted by path; none is a one-line error that says
    what the folder holds instead."""
    wanted = sorted({_normalize_extension(ext) for ext in extensions})
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus directory not found: {corpus_dir}")
    files = corpus_files(corpus_dir, wanted)
    if not files:
        ignored = ignored_extensions(corpus_dir, wanted)
        found = f"; it has {describe_counts(ignored)}" if ignored else ""
        raise ValueError(f"{corpus_dir}: no corpus files (none with the extensions {', '.join(wanted)}{found})")
    return files


def read_file(corpus_dir: Path, path: Path) -> Document | Skipped:
    """One corpus file as a document, or why it was skipped (binary, not UTF-8, broken, no text layer, empty)."""
    source = path.relative_to(corpus_dir).as_posix()
    text, reason = _read_text(path)
    if reason is None and not text.strip():
        reason = "empty"
    if reason is not None:
        warnings.warn(f"skipping {source}: {reason}", stacklevel=2)
        return Skipped(source, reason)
    return Document(source=source, text=text, modified=path.stat().st_mtime)


def no_readable_documents(corpus_dir: Path, skipped: list[Skipped]) -> ValueError:
    source, reason = skipped[0]
    return ValueError(
        f"{corpus_dir}: no readable documents: all {len(skipped)} files were skipped ({source}: {reason})"
    )


def read_documents(corpus_dir: Path, extensions: list[str]) -> tuple[list[Document], list[Skipped]]:
    """Read every file under `corpus_dir` with one of `extensions`, sorted by path, into memory (ingest streams
    them with `find_files` and `read_file` instead).

    Unreadable files are skipped with a warning and returned as (source, reason) so the report can show them;
    files with other extensions are left out and counted by `ignored_files`. A corpus without a readable
    document is a ValueError naming the directory.
    """
    docs, skipped = [], []
    for path in find_files(corpus_dir, extensions):
        read = read_file(corpus_dir, path)
        (skipped if isinstance(read, Skipped) else docs).append(read)
    if not docs:
        raise no_readable_documents(corpus_dir, skipped)
    return docs, skipped


def ignored_files(corpus_dir: Path, extensions: list[str]) -> dict[str, int]:
    """The files under corpus_dir that ingest leaves out by extension, counted per extension."""
    return ignored_extensions(corpus_dir, [_normalize_extension(ext) for ext in extensions])


def file_table(ingested: int, skipped: list[Skipped], ignored: dict[str, int]) -> list[dict]:
    """Every file found under the corpus directory, accounted for: ingested, skipped (with why) or ignored."""
    rows = [{"status": "ingested", "files": ingested, "detail": ""}]
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
