"""Sweeps that run, through the real CLI: a 4-variant grid of SFT settings as local processes two at a time, which
ingests and generates once; an Optuna search on a real Ray cluster (a head and two worker nodes on this machine);
the grid's page in headless Chromium; and failures (a stage's cell, a held run lock) recorded while the others go
on, then re-run alone by --resume."""

import json
import shutil

import pytest

from tunebook import paths, reports, runner, sweep
from tunebook.cli import main

CI = str(paths.project_root() / "params" / "ci.yaml")
STAGES = "ingest,generate,sft,evaluate"
GRID = ["--grid", "sft.lora.r=8,16", "--grid", "sft.trainer.learning_rate=0.003,0.001"]
QUICK_EPOCHS = 5  # the sweeps after the grid test how variants run, not what they learn
# Every sweep here evaluates closed-book only and leaves out lm-eval's task (together, most of the stage's time):
# retrieval and tunebook.general have tests of their own.
LEAN = ["--set", "evaluate.forgetting.tasks=[]", "--set", "evaluate.conditions=[closed_book]"]


# One workdir for the module: the later sweeps share the first one's ingest and generate.
pytestmark = pytest.mark.shared_workdir


def manifest(run_id: str) -> dict:
    return runner.read_manifest(run_id)


@pytest.fixture(scope="module")
def grid_sweep(shared_workdir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOOK_WORKDIR", str(shared_workdir))
        # The plan's upper bound (every SFT at max_samples rows) exceeds ci.yaml's budget: the gate wants --confirm.
        code = main(
            [
                "sweep",
                CI,
                *GRID,
                "--stages",
                STAGES,
                "--jobs",
                "2",
                "--id",
                "grid",
                "--confirm",
                *LEAN,
                "--set",
                "sft.trainer.num_train_epochs=10",
            ]
        )
        return code, sweep.read_record("grid")


def test_a_4_variant_grid_runs_ingest_and_generate_once(grid_sweep, capsys):
    code, record = grid_sweep
    assert code == 0 and record["status"] == "completed"
    ids = [entry["id"] for entry in record["variants"]]
    assert ids == [
        "grid-r8-learning_rate0.003",
        "grid-r8-learning_rate0.001",
        "grid-r16-learning_rate0.003",
        "grid-r16-learning_rate0.001",
    ]
    leader, *others = ids
    for stage in ("ingest", "generate"):
        ran = manifest(leader)["stages"][stage]  # run once, by the first variant before the others started
        assert ran["status"] == "cached" and "shared_from" not in ran
        for other in others:
            record_ = manifest(other)["stages"][stage]
            assert record_["status"] == "shared" and record_["shared_from"] in ids
            assert record_["outputs_hash"] == manifest(leader)["stages"][stage]["outputs_hash"]
    for run_id in ids:
        run = manifest(run_id)
        assert run["status"] == "completed" and run["stages"]["sft"]["status"] == "completed"
        assert run["sweep"]["id"] == "grid" and run["params"]["run"]["id"] == run_id
    r16 = manifest("grid-r16-learning_rate0.001")
    assert r16["params"]["sft"]["lora"]["r"] == 16 and r16["params"]["sft"]["trainer"]["learning_rate"] == 0.001
    # two at a time, in two processes; each variant's value is its sft F1, and its log is beside the record
    assert len({entry["where"] for entry in record["variants"]}) == 4
    for entry in record["variants"]:
        assert entry["status"] == "completed" and entry["value"] == manifest(entry["id"])["headline"]["sft"]["f1"]
        assert "[sft] running 02_sft.ipynb" in (sweep.sweeps_dir() / entry["log"]).read_text()


def test_the_runs_index_and_runs_group_the_variants_under_the_sweep(grid_sweep, workdir, capsys):
    index = (workdir / "reports" / "index.html").read_text()
    assert 'href="sweeps/grid.html"' in index and "4 of 4 completed" in index
    assert main(["runs"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {row[0] for row in rows if "grid" in row[5:6]} == {entry["id"] for entry in grid_sweep[1]["variants"]}


def test_the_sweep_page_in_chromium(grid_sweep, workdir, chromium_page, tmp_path):
    record = grid_sweep[1]
    values = {entry["id"]: entry["value"] for entry in record["variants"]}
    best = max(values, key=values.get)
    page = chromium_page
    page.goto((workdir / "reports" / "sweeps" / "grid.html").as_uri())
    rows = page.locator("#variants tbody tr")
    assert rows.count() == 4
    assert "(baseline)" in rows.first.inner_text() and "completed" in rows.first.inner_text()
    first = rows.first.inner_text()
    assert "8" in first and "0.003" in first and "[" in first  # its settings and scores with CIs
    text = page.locator("#best").inner_text()
    assert text.startswith(f"{best} is best on f1 (maximize)") and "of 1000 resamples" in text
    body = page.locator("body").inner_text()
    assert "Holm, column p_holm" in body and "Params that differ" in body
    assert "sft.lora.r" in body and "sft.trainer.learning_rate" in body
    assert page.evaluate("document.querySelector('img').naturalWidth") > 0  # the score-vs-setting plot
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)
    page.get_by_role("link", name=best, exact=True).click()  # a variant opens its last stage's report
    assert page.url.endswith(f"/reports/{best}/03_evaluate.html")
    assert f"run {best}" in page.locator("body").inner_text()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: a head with no CPUs of its own and two worker nodes of one CPU each (Ray
    advertises the machine's address rather than 127.0.0.1, which it reserves)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def test_an_optuna_search_on_a_ray_cluster_asks_each_trial_as_a_worker_frees(grid_sweep, ray_cluster, workdir):
    search = {
        "sft.lora.r": {"choices": [8, 16]},
        "sft.trainer.learning_rate": {"low": 0.001, "high": 0.005, "log": True},
    }
    argv = ["sweep", CI, "--trials", "2", "--sampler", "optuna", "--metric", "sft.rouge_l", "--id", "tpe"]
    argv += ["--set", f"sweep.search={json.dumps(search)}", "--set", f"sft.trainer.num_train_epochs={QUICK_EPOCHS}"]
    assert main([*argv, "--stages", STAGES, "--ray", ray_cluster, *LEAN]) == 0
    record = sweep.read_record("tpe")
    assert record["executor"] == f"ray {ray_cluster}" and record["status"] == "completed"
    ids = [entry["id"] for entry in record["variants"]]
    assert ids[0] == "tpe-base" and [run_id.split("-")[1] for run_id in ids[1:]] == ["t01", "t02"]
    # two at a time (the cluster's two CPUs), one on each worker node
    nodes = {entry["where"].split()[2] for entry in record["variants"]}
    assert all(entry["where"].startswith("ray node ") for entry in record["variants"]) and len(nodes) == 2
    for entry in record["variants"]:
        run = manifest(entry["id"])
        assert entry["status"] == "completed" and run["sweep"]["id"] == "tpe"
        assert entry["value"] == run["headline"]["sft"]["rouge_l"]  # what Optuna was told
        # the grid's ingest and generate, copied: the whole module ingested and generated once
        assert {run["stages"][stage]["status"] for stage in ("ingest", "generate")} == {"shared"}
    for entry in record["variants"][1:]:
        rate = entry["settings"]["sft.trainer.learning_rate"]
        assert 0.001 <= rate <= 0.005 and manifest(entry["id"])["params"]["sft"]["trainer"]["learning_rate"] == rate
        assert entry["settings"]["sft.lora.r"] == manifest(entry["id"])["params"]["sft"]["lora"]["r"] in (8, 16)
    best = max(record["variants"], key=lambda entry: entry["value"])["id"]
    assert f"<b>{best}</b> is best on rouge_l" in (workdir / "reports" / "sweeps" / "tpe.html").read_text()


def test_a_failed_variant_is_recorded_at_its_stage_and_cell_and_resume_reruns_it_alone(grid_sweep, workdir, capsys):
    late = workdir / "data" / "late.jsonl"  # a mix file that does not exist yet: that variant's sft cell fails
    argv = ["sweep", CI, "--grid", "sft.mix.0.path=params/general/stdlib_chat.jsonl,data/late.jsonl"]
    argv += ["--stages", "ingest,generate,sft", "--jobs", "2", "--id", "mix"]
    argv += ["--set", f"sft.trainer.num_train_epochs={QUICK_EPOCHS}"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "sweep mix: 1 completed, 1 failed (mix-pathdata_late.jsonl)" in out
    assert "--resume" in err
    record = sweep.read_record("mix")
    good, bad = record["variants"]
    assert good["status"] == "completed" and bad["status"] == "failed" and record["status"] == "failed"
    assert bad["failed"]["stage"] == "sft" and isinstance(bad["failed"]["cell"], int)
    assert bad["error"].startswith(f"stage sft failed in cell {bad['failed']['cell']}")
    assert f"mix-pathdata_late.jsonl: FAILED in sft, cell {bad['failed']['cell']}" in err
    assert "tunebook: stage sft failed" in (sweep.sweeps_dir() / bad["log"]).read_text()
    page = (workdir / "reports" / "sweeps" / "mix.html").read_text()
    assert f"failed: sft, cell {bad['failed']['cell']}" in page
    started = manifest(good["id"])["started"]

    shutil.copy(paths.project_root() / "params" / "general" / "stdlib_chat.jsonl", late)
    assert main([*argv, "--resume"]) == 0
    record = sweep.read_record("mix")
    assert [entry["status"] for entry in record["variants"]] == ["completed", "completed"]
    assert manifest(good["id"])["started"] == started  # not run again
    assert manifest(bad["id"])["stages"]["sft"]["status"] == "completed" and "error" not in record["variants"][1]


def test_a_variant_whose_run_is_locked_fails_alone_and_resumes(grid_sweep, capsys):
    """Run locks hold across a sweep's processes: a variant whose run id another process holds fails at once,
    without a stage, while the other runs; --resume runs it once the lock is free."""
    argv = ["sweep", CI, "--grid", "sft.lora.r=8,16", "--stages", "ingest", "--jobs", "2", "--id", "lock"]
    with runner.run_lock("lock-r16"):
        assert main(argv) == 1
    record = sweep.read_record("lock")
    held, free = record["variants"][1], record["variants"][0]
    assert free["status"] == "completed" and held["status"] == "failed" and held["failed"] is None
    assert held["error"].startswith("run lock-r16 is already running (pid ")
    assert main([*argv, "--resume"]) == 0
    assert manifest("lock-r16")["stages"]["ingest"]["status"] == "shared"
    assert reports.runs_table().set_index("run").loc["lock-r16", "sweep"] == "lock"
