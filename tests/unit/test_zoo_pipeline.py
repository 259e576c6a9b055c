"""Every family of the zoo through the stages a real model goes through: SFT with its stock chat template,
evaluate, DPO, RL and the export's merge check, GGUF and Ollama Modelfile, through tunebook's own stage code.

The zoo's models are random and only a few steps trained, so nothing here is about quality: it is about
templates, special tokens, end-of-turn ids, added vocabulary and the hand-over between stages.
"""

import json
import shutil
from pathlib import Path

import pytest
from test_chat import STOCK
from test_generate import extractive_only, run, stdlib_chunks
from transformers import AutoTokenizer, GenerationConfig
from zoo import FAMILIES

from tunebook import chunking, dpo, evaluate, export, gguf, models, paths, registry, rl
from tunebook.params import ChromaParams, DpoParams, EvaluateParams, ExportParams, RewardParams, RlParams, SftParams
from tunebook.sft import register_model, train_sft, training_data

RUN = "zoo"
# Tokenizers llama.cpp's converter takes offline: the zoo's Qwen2.5 tokenizer is a byte-level BPE whose
# pre-tokenizer the converter knows only by the hash of the real Qwen vocabulary.
CONVERTIBLE = ("llama3", "gemma", "mistral", "phi3")
REWARD = RewardParams(
    held_out_fraction=0.25, trainer={"max_steps": 2, "max_length": 192, "per_device_train_batch_size": 4}
)
FEW_STEPS = {
    "max_steps": 6,
    "learning_rate": 5e-3,
    "per_device_train_batch_size": 8,
    "max_length": 192,
    "logging_steps": 1,
    "save_steps": 100,
    "eval_steps": 100,
}


@pytest.fixture(scope="module")
def run_data(tmp_path_factory) -> Path:
    """A run's ingest/ and generate/ stages on two stdlib modules, written once and copied into each workdir."""
    from tunebook import generate
    from tunebook.dataset import write_dataset

    root = tmp_path_factory.mktemp("zoo-run")
    chunks = stdlib_chunks(root, ("json", "bisect"))
    chunking.write_chunks(chunks, root / "ingest" / "chunks.jsonl")
    params = extractive_only(val_fraction=0.1, test_fraction=0.2)
    campaign = run(generate.plan_jobs(chunks, params), params, root / "generate")
    write_dataset(generate.build_dataset(campaign.records, chunks, params), root / "generate", RUN)
    return root


def stage_inputs(run_data: Path) -> None:
    for stage in ("ingest", "generate"):
        shutil.copytree(run_data / stage, paths.stage_dir(RUN, stage), dirs_exist_ok=True)


