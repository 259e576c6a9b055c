"""The runs index in a real browser (Debian's chromium, headless, driven by playwright), opened from the
file system as a researcher opens it: the table holds the runs, a header sorts it, and it fits 1280 px."""

import json

import pytest

from tunebook import reports

RUNS = [  # run id, started, status, failed, headline
    (
        "r8-with-a-rather-long-run-id-that-must-wrap",
        "2026-01-01",
        "completed",
        None,
        {
            "base": {"f1": 4.4, "rouge_l": 8.5},
            "sft": {"f1": 13.3, "rouge_l": 36.4},
            "dpo": {"f1": 12.4, "rouge_l": 34.9},
        },
    ),
    (
        "demo",
        "2026-01-02",
        "completed",
        None,
        {"base": {"f1": 4.4, "rouge_l": 8.5}, "sft": {"f1": 20.1, "rouge_l": 40.0}},
    ),
    ("broken", "2026-01-03", "failed", {"stage": "sft", "cell": 7}, {}),
]


@pytest.fixture
def index(workdir):
    for run_id, day, status, failed, headline in RUNS:
        stages = {
            "ingest": {"status": "completed"},
            "generate": {"status": "completed"},
            "sft": {"status": "failed" if failed else "completed"},
        }
        manifest = {
            "run_id": run_id,
            "name": "demo",
            "params_file": "params/demo.yaml",
            "status": status,
            "failed": failed,
            "started": f"{day}T10:00",
            "stages": stages,
            "headline": headline,
        }
        (workdir / "reports" / run_id).mkdir(parents=True)
        (workdir / "reports" / run_id / "run.json").write_text(json.dumps(manifest))
    return reports.write_index()


def test_the_runs_index_sorts_and_fits_1280_px_in_chromium(index, chromium_page, tmp_path):
    page = chromium_page
    page.goto(index.as_uri())
    ids = page.locator("#runs tbody tr td:first-child")
    assert ids.all_inner_texts() == [run[0] for run in reversed(RUNS)]  # newest first
    assert "failed: sft, cell 7" in page.locator("#runs tbody tr").first.inner_text()
    assert "sft f1 20.1 (+15.7)" in page.locator("#runs").inner_text()

    page.get_by_role("button", name="headline metrics").click()  # by the trained model's first score
    assert ids.all_inner_texts() == ["broken", RUNS[0][0], "demo"]
    page.get_by_role("button", name="headline metrics").click()
    assert ids.all_inner_texts() == ["demo", RUNS[0][0], "broken"]
    page.get_by_role("button", name="run", exact=True).click()
    assert ids.all_inner_texts() == sorted(run[0] for run in RUNS)

    assert page.evaluate("document.querySelector('img').naturalWidth") > 0  # the inline plot loads
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no horizontal overflow
    screenshot = page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    assert len(screenshot) > 10_000
