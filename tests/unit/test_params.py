import subprocess
import sys
from pathlib import Path

import pytest

from tunebook import paths, tiny
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
    path = write(tmp_path, "sft:\n  method: lora\n  methd: qlora\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:3: sft.methd: unknown key (did you mean 'method'?)"


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "sft:\n  processes: many\n")
    with pytest.raises(ParamsError, match=r"p.yaml:2: sft.processes: Input should be a valid integer.*'many'"):
        load_params(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "sfft:\n  method: lora\n")
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
    params = load_params(PARAMS / "ci.yaml", ["sft.lora.r=4", "evaluate.models=[base]", "run.id=other"])
    assert params.sft.lora["r"] == 4 and params.evaluate.models == ["base"] and params.run.id == "other"
    with pytest.raises(ParamsError, match=r"^--set sft.methd: unknown key \(did you mean 'method'\?\)$"):
        load_params(PARAMS / "ci.yaml", ["sft.methd=qlora"])
    with pytest.raises(ParamsError, match="expected key.path=value"):
        load_params(PARAMS / "ci.yaml", ["sft.method"])


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "sft:\n  processes: [1,\n")
    with pytest.raises(ParamsError, match=r"p.yaml:\d+: invalid YAML"):
        load_params(path)


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "evaluate:\n  max_new_token: 5\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "evaluate.max_new_token: unknown key (did you mean 'max_new_tokens'?)" in err


def test_stage_parameters_are_what_notebooks_get():
    params = tiny.staged(load_params(PARAMS / "demo.yaml"))  # as a run injects them: `tiny` as a directory
    injected = params.stage_parameters("sft")
    assert injected["run_id"] == "demo" and injected["trainer"] == params.sft.trainer
    assert section("sft", injected) == params.sft
    with pytest.raises(ParamsError, match="sft.processes"):
        section("sft", {**injected, "processes": "x"})
    # A notebook's block gets the same one-line errors as a params file's, naming the key inside the block.
    with pytest.raises(ParamsError) as err:
        section("sft", {**injected, "trainer": {"learning_rate": "fast"}})
    assert str(err.value) == (
        "sft.trainer.learning_rate: Input should be a valid number, unable to parse string as a number (got 'fast')"
    )


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
    no_files = f"ingest.corpus_dir: no files with the extensions .md, txt in {corpus} (it has 1 .png)"
    assert err == f"tunebook: {path}: {no_files}"
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


# --- pass-through blocks: the libraries' own fields -----------------------------------------------------------


@pytest.mark.parametrize(
    "text,line,message",
    [
        (
            "sft:\n  trainer:\n    num_train_epochs: 1\n    learnig_rate: 0.0001\n",
            4,
            "sft.trainer.learnig_rate: unknown SFTConfig field (did you mean 'learning_rate'?)",
        ),
        (
            "sft:\n  lora:\n    lora_alph: 16\n",
            3,
            "sft.lora.lora_alph: unknown LoraConfig field (did you mean 'lora_alpha'?)",
        ),
        (
            "sft:\n  quantization:\n    bnb_4bit_quant_typ: fp4\n",
            3,
            "sft.quantization.bnb_4bit_quant_typ: unknown BitsAndBytesConfig field "
            "(did you mean 'bnb_4bit_quant_type'?)",
        ),
        ("dpo:\n  trainer:\n    betta: 0.2\n", 3, "dpo.trainer.betta: unknown DPOConfig field (did you mean 'beta'?)"),
        (
            "dpo:\n  reward:\n    trainer:\n      max_lenght: 64\n",
            4,
            "dpo.reward.trainer.max_lenght: unknown RewardConfig field (did you mean 'max_length'?)",
        ),
    ],
)
def test_an_unknown_block_key_names_file_line_key_and_the_field_it_resembles(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:{line}: {message}"


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "sft:\n  trainer:\n    per_device_train_batch_size: many\n",
            "sft.trainer.per_device_train_batch_size: Input should be a valid integer, unable to parse string as an "
            "integer (got 'many')",
        ),
        (
            "sft:\n  lora:\n    r: 0.5\n",
            "sft.lora.r: Input should be a valid integer, got a number with a fractional part (got 0.5)",
        ),
        (
            "sft:\n  quantization:\n    bnb_4bit_use_double_quant: maybe\n",
            "sft.quantization.bnb_4bit_use_double_quant: BitsAndBytesConfig refuses it: bnb_4bit_use_double_quant must "
            "be a boolean",
        ),
        (
            "dpo:\n  trainer:\n    precompute_ref_log_probs: sometimes\n",
            "dpo.trainer.precompute_ref_log_probs: Input should be a valid boolean, unable to interpret input "
            "(got 'sometimes')",
        ),
    ],
)
def test_a_block_value_of_the_wrong_type_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:3: {message}"


