import subprocess
import sys
from pathlib import Path

import pytest

from tunebook import paths
from tunebook.cli import main
from tunebook.params import ParamsError, load_params, mask_override, mask_secrets, section

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


def test_a_corpus_without_corpus_files_is_refused_up_front(tmp_path, capsys):
    corpus = tmp_path / "docs"
    (corpus / ".ipynb_checkpoints").mkdir(parents=True)
    (corpus / ".ipynb_checkpoints" / "notes-checkpoint.md").write_text("# hidden copies are not documents\n")
    (corpus / "photo.png").write_bytes(b"\x89PNG\r\n")
    path = write(tmp_path, f"ingest:\n  corpus_dir: {corpus}\n  extensions: [.md, txt]\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tunebook: {path}: ingest.corpus_dir: no files with the extensions .md, txt in {corpus}"
    (corpus / "notes.TXT").write_text("a document\n")
    assert load_params(path).ingest.corpus_dir == str(corpus)


def base_model_params(tmp_path: Path, model_dir: Path) -> Path:
    return write(tmp_path, f"ingest:\n  stdlib_modules: [json]\nsft:\n  base_model: {model_dir}\n")


def test_pickle_only_base_model_is_refused_unless_allowed(tmp_path, pickled_model, monkeypatch, capsys):
    monkeypatch.delenv("TUNEBOOK_ALLOW_PICKLE", raising=False)
    path = base_model_params(tmp_path, pickled_model)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"tunebook: {path}: sft.base_model: {pickled_model} holds pickle weights")
    assert "convert them to safetensors, or set TUNEBOOK_ALLOW_PICKLE=1" in err
    monkeypatch.setenv("TUNEBOOK_ALLOW_PICKLE", "1")
    assert load_params(path).sft.base_model == str(pickled_model)


def test_pickles_beside_safetensors_are_not_loaded_so_not_refused(tmp_path, pickled_model):
    (pickled_model / "model.safetensors").write_bytes(b"")
    assert load_params(base_model_params(tmp_path, pickled_model)).sft.base_model == str(pickled_model)


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_custom_code_model_is_refused_unless_trusted(tmp_path, monkeypatch, config_file):
    monkeypatch.delenv("TUNEBOOK_TRUST_REMOTE_CODE", raising=False)
    model_dir = tmp_path / "custom"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"")
    (model_dir / config_file).write_text('{"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}')
    teacher = f"{{name: t, backend: hf, model: {model_dir}}}"
    path = write(tmp_path, f"ingest:\n  stdlib_modules: [json]\ngenerate:\n  teachers: [{teacher}]\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == (
        f"{path}: generate.teachers.0.model: {model_dir / config_file} has an auto_map: loading the model would "
        "run its own Python code; set TUNEBOOK_TRUST_REMOTE_CODE=1 if you trust it"
    )
    monkeypatch.setenv("TUNEBOOK_TRUST_REMOTE_CODE", "1")
    assert load_params(path).generate.teachers[0].model == str(model_dir)


@pytest.mark.parametrize("corpus_dir", ["../elsewhere", "data/../corpus", "/tmp/tunebook-corpus"])
def test_the_demo_corpus_is_not_written_outside_data_and_reports(tmp_path, corpus_dir):
    path = write(tmp_path, f"ingest:\n  corpus_dir: {corpus_dir}\n  stdlib_modules: [json]\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ingest.corpus_dir: the demo corpus (ingest.stdlib_modules) would be written")
    assert message.endswith("; set run.allow_outside_paths: true to allow it")
    allowed = write(tmp_path, f"run:\n  allow_outside_paths: true\n{path.read_text()}")
    assert load_params(allowed).ingest.corpus_dir == corpus_dir


@pytest.mark.parametrize("corpus_dir", ["data/corpus", "reports/corpus", "data"])
def test_the_demo_corpus_may_go_under_data_or_reports(tmp_path, corpus_dir):
    path = write(tmp_path, f"ingest:\n  corpus_dir: {corpus_dir}\n  stdlib_modules: [json]\n")
    assert load_params(path).ingest.corpus_dir == corpus_dir


def test_help_and_a_bad_command_line_answer_without_loading_torch():
    code = "import sys\nfrom tunebook.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules and 'papermill' not in sys.modules, 'imported'"
    for args in (["--help"], ["run"], ["nope"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_overrides_are_recorded_with_secret_looking_values_masked():
    assert mask_override("teacher.api_key=sk-123") == "teacher.api_key=***"
    assert mask_override("x.client_secret=abc=def") == "x.client_secret=***"
    # numbers and key names that only count or name things stay readable
    assert mask_override("generate.tokens_per_minute=3000") == "generate.tokens_per_minute=3000"
    assert mask_override("generate.api_key_env=MY_KEY") == "generate.api_key_env=MY_KEY"
    assert mask_secrets({"tokens_per_minute": 3000}) == {"tokens_per_minute": 3000}
