"""Atomic writes on a full disk (the old file or none, never a half-written file or a stray temporary one), and
file hashes read once."""

import errno
import hashlib
import os
from pathlib import Path

import pytest

from tunebook import files
from tunebook.files import write_atomic


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# Where a full disk shows: at write() (ext4), only when the data is flushed to disk (NFS, delayed
# allocation), or, for a rename into a full directory, at the rename.
FAILURES = ["write", "fsync", "replace"]


def fail_at(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if where != "write":
        monkeypatch.setattr(os, where, no_space)
        return
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args, **kwargs):
        opened = real_fdopen(fd, *args, **kwargs)
        opened.write = no_space
        return opened

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("where", FAILURES)
def test_a_full_disk_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "out" / "train.jsonl"
    fail_at(where, monkeypatch)
    with pytest.raises(OSError) as err:
        write_atomic(path, "x" * 100_000)
    monkeypatch.undo()
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(path))
    assert list(path.parent.iterdir()) == []


@pytest.mark.parametrize("where", FAILURES)
def test_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "card.json"
    write_atomic(path, "old\n")
    fail_at(where, monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        write_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]


def test_a_file_is_hashed_once_while_it_stays_as_it_is(tmp_path, monkeypatch):
    reads = []
    digest = files._digest_file
    monkeypatch.setattr(files, "_digest_file", lambda path, d: reads.append(path) or digest(path, d))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"weights")
    first = files.sha256_file(path)
    assert files.sha256_file(path) == first == hashlib.sha256(b"weights").hexdigest() and len(reads) == 1
    files.write_atomic(path, "other weights")  # a new file in its place
    assert files.sha256_file(path) == hashlib.sha256(b"other weights").hexdigest() and len(reads) == 2


def test_a_hash_fraction_is_the_digests_leading_digits_in_the_unit_interval():
    assert files.hash_fraction("00000000ffff") == 0.0
    assert files.hash_fraction("80000000") == 0.5
    assert files.hash_fraction("ffffffff" * 8) == 1 - 16**-8
    assert files.hash_fraction("000000000001", digits=12) == 16**-12
    # The draws that place every split and teacher so far: pinned, so a dataset keeps its splits.
    assert files.hash_fraction(files.sha256_text("chunk-1")) == 0.1529187341220677  # 0x2725aea2 / 16**8