SETS = "tunebook sets this itself"


@pytest.mark.parametrize(
    "text,message",
    [
        ("sft:\n  trainer:\n    bf16: true\n", f"sft.trainer.bf16: {SETS}: set sft.precision instead"),
        ("sft:\n  trainer:\n    seed: 1\n", f"sft.trainer.seed: {SETS}: set the top-level seed instead"),
        (
            "sft:\n  trainer:\n    assistant_only_loss: false\n",
            f"sft.trainer.assistant_only_loss: {SETS}: the loss follows sft.chat_template (tunebook.chat) and sft.task",
        ),
        ("sft:\n  lora:\n    task_type: SEQ_CLS\n", f"sft.lora.task_type: {SETS}: an SFT adapter is CAUSAL_LM"),
        (
            "sft:\n  lora:\n    trainable_token_indices: [1]\n",
            f"sft.lora.trainable_token_indices: {SETS}: the rows of the tokens sft.chat_template adds are trained "
            "(tunebook.chat)",
        ),
        ("dpo:\n  trainer:\n    fp16: true\n", f"dpo.trainer.fp16: {SETS}: set dpo.precision instead"),
        (
            "dpo:\n  reward:\n    lora:\n      modules_to_save: [score]\n",
            f"dpo.reward.lora.modules_to_save: {SETS}: the reward model saves its score head beside the LoRA weights",
        ),
    ],
)
def test_a_block_key_tunebook_sets_itself_is_refused_saying_what_to_set(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:{text.count(chr(10))}: {message}"


def test_a_key_that_moved_into_a_block_says_where_it_went(tmp_path):
    path = write(tmp_path, "sft:\n  method: lora\n  epochs: 3\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    moved = "moved to sft.trainer.num_train_epochs, under the library's own name"
    assert str(err.value) == f"{path}:3: sft.epochs: {moved}"
    with pytest.raises(ParamsError, match=r"^--set dpo.reward.lora_r: moved to dpo.reward.lora.r, under"):
        load_params(PARAMS / "ci.yaml", ["dpo.reward.lora_r=4"])


def test_a_renamed_key_says_its_new_name(tmp_path):
    path = write(tmp_path, "generate:\n  max_answer_chars: 250\n")
    with pytest.raises(
        ParamsError, match=rf"^{path}:2: generate.max_answer_chars: renamed generate.extractive_answer_"
    ):
        load_params(path)
    assert (
        load_params(PARAMS / "ci.yaml", ["generate.extractive_answer_chars=250"]).generate.extractive_answer_chars
        == 250
    )
    with pytest.raises(ParamsError, match=r"^--set evaluate.n_worst: renamed evaluate.changed_most"):
        load_params(PARAMS / "ci.yaml", ["evaluate.n_worst=3"])


def test_set_reaches_into_a_block_and_its_errors_name_the_set_key():
    params = load_params(PARAMS / "ci.yaml", ["sft.trainer.learning_rate=1e-4", "sft.lora.target_modules=[q_proj]"])
    assert params.sft.trainer["learning_rate"] == 1e-4  # YAML reads 1e-4 as a string: stored as SFTConfig's float
    assert params.sft.trainer["num_train_epochs"] == 20 and params.sft.lora["target_modules"] == ["q_proj"]
    with pytest.raises(ParamsError) as err:
        load_params(PARAMS / "ci.yaml", ["sft.trainer.learnig_rate=1e-4"])
    assert str(err.value) == "--set sft.trainer.learnig_rate: unknown SFTConfig field (did you mean 'learning_rate'?)"
    with pytest.raises(ParamsError) as err:
        load_params(PARAMS / "ci.yaml", ["dpo.trainer.beta=strong"])
    assert str(err.value) == (
        "--set dpo.trainer.beta: Input should be a valid number, unable to parse string as a number (got 'strong')"
    )


def test_set_reaches_a_list_item_by_its_name_or_index(tmp_path):
    params = load_params(PARAMS / "ci.yaml", ["generate.teachers.tiny-chat.weight=5", "generate.teachers.0.weight=2"])
    assert [(t.name, t.weight) for t in params.generate.teachers] == [("extractive", 2), ("tiny-chat", 5)]
    params = load_params(PARAMS / "demo.yaml", ["evaluate.checks.signature.ignore_case=true"])
    assert params.evaluate.checks[0].ignore_case
    with pytest.raises(ParamsError) as err:
        load_params(PARAMS / "ci.yaml", ["generate.teachers.gpt.max_new_tokens=256"])
    assert str(err.value) == (
        "--set generate.teachers.gpt.max_new_tokens: generate.teachers has no item named 'gpt' "
        "(its names: extractive, tiny-chat)"
    )
    with pytest.raises(ParamsError) as err:
        load_params(PARAMS / "ci.yaml", ["generate.teachers.tiny-chat.max_new_tokens=many"])
    assert str(err.value) == (
        "--set generate.teachers.tiny-chat.max_new_tokens: Input should be a valid integer, unable to parse string "
        "as an integer (got 'many')"
    )
    # A list the file leaves out is reached among its default items.
    path = write(tmp_path, "ingest:\n  stdlib_modules: [json]\n")
    [teacher] = load_params(path, ["generate.teachers.extractive.weight=2"]).generate.teachers
    assert (teacher.name, teacher.weight) == ("extractive", 2)


def test_blocks_merge_over_one_set_of_real_model_defaults(tmp_path):
    from tunebook.params import (
        DPO_TRAINER_DEFAULTS,
        REWARD_LORA_DEFAULTS,
        REWARD_TRAINER_DEFAULTS,
        SFT_LORA_DEFAULTS,
        SFT_QUANTIZATION_DEFAULTS,
        SFT_TRAINER_DEFAULTS,
        SftParams,
        demo_scale,
    )

    path = write(
        tmp_path, "ingest:\n  stdlib_modules: [json]\nsft:\n  trainer:\n    learning_rate: 0.0001\n  lora:\n    r: 8\n"
    )
    params = load_params(path)
    assert params.sft.trainer == {**SFT_TRAINER_DEFAULTS, "learning_rate": 1e-4}
    assert params.sft.lora == {**SFT_LORA_DEFAULTS, "r": 8} and params.sft.quantization == SFT_QUANTIZATION_DEFAULTS
    assert params.dpo.trainer == DPO_TRAINER_DEFAULTS
    assert (params.dpo.reward.trainer, params.dpo.reward.lora) == (REWARD_TRAINER_DEFAULTS, REWARD_LORA_DEFAULTS)
    assert SftParams().trainer == SFT_TRAINER_DEFAULTS  # a notebook or a test without a block
    # Validating again (a notebook's parameters, a worker process) changes nothing.
    assert SftParams.model_validate(params.sft.model_dump()) == params.sft
    # transformers' deprecated alias, given: the new name's default must not win over it.
    aliased = SftParams(trainer={"gradient_checkpointing": True}).trainer
    assert aliased["gradient_checkpointing"] is True and "activation_checkpointing" not in aliased
    # The real-model defaults are not demo-scale; the demo's settings are, and say so.
    assert demo_scale(SFT_TRAINER_DEFAULTS) == []
    assert demo_scale(load_params(PARAMS / "demo.yaml").sft.trainer) == ["learning_rate 0.003", "num_train_epochs 10"]
    assert "DEMO-SCALE" in (PARAMS / "demo.yaml").read_text() and "DEMO-SCALE" in (PARAMS / "ci.yaml").read_text()


def test_every_default_is_a_field_of_its_class_with_a_value_of_its_type():
    from tunebook import recipe
    from tunebook.params import DPO_BLOCKS, REWARD_BLOCKS, SFT_BLOCKS

    for blocks in (SFT_BLOCKS, DPO_BLOCKS, REWARD_BLOCKS):
        for block in blocks.values():
            assert recipe.check(block, block.defaults) == block.defaults, block.name


def test_params_validate_without_importing_the_training_libraries():
    code = (
        "import sys\nfrom tunebook.params import DpoParams, SftParams\nSftParams(); DpoParams()\n"
        "loaded = {'torch', 'transformers', 'trl', 'peft'} & set(sys.modules)\nassert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
