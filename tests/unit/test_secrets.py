"""Secrets: API keys come only from environment variables, and no file a run writes holds one."""

import json

import httpx
import pytest
from pydantic import ValidationError

from tunebook import paths, servers
from tunebook.cli import main
from tunebook.params import EndpointParams, JudgeParams, TeacherParams, mask_override, mask_secrets

CI = str(paths.project_root() / "params" / "ci.yaml")
KEY_ENV = "TUNEBOOK_TEST_API_KEY"
CANARY = "sk-canary-" + "5d1e0b9f7a3c4e2d"


@pytest.fixture(scope="module")
def keyed_server(tiny_gguf, tmp_path_factory):
    """llama.cpp's server over the tiny model, answering only requests that carry the canary key."""
    log_path = tmp_path_factory.mktemp("keyed-server") / "serve.log"
    with servers.llama_server(tiny_gguf, log_path, "tiny", context_length=4096, api_key=CANARY) as base_url:
        yield base_url


def test_the_keyed_server_refuses_a_request_without_the_key(keyed_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{keyed_server}/chat/completions", json=body, timeout=30).status_code == 401


@pytest.mark.parametrize(
    "fields",
    [
        {"api_key": CANARY},
        {"extra_body": {"api_key": CANARY}},
        {"base_url": f"http://user:{CANARY}@127.0.0.1:8000/v1"},
        {"base_url": f"http://127.0.0.1:8000/v1?key={CANARY}"},
    ],
)
def test_params_refuse_a_key_wherever_it_is_put(fields):
    for section in (TeacherParams, EndpointParams):
        with pytest.raises(ValidationError, match="must not") as caught:
            section.model_validate(
                {"name": "t", "backend": "openai", "model": "m", "base_url": "http://h/v1", **fields}
                if section is TeacherParams
                else {"name": "t", "model": "m", "base_url": "http://h/v1", **fields}
            )
        assert CANARY not in str(caught.value).split("input_value")[0]


# Every word the refused fields and the masked keys were once two lists of, and names that contain one.
SECRET_KEYS = ["api_key", "apikey", "api-key", "key", "token", "access_token", "password", "authorization", "secret"]


@pytest.mark.parametrize("key", [*SECRET_KEYS, "hf_token", "client_secret", "X-Api-Key"])
def test_params_refuse_and_manifests_mask_the_same_secret_looking_keys(key):
    teacher = {"name": "t", "backend": "openai", "model": "m", "base_url": "http://h/v1"}
    with pytest.raises(ValidationError, match="'extra_body.*' must not be in params"):
        TeacherParams.model_validate({**teacher, "extra_body": {key: CANARY}})
    with pytest.raises(ValidationError, match="base_url must not carry credentials"):
        TeacherParams.model_validate({**teacher, "base_url": f"http://h/v1?{key}={CANARY}"})
    assert mask_secrets({"teacher": {key: CANARY}}) == {"teacher": {key: "***"}}
    assert mask_override(f"teacher.{key}={CANARY}") == f"teacher.{key}=***"


def test_names_of_variables_token_counts_and_token_ids_are_neither_refused_nor_masked():
    body = {"stop_token_ids": [128009], "max_tokens": 64}
    teacher = TeacherParams(
        name="t", backend="openai", model="m", base_url="http://h/v1?max_tokens=5", api_key_env=KEY_ENV, extra_body=body
    )
    judge = JudgeParams(backend="openai", model="m", base_url="http://h/v1", api_key_env=KEY_ENV, tokens_per_minute=900)
    for section in (teacher, judge):
        assert mask_secrets(section.model_dump()) == section.model_dump()


def test_a_canary_key_used_by_a_campaign_and_an_evaluation_is_written_nowhere(keyed_server, workdir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, CANARY)
    served = f"name: served, model: tiny, base_url: '{keyed_server}', api_key_env: {KEY_ENV}"
    overrides = [
        f"generate.teachers=[{{name: extractive, backend: extractive, weight: 3}}, {{{served}, backend: openai, "
        "questions: extractive, max_new_tokens: 32}]",
        f"evaluate.endpoints=[{{{served}, extra_body: {{repeat_penalty: 1.0}}}}]",
        f"evaluate.judge={{backend: openai, model: tiny, base_url: '{keyed_server}', api_key_env: {KEY_ENV}, "
        "max_new_tokens: 16}",
    ]
    # What is checked is where the key goes, not the model: a short pre-training and a short SFT will do.
    overrides += ["tiny.steps=20", "sft.trainer.max_steps=10", "sft.trainer.logging_steps=5"]
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["run", CI, "--stages", "ingest,generate,sft,evaluate", *sets]) == 0

    # The key was used: the server answers nothing without it, and it answered the teacher and the judge.
    teachers = json.loads((workdir / "data" / "runs" / "ci" / "generate" / "card.json").read_text())["teachers"]
    assert any(t["teacher"] == "served" and t["requests"] > 0 for t in teachers)
    evaluation = json.loads((workdir / "data" / "runs" / "ci" / "evaluate" / "metrics.json").read_text())
    assert "served" in json.dumps(evaluation)

    # Executed notebooks, HTML reports, manifests, logs, TensorBoard events, caches: every file of the run.
    written = [path for path in workdir.rglob("*") if path.is_file()]
    assert any(p.suffix == ".html" for p in written) and any("tfevents" in p.name for p in written)
    assert [p for p in written if CANARY.encode() in p.read_bytes()] == []
    # What papermill injects names the variable that holds the key, never the key.
    executed = json.loads((workdir / "reports" / "ci" / "01_generate.ipynb").read_text())
    injected = next(c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert KEY_ENV in "".join(injected["source"])
    assert KEY_ENV in json.dumps(executed["metadata"]["papermill"]["parameters"])
