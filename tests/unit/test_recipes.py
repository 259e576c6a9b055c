"""Every recipe in params/examples/ runs its SFT stage for real, on a shrunken model of its own family.

A recipe is a 7B (or 0.5B) model on a GPU, which these tests do not have. What they can prove is that the
recipe's code path works: its method (LoRA, QLoRA's 4-bit base), precision, LoRA targets, trainer settings and
its family's stock chat template, through tunebook's own SFT code. So each recipe is loaded as a user would load
it, with only sizes and paths overridden, and trained two steps on a random-init model built from the config.json
it ships for planning, its sizes shrunk, with the zoo's tokenizer of its family (real special tokens, stock
template). The family comes from the config's model_type, so a new recipe is covered by adding its file.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from zoo import TRL_TEMPLATES, stock_template

from tunebook import chat, generate, ingest, paths, registry
from tunebook.params import GenerateParams, TinyParams, base_config_path, load_params
from tunebook.sft import register_model, train_sft, training_data

EXAMPLES = paths.project_root() / "params" / "examples"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))
# The zoo family of each model_type a recipe's config.json may have.
FAMILIES = {"llama": "llama3", "qwen2": "qwen2_5", "mistral": "mistral", "gemma2": "gemma", "phi3": "phi3"}
# The architecture shrunk as the zoo's models are; everything else in the config stays the recipe's.
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
HEAD_DIM = SIZES["hidden_size"] // SIZES["num_attention_heads"]
# What each test changes in a recipe: where the model and the corpus are, and how much it trains. Nothing about
# method, template, LoRA, quantisation or precision.
TRAINER_SIZES = {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                 "max_length": 256, "logging_steps": 1, "eval_steps": 2, "save_steps": 2}  # fmt: skip
# tunebook.chat trains a stock template that TRL has no training version of (Llama 3.1's, Mistral's) on the answer
# after its prompt, as prompt/completion rows; train_sft still hands TRL `messages` rows with assistant_only_loss,
# and TRL refuses the template. Strict: the fix shows here as an XPASS, and this marker goes.
COMPLETION_LOSS_BUG = (
    "train_sft gives TRL messages rows with assistant_only_loss=True for a template chosen with loss 'completion': "
    "ValueError: The chat template is not training-compatible (missing prefix-preservation or `{% generation %}` "
    "markers) and patching is not supported for this template."
)


def family_template(config: dict) -> tuple[str, str]:
    """The zoo family of a model's config.json, and the chat template its Instruct model ships."""
    family = FAMILIES.get(config["model_type"])
    if family is None:
        pytest.fail(f"no zoo family for model_type {config['model_type']!r}: add one to tests/unit/zoo.py")
    # Llama 3.1 and later rescale RoPE (rope_type llama3) and ship 3.1's template, with its dated system header.
    if family == "llama3" and (config.get("rope_scaling") or {}).get("rope_type") == "llama3":
        return family, (TRL_TEMPLATES / "llama3_1.jinja").read_text(encoding="utf-8")
    return family, stock_template(family)


def shrunken_model(config: dict, tokenizer_dir: Path, out_dir: Path) -> Path:
    """A random-init model of the config's architecture with its sizes shrunk, and the zoo tokenizer of its family:
    the vocabulary and special ids are the tokenizer's, generation stops where the zoo's Instruct model does."""
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    shrunk = {**config, **SIZES, "num_key_value_heads": 2 if kv_heads < heads else SIZES["num_attention_heads"]}
    for key in ("head_dim", "query_pre_attn_scalar"):  # Gemma's and others' explicit head sizes
        if key in config:
            shrunk[key] = HEAD_DIM
    if "layer_types" in config:
        shrunk["layer_types"] = config["layer_types"][: SIZES["num_hidden_layers"]]
    zoo_config = AutoConfig.from_pretrained(tokenizer_dir)
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
        shrunk[key] = getattr(zoo_config, key)
    shutil.copytree(tokenizer_dir, out_dir, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    (out_dir / "config.json").write_text(json.dumps(shrunk, indent=2), encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out_dir), dtype=torch.float32)
    assert type(model).__name__ == config["architectures"][0]
    model.save_pretrained(out_dir)
    shutil.copy(tokenizer_dir / "generation_config.json", out_dir)  # the family's stop ids
    return out_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list]:
    """A small question/answer dataset, generated by the extractive teacher from two stdlib modules' docs."""
    root = tmp_path_factory.mktemp("recipe-data")
    ingest.write_stdlib_corpus(["json", "bisect"], root / "corpus")
    documents, _ = ingest.read_documents(root / "corpus", [".md"])
    chunks = ingest.chunk_documents(documents, 900, 150)
    params = GenerateParams(teachers=[{"name": "extractive", "backend": "extractive"}], val_fraction=0.1)
    campaign = generate.run_campaign(generate.plan_jobs(chunks, params), params, root / "generate", TinyParams(), [],
                                     progress=False)  # fmt: skip
    generate.write_dataset(
        generate.build_dataset(campaign.records, chunks, params), root / "generate", params, "recipe"
    )
    return root / "generate", chunks


