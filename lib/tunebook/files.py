"""Small file helpers every stage shares: atomic writes, JSONL and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TextIO


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of either (also between threads writing it).

    A failure (a full disk, say) leaves the old file, or none, and no temporary file; the OSError it raises
    names `path`, since the temporary file it happened in is gone.
    """
    with atomic_writer(path) as f:
        f.write(text)


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file to write `path` through, line by line: it replaces `path` only when the block ends without
    an error, so readers see the old file or the whole new one (see `write_atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            # A full disk can go unreported until the data reaches it (NFS, delayed allocation): find out
            # before the rename, while the final file is still untouched.
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be read by others
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None or err.filename not in (None, tmp):  # not the write's own failure
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        Path(tmp).unlink(missing_ok=True)


def append_line(path: Path, row: dict) -> None:
    """Append one JSON record with a single write and flush it to disk.

    One write() of a whole line means a reader (or a process killed with -9) sees whole records only.
    """
    data = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_complete_lines(path: Path) -> list[dict]:
    """The records of an append-only JSONL file, dropping (and truncating away) a torn last line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


# A long stage's progress while it runs ({"done", "total", "rate_per_s", "eta_s"}), for `tunebook runs`.
PROGRESS_FILE = "progress.json"


def read_progress(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object is a ValueError
    naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\n"))  # so that an error's column is on this line
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object (got a {type(record).__name__})")
            yield number, record


def corpus_files(corpus_dir: Path, extensions: Iterable[str] | None = None) -> list[Path]:
    """The files under `corpus_dir` with one of `extensions` (any case, dot optional; None: any), sorted."""
    wanted = None if extensions is None else _suffixes(extensions)
    # Hidden paths hold editor and notebook copies (.ipynb_checkpoints) that would duplicate documents.
    return sorted(
        path
        for path in corpus_dir.rglob("*")
        if path.is_file()
        and (wanted is None or path.suffix.lower() in wanted)
        and not any(part.startswith(".") for part in path.relative_to(corpus_dir).parts)
    )


def ignored_extensions(corpus_dir: Path, extensions: Iterable[str]) -> dict[str, int]:
    """How many files under `corpus_dir` each extension not in `extensions` has ("(none)": no extension)."""
    wanted = _suffixes(extensions)
    counts = Counter(path.suffix.lower() or "(none)" for path in corpus_files(corpus_dir))
    return {ext: n for ext, n in sorted(counts.items()) if ext not in wanted}


def _suffixes(extensions: Iterable[str]) -> set[str]:
    """Extensions as Path.suffix gives them, lower-cased: '.TXT', 'txt' and '.txt' are one."""
    return {"." + ext.lower().lstrip(".") for ext in extensions}


def describe_counts(counts: dict[str, int]) -> str:
    """{'.docx': 3, '.bin': 1} as '3 .docx, 1 .bin'."""
    return ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_fraction(digest: str, digits: int = 8) -> float:
    """A hex digest's first `digits` digits as a number in [0, 1): a hash split's draw, uniform and the same on
    every run, so an item keeps its side whatever else is added."""
    return int(digest[:digits], 16) / 16**digits


def hash_tree(path: Path) -> str:
    """Content hash of a file or a directory (relative names and bytes, hidden files skipped)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        relative = file.relative_to(path).as_posix() if file != path else file.name
        if any(part.startswith(".") for part in Path(relative).parts):
            continue
        digest.update(relative.encode() + b"\0")
        _digest_file(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """What `sha256sum` prints for the file. A file is read once while it stays as it is (the export names the
    GGUF it serves by its hash, then lists every file with its hash: gigabytes, not to be read twice)."""
    stat = Path(path).stat()
    return _sha256_of(Path(path).resolve(), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@cache
def _sha256_of(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    return _digest_file(path, hashlib.sha256()).hexdigest()


def _digest_file(path: Path, digest):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest
