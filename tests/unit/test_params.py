from pathlib import Path

import pytest

from tunebook import paths
from tunebook.cli import main
from tunebook.params import ParamsError, load_params, mask_secrets, section

PARAMS = paths.project_root() / "params"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "ci.yaml", "examples/llama3-8b-qlora.yaml"])
def test_shipped_params_validate(name, checkout_workdir):
    params = load_params(PARAMS / name)
    assert params.run.id


def test_unknown_key_names_file_line_key_and_suggestion(tmp_path):
    path = write(tmp_path, "sft:\n  lora_r: 8\n  lora_rr: 4\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:3: sft.lora_rr: unknown key (did you mean 'lora_r'?)"


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "sft:\n  lora_r: many\n")
    with pytest.raises(ParamsError, match=r"p.yaml:2: sft.lora_r: Input should be a valid integer.*'many'"):
        load_params(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "sfft:\n  lora_r: 8\n")
    with pytest.raises(ParamsError, match=r":1: sfft: unknown key \(did you mean 'sft'\?\)"):
        load_params(path)


def test_missing_corpus_dir(tmp_path):
    path = write(tmp_path, "ingest:\n  corpus_dir: nowhere\n")
    with pytest.raises(ParamsError, match="ingest.corpus_dir: no such directory"):
        load_params(path)


def test_missing_local_base_model(tmp_path):
    path = write(tmp_path, "ingest:\n  stdlib_modules: [json]\nsft:\n  base_model: ./models/mine\n")
    with pytest.raises(ParamsError, match="sft.base_model: no such model directory"):
        load_params(path)


def test_hub_id_is_accepted_offline(tmp_path):
    path = write(tmp_path, "ingest:\n  stdlib_modules: [json]\nsft:\n  base_model: Qwen/Qwen2.5-0.5B-Instruct\n")
    assert load_params(path).sft.base_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_set_overrides_are_typed_and_validated():
    params = load_params(PARAMS / "ci.yaml", ["sft.lora_r=4", "evaluate.models=[base]", "run.id=other"])
    assert params.sft.lora_r == 4 and params.evaluate.models == ["base"] and params.run.id == "other"
    with pytest.raises(ParamsError, match=r"^--set sft.lora_rr: unknown key \(did you mean 'lora_r'\?\)$"):
        load_params(PARAMS / "ci.yaml", ["sft.lora_rr=4"])
    with pytest.raises(ParamsError, match="expected key.path=value"):
        load_params(PARAMS / "ci.yaml", ["sft.lora_r"])


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "sft:\n  lora_r: [1,\n")
    with pytest.raises(ParamsError, match=r"p.yaml:\d+: invalid YAML"):
        load_params(path)


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "evaluate:\n  max_new_token: 5\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "evaluate.max_new_token: unknown key (did you mean 'max_new_tokens'?)" in err


def test_stage_parameters_are_what_notebooks_get():
    params = load_params(PARAMS / "demo.yaml")
    injected = params.stage_parameters("sft")
    assert injected["run_id"] == "demo" and injected["lora_r"] == params.sft.lora_r
    assert section("sft", injected) == params.sft
    with pytest.raises(ParamsError, match="sft.lora_r"):
        section("sft", {**injected, "lora_r": "x"})


def test_secrets_are_masked():
    masked = mask_secrets({"openai": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY"}, "max_new_tokens": 5})
    assert masked == {"openai": {"api_key": "***", "api_key_env": "OPENAI_API_KEY"}, "max_new_tokens": 5}