def test_every_recipe_ships_its_config():
    assert {path.name for path in RECIPES} >= {"llama3-8b-qlora.yaml", "qwen2.5-0.5b-lora.yaml",
                                               "qwen2.5-1.5b-lora.yaml", "mistral-7b-qlora.yaml"}  # fmt: skip
    for recipe in RECIPES:
        params = load_params(recipe, [f"ingest.corpus_dir={EXAMPLES / 'corpus'}"])
        assert params.sft.base_config, f"{recipe.name}: no sft.base_config to plan offline with"
        config = json.loads(base_config_path(params, recipe).read_text(encoding="utf-8"))
        assert config["model_type"] in FAMILIES, f"{recipe.name}: no zoo family for {config['model_type']}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_the_recipe_trains_its_sft_stage_on_a_shrunken_model_of_its_family(
    recipe, zoo, dataset, tmp_path, workdir, request
):
    as_written = load_params(recipe, [f"ingest.corpus_dir={EXAMPLES / 'corpus'}"])
    config = json.loads(base_config_path(as_written, recipe).read_text(encoding="utf-8"))
    family, template = family_template(config)
    model_dir = shrunken_model(config, zoo(family, chat_template=template), tmp_path / f"{family}-shrunk")

    overrides = [f"ingest.corpus_dir={EXAMPLES / 'corpus'}", f"sft.base_model={model_dir}",
                 *(f"sft.trainer.{key}={value}" for key, value in TRAINER_SIZES.items())]  # fmt: skip
    params = load_params(recipe, overrides)
    sft = params.sft
    # Only sizes and paths differ from the recipe as written.
    assert sft.model_dump(exclude={"base_model", "trainer"}) == as_written.sft.model_dump(
        exclude={"base_model", "trainer"}
    )
    unsized = {key: value for key, value in as_written.sft.trainer.items() if key not in TRAINER_SIZES}
    assert {key: value for key, value in sft.trainer.items() if key not in TRAINER_SIZES} == unsized
    if chat.choose(AutoTokenizer.from_pretrained(model_dir), sft.chat_template).loss == "completion":
        request.applymarker(pytest.mark.xfail(raises=ValueError, strict=True, reason=COMPLETION_LOSS_BUG))

    dataset_dir, chunks = dataset
    data = training_data(sft, dataset_dir, chunks)
    result = train_sft(sft, str(model_dir), data, paths.stage_dir(params.run.id, "sft"), params.seed, progress=False)
    name = register_model(params.run.id, result, sft, data)

    train = result.history[result.history["split"] == "train"]
    assert len(train) == TRAINER_SIZES["max_steps"] and all(math.isfinite(loss) for loss in train["loss"])
    assert math.isfinite(result.metrics["eval_loss"])
    adapter = Path(result.output_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (sft.lora["r"], sft.lora["lora_alpha"])
    entry = registry.entries()[name]
    assert entry["adapter"] == str(adapter) and entry["params"]["method"] == as_written.sft.method
    assert entry["params"]["quantization"] == as_written.sft.quantization
    # The template saved with the adapter is the one recorded, and it prompts the model as its stock template does.
    saved = AutoTokenizer.from_pretrained(adapter)
    assert entry["chat_template"]["hash"] == chat.ChatTemplate(saved.chat_template, "", "assistant").hash
    prompt = [{"role": "user", "content": "What does json.dumps return?"}]
    stock = AutoTokenizer.from_pretrained(model_dir)
    assert saved.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) == (
        stock.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    )
