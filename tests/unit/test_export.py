"""Export: a merge that is checked against base + adapter, a generation config that stops, inference isolation."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tunebook import export, models

PROMPTS = [[{"role": "user", "content": f"What is item {i}?"}] for i in range(6)] + [
    [{"role": "user", "content": "What does json.dumps return?"}]
]


@pytest.fixture(scope="module")
def reference(tiny_model, lora_adapter):
    return models.load_model("sft", tiny_model, lora_adapter)


def test_a_merge_is_checked_against_base_plus_adapter_and_passes(tiny_model, lora_adapter, reference):
    merged = export.merge(tiny_model, lora_adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert any(not torch.equal(p, q) for p, q in zip(merged.parameters(), base.parameters(), strict=True))
    check = export.verify_merge(merged, reference, PROMPTS, max_new_tokens=16)
    assert check.ok and check.max_logit_diff < 1e-4 and check.greedy_identical == len(PROMPTS)
    export.require(check)


def test_a_corrupted_merge_is_caught_and_blocks_the_export(tiny_model, lora_adapter, reference):
    merged = export.merge(tiny_model, lora_adapter)
    with torch.no_grad():  # what a merge into rounded weights does: every weight of one layer a little off
        weight = merged.model.layers[0].mlp.down_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    check = export.verify_merge(merged, reference, PROMPTS, max_new_tokens=16)
    assert not check.ok and check.max_logit_diff > 1e-3
    with pytest.raises(export.ExportError, match="the merged model is not base \\+ adapter"):
        export.require(check)


def test_merging_into_a_4_bit_base_is_refused(tiny_model):
    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    )
    with pytest.raises(export.ExportError, match="refusing to merge into a 4-bit base"):
        export.refuse_quantized(quantized)


def test_the_merged_model_stops_at_the_end_of_its_turn(tiny_model, lora_adapter, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(lora_adapter)
    out = export.save_merged(export.merge(tiny_model, lora_adapter), tokenizer, tmp_path / "merged", [lora_adapter])
    config = json.loads((out / "generation_config.json").read_text())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in (config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]])
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_the_adapter_export_leaves_pickles_behind(lora_adapter, tmp_path):
    assert (lora_adapter / "training_args.bin").exists()  # what the trainer writes beside the adapter
    out = export.save_adapter(lora_adapter, tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").exists() and not (out / "training_args.bin").exists()
    table = export.files_table(out)
    assert (
        set(table["file"]) >= {"adapter_model.safetensors", "adapter_config.json"}
        and table["sha256"].str.len().eq(64).all()
    )


def test_loading_serving_and_exporting_import_no_trainer():
    code = (
        "import sys, tunebook.models, tunebook.export, tunebook.gguf, tunebook.evaluate, tunebook.servers, "
        "tunebook.reward; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'trl' or m in ('tunebook.sft', 'tunebook.dpo')"
        " or m.startswith('peft.tuners') and 'training' in m))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
