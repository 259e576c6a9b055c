"""Corpus files -> documents: every file under a corpus directory read as text, or accounted for.

Markdown and text are read as they are; HTML, PDF and office formats are converted to Markdown-like text, so
every document chunks the same way (headings, paragraphs, fenced code).

Formats go through well-kept libraries, not parsers of our own:
- HTML: trafilatura finds the main content (navigation, footers, cookie banners and scripts stay out); the
  BeautifulSoup pass below only turns that into Markdown (h1-h3 as headings, <pre> as fenced code).
- PDF: pypdf, which also tells a scanned PDF (pages without a text layer) from an empty one.
- DOCX, PPTX, XLSX, CSV, EPUB: markitdown (mammoth, python-pptx, openpyxl + pandas, the csv module). It was
  chosen over docling, whose layout and table models are hundreds of MB of weights fetched from the model hub
  at first use (no hub here, nor for offline users) and which is far slower on a CPU. markitdown's converters
  are pure Python: its wheels not already installed for tunebook weigh 17.3 MB, 16.2 MB of them magika (a
  file-type model that runs locally on onnxruntime, which chromadb brings anyway, plus a 33 MB command-line
  binary once installed); trafilatura's add 2.3 MB. markitdown takes about 0.6 s to import, so it is imported
  when the first office file is read.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from tunebook.files import corpus_files, describe_counts, ignored_extensions

TEXT_EXTENSIONS = (".md", ".txt")
HTML_EXTENSIONS = (".html", ".htm")
PDF_EXTENSIONS = (".pdf",)
MARKITDOWN_EXTENSIONS = (".docx", ".pptx", ".xlsx", ".csv", ".epub")
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS + HTML_EXTENSIONS + PDF_EXTENSIONS + MARKITDOWN_EXTENSIONS


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
    if suffix in MARKITDOWN_EXTENSIONS:
        return _read_with_markitdown(path)
    data = path.read_bytes()
    if b"\x00" in data:
        return "", "binary file (contains NUL bytes)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return "", f"not UTF-8 text ({err.reason} at byte {err.start})"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (html_to_markdown(main_content_html(text)) if suffix in HTML_EXTENSIONS else text), None


def _read_pdf(path: Path) -> tuple[str, str | None]:
    from pypdf import PdfReader

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except Exception as err:  # pypdf raises many exception types on malformed input; any means "unreadable"
        return "", f"unreadable PDF ({type(err).__name__}: {err})"
    text = "\n\n".join(page.strip() for page in pages)
    if pages and not text.strip():
        pages_text = "1 page" if len(pages) == 1 else f"{len(pages)} pages"
        return "", f"no text layer in its {pages_text} (a scanned PDF?): OCR it first"
    return text, None


@cache
def _markitdown():  # -> markitdown.MarkItDown, imported on first use
    """One converter for the whole process, with only the converters for MARKITDOWN_EXTENSIONS: no plugins, and
    none of the built-ins that fetch URLs (YouTube, Wikipedia, Bing) or call LLMs and exiftool (images, audio).
    Nor a plain-text catch-all: a broken file is skipped, never read as text."""
    from markitdown import MarkItDown
    from markitdown.converters import CsvConverter, DocxConverter, EpubConverter, PptxConverter, XlsxConverter

    converter = MarkItDown(enable_builtins=False, enable_plugins=False)
    for format_converter in (DocxConverter, PptxConverter, XlsxConverter, CsvConverter, EpubConverter):
        converter.register_converter(format_converter())
    return converter


# python-pptx output marks each slide with an HTML comment; the slide's title heading already separates them.
_SLIDE_NUMBER_LINE = re.compile(r"^<!-- Slide number: \d+ -->\n", re.MULTILINE)


def _read_with_markitdown(path: Path) -> tuple[str, str | None]:
    from markitdown import FileConversionException, MissingDependencyException

    try:
        result = _markitdown().convert_local(path)
    except FileConversionException as err:
        # The converters raise whatever their parser raises (BadZipFile, KeyError, XML errors...); name the first.
        failed = [attempt.exc_info[1] for attempt in err.attempts or [] if attempt.exc_info]
        cause = failed[0] if failed else err
        if isinstance(cause, MissingDependencyException):  # an install problem, not a bad file: every file fails
            raise cause from err
        return "", f"unreadable {path.suffix[1:].upper()} ({_one_line(cause)})"
    text = _SLIDE_NUMBER_LINE.sub("", result.markdown).strip()
    return (text + "\n" if text else ""), None


def _one_line(err: BaseException, limit: int = 200) -> str:
    message = " ".join(str(err).split())
    message = message if len(message) <= limit else message[: limit - 3] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def main_content_html(html: str) -> str:
    """The main content of a web page, as HTML: trafilatura leaves out navigation, headers, footers, cookie
    banners, forms and scripts.

    trafilatura keeps a page's headings only where it finds a content container (<main>, <article>, a "content"
    div...); on a short page without one it rescues the paragraphs alone, or dumps the whole text with the
    navigation in it. Then, and when it finds nothing, the page body less <nav>, <aside>, <form> and a page-level
    <header>/<footer> serves instead.
    """
    import trafilatura
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    # trafilatura guesses whether a bare <pre> is code or a quotation; a <pre><code> it keeps as code.
    for pre in soup.find_all("pre"):
        if pre.find("code") is None:
            code = soup.new_tag("code")
            code.extend(list(pre.contents))
            pre.append(code)
    main = trafilatura.extract(
        str(soup),
        output_format="html",
        favor_recall=True,  # a documentation page is mostly content: rather keep a borderline paragraph
        include_formatting=True,
        include_tables=True,
        include_links=False,
        include_images=False,
        include_comments=False,
        with_metadata=False,  # no title/date search (htmldate), which only slows extraction down
        deduplicate=False,
    )
    body = soup.body or soup
    for tag in body.find_all(["nav", "aside", "form"]):
        tag.decompose()
    for tag in body.find_all(["header", "footer"]):
        if tag.find_parent(["main", "article", "section"]) is None:
            tag.decompose()
    if main is None or (_has_headings(body) and not _has_headings(BeautifulSoup(main, "html.parser"))):
        return str(body)
    return main


def _has_headings(soup) -> bool:
    return soup.find(["h1", "h2", "h3"]) is not None


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
