"""GGUF export: llama.cpp's converter, a tokenizer check that catches what the converter gets silently wrong,
logits and answers compared with base + adapter, the parity gate, the Ollama Modelfile, and llama.cpp's
server run through the evaluate module."""

import importlib.metadata
import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tunebook import evaluate, export, gguf, models, registry, runner
from tunebook.params import ExportParams, Params

PROMPTS = [
    [{"role": "user", "content": "What does json.dumps return?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "How do I use bisect.insort?"}],
    [
        {"role": "user", "content": "What is item 3?"},
        {"role": "assistant", "content": "Item 3 is a number."},
        {"role": "user", "content": "And  item 4 (with\ttabs, é and <|im_end|> as text)?"},
    ],
]
ANSWERS = ["It returns a JSON string.", "Call bisect.insort(a, x).", "Item 4 is a number too."]

LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def reference(tiny_model, lora_adapter):
    return models.load_model("sft", tiny_model, lora_adapter)


@pytest.fixture(scope="module")
def merged_dir(tiny_model, lora_adapter, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged"
    return export.save_merged(
        export.merge(tiny_model, lora_adapter), reference.tokenizer, out, [lora_adapter, tiny_model]
    )


def test_the_tiny_models_gguf_reads_its_tokenizer_as_transformers_does(tiny_model, tiny_gguf):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    checked = gguf.check_tokenizer(tiny_gguf, tokenizer, PROMPTS, models.end_ids(tokenizer))
    assert checked["prompts tokenized alike"] == len(PROMPTS) and checked["stops at"] == ["<|im_end|>"]
    assert checked["adds BOS"] is False


def test_a_merged_gguf_computes_what_base_plus_adapter_computes(merged_dir, reference, tmp_path):
    # What the converter needs beside the weights, and transformers 5 no longer writes: the SentencePiece
    # model, whether BOS is added, and which tokens are special.
    config = json.loads((merged_dir / "tokenizer_config.json").read_text())
    assert (merged_dir / "tokenizer.model").is_file() and config["add_bos_token"] is False
    assert {t["content"] for t in config["added_tokens_decoder"].values() if t["special"]} >= {
        "<|im_start|>",
        "<|im_end|>",
    }
    stops = models.end_ids(reference.tokenizer)
    agreement = {}
    for outtype in ("f16", "q8_0"):
        path = gguf.convert(merged_dir, outtype, tmp_path / f"m-{outtype}.gguf")
        gguf.check_tokenizer(path, reference.tokenizer, PROMPTS, stops)
        agreement[outtype] = gguf.logit_agreement(path, reference, PROMPTS, ANSWERS, context_length=256)
    # Teacher-forced on real text, f16 is the same function up to half-precision rounding; q8_0 rounds more.
    assert agreement["f16"]["max_logit_diff"] < 0.05 and agreement["f16"]["top1_agreement"] >= 0.99
    assert agreement["f16"]["max_logit_diff"] < agreement["q8_0"]["max_logit_diff"]
    answers = gguf.generate(tmp_path / "m-f16.gguf", PROMPTS, 16, context_length=256, progress=False)
    expected = models.generate(reference, PROMPTS, 16, batch_size=4, progress=False)
    assert [a.text for a in answers] == [e.text for e in expected]


def test_a_tokenizer_saved_as_transformers_saves_it_is_caught_before_any_answer(merged_dir, reference, tmp_path):
    # transformers 5's save_pretrained alone: no tokenizer.model, no add_bos_token, no special-token map. The
    # converter succeeds and says nothing, and llama.cpp then tokenizes every prompt differently.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (bare / name).write_bytes((merged_dir / name).read_bytes())
    reference.tokenizer.save_pretrained(str(bare))
    path = gguf.convert(bare, "f16", tmp_path / "bare.gguf")
    with pytest.raises(gguf.GGUFError, match="llama.cpp (tokenizes the prompt|adds the BOS)"):
        gguf.check_tokenizer(path, reference.tokenizer, PROMPTS, models.end_ids(reference.tokenizer))


def test_a_bos_the_model_never_saw_is_caught(merged_dir, reference, tmp_path):
    with_bos = tmp_path / "with-bos"
    with_bos.mkdir()
    for source in merged_dir.iterdir():
        (with_bos / source.name).write_bytes(source.read_bytes())
    config = json.loads((with_bos / "tokenizer_config.json").read_text())
    (with_bos / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    path = gguf.convert(with_bos, "f16", tmp_path / "with-bos.gguf")
    with pytest.raises(gguf.GGUFError, match="llama.cpp adds the BOS token that transformers omits"):
        gguf.check_tokenizer(path, reference.tokenizer, PROMPTS, models.end_ids(reference.tokenizer))


def test_a_failed_conversion_quotes_its_log_and_leaves_no_file(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    with pytest.raises(gguf.GGUFError, match="llama.cpp's converter failed on .*broken"):
        gguf.convert(broken, "f16", tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out.log"]


def test_a_missing_converter_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf.CONVERTER_ENV, str(tmp_path / "convert_hf_to_gguf.py"))
    with pytest.raises(gguf.GGUFError, match="`make install` fetches it"):
        gguf.convert(tmp_path, "f16", tmp_path / "out.gguf")


def test_the_modelfile_template_renders_the_chat_template_and_stops_at_the_end_of_turn(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = gguf.modelfile("m-q8_0.gguf", tokenizer, models.end_ids(tokenizer), 256)
    assert gguf.chat_format(tokenizer).name == "chatml"
    lines = text.splitlines()
    assert "FROM ./m-q8_0.gguf" in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER repeat_penalty 1" in lines and "PARAMETER temperature 0" in lines
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}' in text


def test_a_llama3_template_is_recognised_and_an_unknown_one_refused(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    tokenizer.bos_token = "<|begin_of_text|>"
    assert gguf.chat_format(tokenizer).name == "llama3"
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}Assistant:"
    with pytest.raises(gguf.GGUFError, match="matches none of the formats"):
        gguf.chat_format(tokenizer)


def test_parity_gates_the_chosen_outputs_and_reports_the_rest():
    items = pd.DataFrame({"id": ["a", "b", "c", "d"], "question": list("qrst"), "reference": ["x y", "y z", "z", "w"]})
    evaluated = [models.Generation(t, True) for t in ["x y", "y", "z", "w"]]
    drifted = [models.Generation(t, True) for t in ["x y", "y", "z", "v"]]  # 3 of 4 alike
    result = gguf.parity(items, evaluated, {"f16": evaluated, "q8_0": drifted}, {"f16"}, min_agreement=0.95)
    table = result.table.set_index("output")
    assert table.loc["f16", "identical"] == 4 and table.loc["q8_0", "agreement"] == 0.75
    assert result.ok and table.loc["q8_0", "gate"] == "reported" and table.loc["f16", "f1 Δ"] == "+0.0 [+0.0, +0.0]"
    assert result.differing[["output", "question"]].values.tolist() == [["q8_0", "t"]]
    result.require()
    gated = gguf.parity(items, evaluated, {"q8_0": drifted}, {"q8_0"}, min_agreement=0.95)
    with pytest.raises(gguf.GGUFError, match="q8_0 answers 1 of 4 prompts differently"):
        gated.require()


@pytest.mark.parametrize(
    ("override", "message"),
    [({"gguf": ["f16", "f16"]}, "lists a type twice"), ({"gguf": ["f16"], "modelfile": "q8_0"}, "not among")],
)
def test_export_params_are_checked(override, message):
    with pytest.raises(ValueError, match=message):
        ExportParams(**override)


def test_the_evaluate_module_runs_against_llama_cpp_serving_the_export(
    tiny_model, lora_adapter, reference, merged_dir, tiny_gguf, tmp_path
):
    rows = [
        {"id": f"t{i}", "messages": [*prompt, {"role": "assistant", "content": answer}]}
        for i, (prompt, answer) in enumerate(zip([p[-1:] for p in PROMPTS], ANSWERS, strict=True))
    ]
    items = evaluate.test_items(rows, evaluate.EvaluateParams())
    prompts = evaluate.conversations(items, None, evaluate.EvaluateParams())
    inputs = export.Shipment("sft", tiny_model, Path(lora_adapter), reference, items, prompts)
    registry.register("t", "sft", {"base_model": str(tiny_model), "adapter": str(lora_adapter)})
    params = ExportParams(max_new_tokens=16, gguf=["f16"], modelfile=None)
    check = export.verify_merge(export.merge(tiny_model, lora_adapter), reference, prompts, 16)
    registered = export.register("t", inputs, merged_dir, check)
    files, _ = export.write_gguf(merged_dir, tmp_path, inputs, params)
    served = export.served_evaluation("t", registered, files, inputs, params, 256, tmp_path / "serve.log")
    assert set(served.summary["system"]) == {registered, export.SERVED}
    assert "POST /v1/chat/completions" in (tmp_path / "serve.log").read_text()
    result = export.parity(inputs, check, {}, served, registered, params)
    assert result.table["output"].tolist() == ["merged · transformers", "f16 · llama.cpp server"]
    assert result.ok and (result.table["identical"] == len(PROMPTS)).all()
    # Another GGUF exported under the same name (another run's) is asked, not answered from this one's cache.
    export.served_evaluation("t", registered, {"f16": tiny_gguf}, inputs, params, 256, tmp_path / "again.log")
    assert (tmp_path / "again.log").read_text().count("POST /v1/chat/completions") == len(PROMPTS)


def test_another_llama_cpp_reruns_the_export():
    hashes = runner.input_hashes(Params(), "export", {})
    assert hashes["llama-cpp-python"] == importlib.metadata.version("llama-cpp-python")
