"""A team's folder as it comes: one file per format tunebook reads, a scanned PDF, a web page with its nav bar,
footer and script, and files of other types. Every file is accounted for, and the pipeline runs through evaluate."""

import json
import shutil
from pathlib import Path

from tunebook import paths
from tunebook.cli import main

CI = str(paths.project_root() / "params" / "ci.yaml")
FORMATS = Path(__file__).parents[1] / "fixtures" / "formats"
INGESTED = {
    "arrivals.csv",
    "berth_regulations.docx",
    "harbour_dues.xlsx",
    "harbour_history.epub",
    "notice_to_mariners.md",
    "pilotage_rules.txt",
    "port_services.html",
    "safety_briefing.pptx",
    "tide_tables.pdf",
}


def test_a_folder_of_every_format_runs_through_evaluate_with_every_file_accounted_for(workdir):
    shutil.copytree(FORMATS, workdir / "corpus")
    settings = [
        "ingest.stdlib_modules=[]",
        "ingest.corpus_dir=corpus",
        "generate.teachers=[{name: extractive, backend: extractive}]",
        "tiny.steps=40",
    ]
    assert main(["run", CI, "--stages", "ingest,generate,sft,evaluate", *(f"--set={s}" for s in settings)]) == 0

    run = workdir / "data" / "runs" / "ci"
    chunks = [json.loads(line) for line in (run / "ingest" / "chunks.jsonl").read_text().splitlines()]
    assert {chunk["source"] for chunk in chunks} == INGESTED
    page = " ".join(chunk["text"] for chunk in chunks if chunk["source"] == "port_services.html")
    assert "Fresh water is supplied" in page and "Home | Port services" not in page
    report = (workdir / "reports" / "ci" / "00_ingest.html").read_text()
    assert "scanned_permit.pdf: no text layer in its 1 page (a scanned PDF?): OCR it first" in report
    assert "extension .dat" in report and "extension .py" in report
    for split in ("train", "val", "test"):
        assert (run / "generate" / f"{split}.jsonl").read_text().strip(), f"{split} is empty"
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics, "evaluate wrote no metrics"