def sft(family_dir: Path, **overrides) -> str:
    params = SftParams(base_model=str(family_dir), trainer=FEW_STEPS, precision="fp32", **overrides)
    chunks = chunking.read_chunks(paths.stage_dir(RUN, "ingest") / "chunks.jsonl")
    data = training_data(params, paths.stage_dir(RUN, "generate"), chunks)
    result = train_sft(params, str(family_dir), data, paths.stage_dir(RUN, "sft"), seed=0, progress=False)
    return register_model(RUN, result, params, data)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stock_model_goes_through_sft_evaluate_dpo_rl_and_export(family, zoo, run_data, workdir):
    stage_inputs(run_data)
    source, loss, turn_end = STOCK[family]
    name = sft(zoo(family))
    entry = registry.entries()[name]
    assert entry["chat_template"]["source"] == source and entry["chat_template"]["loss"] == loss
    sft_tokenizer = AutoTokenizer.from_pretrained(entry["adapter"])
    stock = AutoTokenizer.from_pretrained(zoo(family))
    prompt = [{"role": "user", "content": "What does json.dumps return?"}]
    # The saved template prompts the model exactly as its stock template does.
    assert sft_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) == (
        stock.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    )
    stops = models.end_ids(sft_tokenizer)
    assert stops[0] == sft_tokenizer.convert_tokens_to_ids(turn_end) and sft_tokenizer.eos_token_id in stops

    # evaluate: base and SFT answer the test items through the one template
    eval_params = EvaluateParams(models=["base", "sft"], conditions=["closed_book"], max_new_tokens=12, max_examples=8)
    items = evaluate.inputs(RUN, eval_params, ChromaParams())
    evaluation = evaluate.evaluate_models(items.items, eval_params, RUN, None, items.train_texts, progress=False)
    assert set(evaluation.models["chat template"]) == {evaluate.template_id(sft_tokenizer.chat_template)}
    assert sorted(evaluation.summary["system"]) == ["base", "sft"]

    # DPO: pairs from the SFT model's samples, then TRL's DPO on its adapter
    dpo_params = DpoParams(
        strategies=["sample_judge"],
        prompts=24,
        candidates=4,
        max_new_tokens=12,
        trainer={
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "max_length": 192,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        },
        precision="fp32",
        val_fraction=0.0,
        reward=REWARD,
    )
    inputs = dpo.inputs(RUN, dpo_params, seed=0)
    results = dpo.build_pairs(inputs, dpo_params, seed=0, progress=False)
    # The reward model reads conversations through the same template, and ranks the candidates again.
    reward_model = dpo.train_reward(results, inputs, dpo_params, paths.stage_dir(RUN, "dpo"), 0, progress=False)
    assert AutoTokenizer.from_pretrained(reward_model.adapter_dir).chat_template == sft_tokenizer.chat_template
    rescored = dpo.rescore(results, dpo_params, reward_model, inputs.base_model, seed=0)
    assert rescored["sample_judge"].candidates["score"].notna().all()
    card = dpo.write_pairs(results, paths.stage_dir(RUN, "dpo"), dpo.template_hash(inputs.policy), dpo_params, 0)
    del inputs
    result = dpo.train_dpo(dpo_params, RUN, paths.stage_dir(RUN, "dpo"), paths.stage_dir(RUN, "dpo"), 0, False)
    dpo.register_model(RUN, result, dpo_params, card)

    # RL: GRPO on the DPO adapter, its rollouts through the template and stopped at the family's end of turn
    rl_params = RlParams(
        prompts=8,
        rewards=[{"name": "rouge_l", "kind": "rouge_l"}, {"name": "format", "kind": "format"}],
        batch_size=8,
        precision="fp32",
        trainer={"num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 12, "max_steps": 2},
    )
    trained = rl.train_rl(rl_params, RUN, rl.train_prompts(RUN, rl_params, 0), paths.stage_dir(RUN, "rl"), 0, False)
    assert trained.history["kl"].notna().all() and len(trained.rollouts.batches) == 2
    rl.register_model(RUN, trained, rl_params, rl.train_prompts(RUN, rl_params, 0))

    # export: merge checked against base + adapter, the generation config stops at every end id
    export_params = ExportParams(
        model="rl", verify_prompts=6, max_new_tokens=8, gguf=["f32"], modelfile="f32", min_agreement=0.8
    )
    exported = export.inputs(RUN, export_params)
    merged, check = export.merge_and_verify(exported, export_params)
    assert check.ok
    out_dir = paths.stage_dir(RUN, "export")
    merged_dir = export.save_merged(
        merged, exported.reference.tokenizer, out_dir / "merged", [exported.adapter_dir, exported.base_model]
    )
    export.register(RUN, exported, merged_dir, check)
    stages = ("sft", "dpo", "rl", "export")
    recorded = {stage: registry.entries()[f"{RUN}:{stage}"]["chat_template"] for stage in stages}
    assert recorded["sft"] == recorded["dpo"] == recorded["rl"] == recorded["export"]  # one template, every model
    saved = GenerationConfig.from_pretrained(merged_dir).eos_token_id
    assert set(saved if isinstance(saved, list) else [saved]) == set(stops)
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template == sft_tokenizer.chat_template

    # GGUF: llama.cpp's converter, its tokenizer checked against transformers', answers against the evaluated
    # model's, and an Ollama Modelfile; or, for a tokenizer the converter cannot take, its error and no file.
    if family not in CONVERTIBLE:
        with pytest.raises(gguf.GGUFError, match=r"(?s)converter failed.*pre-tokenizer was not recognized"):
            export.write_gguf(merged_dir, out_dir / "gguf", exported, export_params)
        assert not list((out_dir / "gguf").glob("*.gguf*"))
        return
    files, tokenizer_checks = export.write_gguf(merged_dir, out_dir / "gguf", exported, export_params)
    assert list(tokenizer_checks["chat template"]) == ["identical"]
    context = export.context_length(merged_dir)
    answers = export.gguf_answers(files, exported, export_params, context)
    parity = export.parity(exported, check, answers, None, f"{RUN}:export", export_params)
    parity.require()
    modelfile = export.write_modelfile(files, exported, export_params, context).read_text()
    assert f'PARAMETER stop "{turn_end}"' in modelfile


def test_a_base_model_without_a_template_gets_chatml_and_trains_its_new_tokens(zoo, run_data, workdir):
    """auto on a base without a template: ChatML, whose <|im_start|> and <|im_end|> the vocabulary lacks,
    so they are added, the embeddings resized and their rows trained; every later stage loads the base
    resized for them."""
    stage_inputs(run_data)
    name = sft(zoo("mistral", chat_template=None))
    entry = registry.entries()[name]
    assert entry["chat_template"]["source"] == "tunebook:chatml"
    assert entry["chat_template"]["added_tokens"] == ["<|im_end|>", "<|im_start|>"]
    adapter = Path(entry["adapter"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    new_ids = AutoTokenizer.from_pretrained(adapter).convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert config["trainable_token_indices"] == new_ids  # their input-embedding rows, as TRL trains them
    loaded = models.load_model("sft", entry["base_model"], adapter)
    tokenizer = loaded.tokenizer
    assert loaded.model.config.vocab_size == len(tokenizer)  # the base, resized for the new tokens
    assert models.end_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    base = registry.resolve("base", RUN)
    assert models.load_model("base", base["base_model"], None, base["tokenizer"]).tokenizer.chat_template
    # The export merges the adapter, new token rows included, into the base resized for them, and checks it.
    params = ExportParams(model="sft", verify_prompts=4, max_new_tokens=6, gguf=[], modelfile=None)
    merged, check = export.merge_and_verify(export.inputs(RUN, params), params)
    assert check.ok and merged.get_input_embeddings().num_embeddings == len(tokenizer)
    from tunebook.reward import _classifier

    assert _classifier(entry["base_model"], tokenizer).get_input_embeddings().num_embeddings == len(tokenizer)
