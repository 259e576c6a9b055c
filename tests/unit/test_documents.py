"""Reading a corpus folder: every format tunebook reads, and every file found accounted for."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
from pypdf import PdfWriter

from tunebook.documents import (
    SUPPORTED_EXTENSIONS,
    Document,
    Skipped,
    file_table,
    ignored_files,
    read_documents,
)

pytestmark = pytest.mark.usefixtures("offline")

FIXTURE_CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
EXTENSIONS = [".md", ".txt", ".html", ".pdf"]
FIXTURE_SOURCES = ["bridge_faq.html", "field_notes.txt", "kettle_guide.md", "lighthouse_log.pdf"]


def fixture_docs() -> list[Document]:
    docs, skipped = read_documents(FIXTURE_CORPUS, EXTENSIONS)
    assert skipped == []
    return docs


def test_read_documents_reads_md_txt_html_and_pdf() -> None:
    docs = {doc.source: doc.text for doc in fixture_docs()}

    assert sorted(docs) == FIXTURE_SOURCES
    html = docs["bridge_faq.html"]
    assert html.startswith("# Harbour bridge FAQ\n\nThe harbour bridge opens for tall ships twice a day, at")
    assert "\n## Cyclists\n" in html and "\n### Toll\n" in html
    assert '```\ntoll = 2 if vehicle == "car" else 0\n```' in html
    assert "console.log" not in html and "editor's note" not in html and "font-family" not in html
    assert "range\nof 18 nautical miles" in docs["lighthouse_log.pdf"]
    assert docs["kettle_guide.md"] == (FIXTURE_CORPUS / "kettle_guide.md").read_text()


def test_unreadable_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FIXTURE_CORPUS, corpus)
    (corpus / "sub").mkdir()
    (corpus / "sub" / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (corpus / "latin1.md").write_bytes("# Café\n\nCrème brûlée".encode("latin-1"))
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    (corpus / "empty.md").write_text("  \n\n")
    scanned = PdfWriter()  # pages of pictures only: no text layer
    scanned.add_blank_page(width=595, height=842)
    scanned.add_blank_page(width=595, height=842)
    scanned.write(corpus / "scanned.pdf")
    (corpus / "photo.png").write_bytes(b"\x89PNG\r\n")  # other extensions are not corpus files, but counted
    (corpus / "minutes.docx").write_bytes(b"PK\x03\x04")
    (corpus / "sub" / "notes.DOCX").write_bytes(b"PK\x03\x04")
    (corpus / "Makefile").write_text("all:\n")
    (corpus / ".ipynb_checkpoints").mkdir()  # nor are hidden notebook copies
    shutil.copy(corpus / "kettle_guide.md", corpus / ".ipynb_checkpoints" / "kettle_guide-checkpoint.md")

    with pytest.warns(UserWarning) as warned:
        docs, skipped = read_documents(corpus, ["md", ".TXT", ".html", ".pdf"])

    assert [doc.source for doc in docs] == FIXTURE_SOURCES
    reasons = dict(skipped)
    assert sorted(reasons) == ["broken.pdf", "empty.md", "latin1.md", "scanned.pdf", "sub/blob.txt"]
    assert reasons["scanned.pdf"] == "no text layer in its 2 pages (a scanned PDF?): OCR it first"
    assert reasons["sub/blob.txt"] == "binary file (contains NUL bytes)"
    assert reasons["latin1.md"].startswith("not UTF-8 text (invalid continuation byte at byte")
    assert reasons["broken.pdf"].startswith("unreadable PDF (")
    assert reasons["empty.md"] == "empty"
    assert [str(warning.message) for warning in warned] == [f"skipping {s}: {r}" for s, r in skipped]

    # Every file found is accounted for: ingested, skipped with its reason, or ignored for its extension.
    ignored = ignored_files(corpus, ["md", ".TXT", ".html", ".pdf"])
    assert ignored == {"(none)": 1, ".docx": 2, ".png": 1}
    table = file_table(len(docs), skipped, ignored)
    assert sum(row["files"] for row in table) == len(FIXTURE_SOURCES) + 5 + 4
    assert {row["status"] for row in table} == {"ingested", "skipped", "ignored"}


def test_a_corpus_of_unreadable_files_is_an_error_naming_the_directory(tmp_path: Path) -> None:
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin1.md").write_bytes("Crème brûlée".encode("latin-1"))

    with pytest.warns(UserWarning), pytest.raises(ValueError) as err:
        read_documents(tmp_path, [".md", ".txt"])
    assert str(err.value) == (
        f"{tmp_path}: no readable documents: all 2 files were skipped (blob.txt: binary file (contains NUL bytes))"
    )


def test_a_corpus_without_corpus_files_is_an_error_naming_the_directory_and_what_it_has(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n")
    for name in ("a.docx", "b.docx"):
        (tmp_path / name).write_bytes(b"PK\x03\x04")
    none_with = r"no corpus files \(none with the extensions \.md, \.txt; it has 2 \.docx, 1 \.png\)$"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: {none_with}"):
        read_documents(tmp_path, ["txt", ".md"])


def test_read_documents_rejects_unknown_extension() -> None:
    with pytest.raises(ValueError, match=r"unsupported corpus extension '\.doc'"):
        read_documents(FIXTURE_CORPUS, [".md", ".doc"])


# --- one file per format (tests/fixtures/formats/make_formats.py writes them) ----------------------------

FORMATS = Path(__file__).parents[1] / "fixtures" / "formats"
DISTINCT_SENTENCES = {
    "notice_to_mariners.md": "The east channel buoy has been moved 40 metres north of its charted position.",
    "pilotage_rules.txt": "Vessels over 80 metres must embark a harbour pilot at the Ashcombe fairway buoy.",
    "port_services.html": "Shore power of 63 amperes is available on the north quay",
    "tide_tables.pdf": "Spring tides at Ashcombe reach 5.2 metres above chart datum.",
    "berth_regulations.docx": "Mooring lines must be doubled when the wind forecast exceeds force 7",
    "safety_briefing.pptx": "The muster point for the marina is the blue crane at quay 2.",
    "harbour_dues.xlsx": "| Fishing trawler | 12 to 24 | 41.5 |",
    "arrivals.csv": "| MV Saltmarsh Queen | 2026-03-02 06:40 | 4 | timber |",
    "harbour_history.epub": "The great storm of 1953 destroyed the old north pier",
}


def read_formats(corpus: Path = FORMATS) -> tuple[dict[str, str], dict[str, str]]:
    with pytest.warns(UserWarning, match="scanned_permit.pdf"):
        docs, skipped = read_documents(corpus, list(SUPPORTED_EXTENSIONS))
    return {doc.source: doc.text for doc in docs}, dict(skipped)


def test_every_supported_format_reads_to_its_text() -> None:
    # Offline, like every test here: a converter that tried the network would fail on the refused socket.
    assert {Path(name).suffix for name in DISTINCT_SENTENCES} | {".htm"} == set(SUPPORTED_EXTENSIONS)
    docs, skipped = read_formats()

    assert sorted(docs) == sorted(DISTINCT_SENTENCES)
    for source, sentence in DISTINCT_SENTENCES.items():
        assert sentence in docs[source], source
    docx = docs["berth_regulations.docx"]
    assert docx.startswith("# Berth regulations\n\nMooring lines must be doubled")
    assert "\n## Hinweise für Gäste\n" in docx
    assert "Größere Fähren dürfen nur bei Tageslicht einlaufen" in docx
    assert "# Pontoon safety briefing\n" in docs["safety_briefing.pptx"]
    assert "Slide number" not in docs["safety_briefing.pptx"]
    assert "# Chapter 1: The north pier\n" in docs["harbour_history.epub"]
    assert "| Vessel class | Length (m) | Dues per night (EUR) |" in docs["harbour_dues.xlsx"]
    assert skipped == {"scanned_permit.pdf": "no text layer in its 1 page (a scanned PDF?): OCR it first"}


def test_html_keeps_the_main_content_and_leaves_the_page_furniture_out() -> None:
    html = read_formats()[0]["port_services.html"]

    assert html.startswith("# Port services\n\nFresh water is supplied at berths 3 to 7")
    assert "\n## Waste reception\n" in html and "\n### Booking a collection\n" in html
    assert "```\nwaste_fee = 0 if dues_paid else 35\n```" in html
    for furniture in ["Home", "Contact", "cookies", "All rights reserved", "analytics", "tracking", "dataset"]:
        assert furniture not in html


def test_a_short_page_without_a_content_container_keeps_its_headings_and_drops_its_navigation(tmp_path: Path) -> None:
    (tmp_path / "hours.htm").write_text(
        "<html><body><nav>Home | Contact</nav><h1>Opening hours</h1>"
        "<p>The harbour office opens at 08:00.</p><footer>(c) 2026 Harbour Authority</footer></body></html>"
    )
    docs, _ = read_documents(tmp_path, [".htm"])
    assert docs[0].text == "# Opening hours\n\nThe harbour office opens at 08:00.\n"


def test_every_file_in_the_formats_folder_is_accounted_for() -> None:
    docs, skipped = read_formats()
    ignored = ignored_files(FORMATS, list(SUPPORTED_EXTENSIONS))

    assert ignored == {".dat": 1, ".py": 1}  # berths.dat, and the generator itself
    table = file_table(len(docs), [Skipped(source, reason) for source, reason in skipped.items()], ignored)
    on_disk = [path for path in FORMATS.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    assert sum(row["files"] for row in table) == len(on_disk)


def test_broken_office_files_are_skipped_with_a_one_line_reason(tmp_path: Path) -> None:
    shutil.copy(FORMATS / "berth_regulations.docx", tmp_path)
    (tmp_path / "minutes.docx").write_bytes(random.Random(18).randbytes(4096))
    (tmp_path / "deck.pptx").write_bytes(b"PK\x03\x04")
    (tmp_path / "dues.xlsx").write_text("not a workbook")
    epub = (FORMATS / "harbour_history.epub").read_bytes()
    (tmp_path / "truncated.epub").write_bytes(epub[: len(epub) // 2])

    with pytest.warns(UserWarning):
        docs, skipped = read_documents(tmp_path, [".docx", ".pptx", ".xlsx", ".epub"])

    assert [doc.source for doc in docs] == ["berth_regulations.docx"]
    reasons = dict(skipped)
    assert reasons == {
        "deck.pptx": "unreadable PPTX (BadZipFile: File is not a zip file)",
        "dues.xlsx": "unreadable XLSX (BadZipFile: File is not a zip file)",
        "minutes.docx": "unreadable DOCX (BadZipFile: File is not a zip file)",
        "truncated.epub": reasons["truncated.epub"],
    }
    assert reasons["truncated.epub"].startswith("unreadable EPUB (") and "\n" not in reasons["truncated.epub"]
