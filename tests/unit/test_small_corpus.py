"""A corpus a team might start with: one short document. The pipeline must say what is missing in one line,
never train on a split of four rows and then fail in evaluate on an empty one."""

import re

from tunebook import paths
from tunebook.cli import main

CI = str(paths.project_root() / "params" / "ci.yaml")
# Seven sections, each a topic the extractive teacher asks one question about: seven rows.
NOTICE = "\n".join(
    f"## {topic}\n\n{sentence}\n"
    for topic, sentence in [
        ("Opening hours", "The harbour office opens at seven and closes at nineteen on weekdays."),
        ("Pilotage", "Vessels longer than eighty metres must request a pilot two hours before arrival."),
        ("Berth booking", "Berths are booked through the port portal no later than the day before."),
        ("Waste disposal", "Oily waste is collected at quay four on Tuesdays and Fridays only."),
        ("Speed limit", "Inside the breakwater no vessel may exceed six knots at any time."),
        ("Fuel bunkering", "Bunkering requires a signed checklist handed to the duty officer."),
        ("Emergency contact", "In an emergency call channel sixteen and then the harbour master."),
    ]
)


def test_seven_rows_stop_generate_in_one_line_before_any_split_is_written(workdir, capsys):
    corpus = workdir / "corpus"
    corpus.mkdir()
    (corpus / "notice.md").write_text(NOTICE, encoding="utf-8")
    small = [
        "ingest.stdlib_modules=[]",
        "ingest.corpus_dir=corpus",
        "generate.teachers=[{name: extractive, backend: extractive}]",
    ]
    assert main(["run", CI, "--stages", "ingest,generate", *(f"--set={s}" for s in small)]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tunebook:")]
    expected = "DatasetError: 7 rows: too few for train/val/test (need at least 10 with val_fraction 0.1 and"
    assert re.search(r"stage generate failed in cell \d+: ", line) and expected in line, line
    assert "add documents or teachers, or loosen generate.filters" in line
    generated = workdir / "data" / "runs" / "ci" / "generate"
    assert not any((generated / f"{split}.jsonl").exists() for split in ("train", "val", "test"))
