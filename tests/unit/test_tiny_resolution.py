"""`tiny` reaches no stage: the run builds it from its chunks, links it at data/runs/<run_id>/tiny and hands the
stages that directory; a stage given the name itself refuses it in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tiny import CFG, stdlib_docs

from tunebook import paths, runner, tiny
from tunebook.params import ParamsError, load_params, section

CI = paths.project_root() / "params" / "ci.yaml"
SMALL = [f"tiny.{key}={value}" for key, value in CFG.model_dump().items()]  # seconds to build
NO_TINY = ["sft.base_model=HuggingFaceTB/SmolLM2-135M", "generate.teachers=[{name: extractive, backend: extractive}]"]


def write_chunks(run_id: str, texts: list[str]) -> Path:
    """What ingest leaves for the run: its chunks, which the tiny model is built from."""
    chunks = [{"id": f"c{i}", "source": "doc.md", "index": i, "heading": "", "text": t} for i, t in enumerate(texts)]
    path = paths.stage_dir(run_id, "ingest") / "chunks.jsonl"
    path.write_text("".join(json.dumps(chunk) + "\n" for chunk in chunks))
    return path


def test_every_tiny_becomes_the_runs_model_directory_and_nothing_else_changes():
    params = load_params(CI)
    assert tiny.tiny_keys(params) == ["generate.teachers.1.model", "sft.base_model"]
    assert tiny.tiny_keys(params, "sft") == ["sft.base_model"] and tiny.tiny_keys(params, "evaluate") == []
    staged = tiny.staged(params)
    assert staged.sft.base_model == "data/runs/ci/tiny"
    assert [t.model for t in staged.generate.teachers] == [None, "data/runs/ci/tiny"]
    unchanged = ("generate", "sft")
    assert all(
        getattr(staged, name) == getattr(params, name) for name in type(params).model_fields if name not in unchanged
    )
    assert staged.sft.model_copy(update={"base_model": "tiny"}) == params.sft
    assert params.sft.base_model == "tiny"  # the params themselves are left as the file says


def test_an_openai_model_named_tiny_is_a_served_name_and_stays():
    served = "generate.teachers=[{name: s, backend: openai, model: tiny, base_url: 'http://127.0.0.1:8080/v1'}]"
    params = load_params(CI, [served])
    assert tiny.tiny_keys(params) == ["sft.base_model"]
    assert tiny.staged(params).generate.teachers[0].model == "tiny"


@pytest.mark.parametrize("stage", paths.STAGES)
def test_what_a_run_injects_validates_in_the_stage(stage):
    injected = runner.stage_parameters(load_params(CI), stage)
    assert section(stage, injected) is not None


@pytest.mark.parametrize(
    "stage,key", [("sft", "sft.base_model"), ("generate", "generate.teachers.1.model")], ids=["sft", "generate"]
)
def test_a_stage_given_tiny_itself_fails_in_one_line(stage, key):
    """What plain papermill with `-p base_model tiny` would hand the notebook: refused before any work."""
    with pytest.raises(ParamsError) as refused:
        section(stage, load_params(CI).stage_parameters(stage))
    message = str(refused.value)
    assert message.startswith(f"{key}: `tiny` is built by `tunebook run` after ingest") and "\n" not in message


def test_the_run_builds_tiny_from_its_chunks_and_links_the_build(workdir):
    params = load_params(CI, SMALL)
    assert tiny.run_key(params) is None  # no chunks before ingest
    texts = stdlib_docs()
    write_chunks("ci", texts)
    assert tiny.run_key(params) == tiny.build_key(texts, params.tiny)

    runner._resolve_tiny(params, "sft", progress=False)
    link = workdir / "data" / "runs" / "ci" / "tiny"
    first = workdir / "data" / "models" / f"tiny-{tiny.run_key(params)[:12]}"
    assert link.is_symlink() and link.resolve() == first and tiny.is_complete(first)
    # Stages load the build itself: the registry and the response cache record the directory a link points at.
    assert paths.model_source("data/runs/ci/tiny") == str(first)

    rebuilt = load_params(CI, [*SMALL, "tiny.steps=2"])
    runner._resolve_tiny(rebuilt, "generate", progress=False)
    assert link.resolve().name == f"tiny-{tiny.run_key(rebuilt)[:12]}" != first.name
    assert tiny.is_complete(first)  # what an earlier adapter was trained on is still there


def test_the_run_key_reads_a_chunks_file_once_per_content(workdir, monkeypatch):
    """Every stage's cache check asks for the key: a corpus of gigabytes is read once, until ingest rewrites it."""
    params = load_params(CI, SMALL)
    reads = []
    real = tiny.iter_chunks
    monkeypatch.setattr(tiny, "iter_chunks", lambda path: reads.append(path) or real(path))
    write_chunks("ci", ["first text", "second text"])
    key = tiny.run_key(params)
    assert tiny.run_key(params) == key and len(reads) == 1
    write_chunks("ci", ["first text", "second text, edited"])
    assert tiny.run_key(params) not in (None, key) and len(reads) == 2
    assert tiny.run_key(params) == tiny.build_key(["first text", "second text, edited"], params.tiny)


def test_a_run_without_tiny_builds_nothing(workdir):
    params = load_params(CI, NO_TINY)
    write_chunks("ci", stdlib_docs())
    assert tiny.tiny_keys(params) == [] and tiny.plan_inputs(params) == (None, [])
    for stage in paths.STAGES:
        runner._resolve_tiny(params, stage, progress=False)
        assert "tiny" not in runner.input_hashes(params, stage, {})
    assert not (workdir / "data" / "models").exists() and not (workdir / "data" / "runs" / "ci" / "tiny").exists()


def test_a_tiny_model_that_cannot_be_built_stops_the_run_in_one_line():
    params = load_params(CI, SMALL)
    write_chunks("ci", ["Too short to fill one block.\n"])
    with pytest.raises(runner.RunError) as failed:
        runner._resolve_tiny(params, "sft", progress=False)
    assert str(failed.value).startswith("stage sft needs the tiny model, which cannot be built: the corpus has")


def test_a_run_whose_ingest_wrote_no_chunks_stops_in_one_line(workdir):
    params = load_params(CI, SMALL)
    with pytest.raises(runner.RunError, match=r"^stage generate needs the tiny model, which cannot be built: it is "):
        runner._resolve_tiny(params, "generate", progress=False)
