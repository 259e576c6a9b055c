"""Stage 05: ship the model that was evaluated, and prove it is that model.

The adapter is merged into a full-precision copy of its base (never into a 4-bit one), and the merge is
checked against base + adapter on evaluation prompts: logits within a tolerance and identical greedy
answers, or nothing is exported. The merged directory carries the tokenizer, the chat template and a
generation config whose end ids include the end-of-turn token, so a server stops where the model was
trained to stop. GGUF files, their checks and the Ollama Modelfile are in tunebook.gguf.

Inference only: nothing here imports a trainer.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunebook import dataset, evaluate, gguf, models, paths, registry, servers
from tunebook.files import hash_tree, sha256_file, write_atomic
from tunebook.params import EndpointParams, EvaluateParams, ExportParams

# What a PEFT adapter directory needs to be loaded and served; training_args.bin (a pickle) stays behind.
ADAPTER_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
)


class ExportError(ValueError):
    """An export that would ship a model unlike the evaluated one: the message says what and why."""


@dataclass
class Shipment:
    """The model to ship, loaded as the evaluate stage ran it, and the test prompts it is checked on."""

    model: str  # the registry name of what is shipped
    base_model: str
    adapter_dir: Path
    reference: models.LoadedModel  # base + adapter, as the evaluate stage ran it
    items: pd.DataFrame  # the test items the export is checked on (evaluate.test_items)
    prompts: list[list[dict]]  # their questions, asked as the evaluate stage asks them


def inputs(run_id: str, params: ExportParams) -> Shipment:
    """The registry model to ship, loaded as it was evaluated, and the test items to check it on."""
    spec = registry.resolve(params.model, run_id)
    if not spec["adapter"]:
        raise ExportError(
            f"{params.model} is a fully fine-tuned model, not an adapter: its directory "
            f"{spec['base_model']} is already the merged model"
        )
    test = dataset.read_split(paths.stage_dir(run_id, "generate"), "test")
    items = evaluate.test_items(test, EvaluateParams(max_examples=params.verify_prompts))
    prompts = evaluate.conversations(items, None, EvaluateParams())
    reference = models.load_model(params.model, spec["base_model"], spec["adapter"])
    return Shipment(params.model, spec["base_model"], Path(spec["adapter"]), reference, items, prompts)


def merge_and_verify(inputs: Shipment, params: ExportParams) -> tuple[PreTrainedModel, MergeCheck]:
    """The merged model, once it is shown to behave as base + adapter; otherwise ExportError."""
    dtype = torch.bfloat16 if params.dtype == "bf16" else torch.float32
    merged = merge(inputs.base_model, inputs.adapter_dir, dtype).to(models.device())
    check = verify_merge(merged, inputs.reference, inputs.prompts, params.max_new_tokens, params.tolerance)
    require(check)
    return merged, check


def merge(base_model: str, adapter_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """base + adapter as one model, merged into a full-precision copy of the base."""
    from peft import PeftModel  # the inference side of peft: loading and merging an adapter

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, **models.pretrained_options(weights=False))
    base = models.load_base(base_model, tokenizer, dtype=dtype)
    refuse_quantized(base)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def refuse_quantized(model: PreTrainedModel) -> None:
    quantized = getattr(model, "is_loaded_in_4bit", False) or any(
        "4bit" in type(module).__name__ for module in model.modules()
    )
    if quantized:
        raise ExportError(
            "refusing to merge into a 4-bit base: the LoRA update would be added to weights rounded to 16 "
            "levels and rounded again, which silently corrupts the model; merge into the full-precision base "
            "(fp32 or bf16), then quantise the merged model (e.g. GGUF q8_0)"
        )


@dataclass
class MergeCheck:
    prompts: int
    max_logit_diff: float
    tolerance: float
    greedy_identical: int  # prompts whose greedy answers are the same text from both
    differing: list[dict]  # the prompts whose answers differ: question, both answers
    answers: list[models.Generation]  # base + adapter's greedy answers: what every export is compared with

    @property
    def ok(self) -> bool:
        return self.max_logit_diff <= self.tolerance and self.greedy_identical == self.prompts


@torch.inference_mode()
def verify_merge(
    merged: PreTrainedModel,
    reference: models.LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int,
    tolerance: float = 1e-3,
    batch_size: int = 16,
) -> MergeCheck:
    """Compare the merged model with base + adapter on the prompts: the largest logit difference on every
    prompt token, and whether greedy decoding gives each prompt the same answer."""
    tokenizer = reference.tokenizer
    texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    gap = 0.0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(models.device())
        expected = reference.model(input_ids=ids).logits.float()
        gap = max(gap, (merged(input_ids=ids).logits.float() - expected).abs().max().item())
    mine = models.LoadedModel("merged", merged, tokenizer)
    ours = models.generate(mine, conversations, max_new_tokens, batch_size, progress=False)
    theirs = models.generate(reference, conversations, max_new_tokens, batch_size, progress=False)
    differing = [
        {"question": c[-1]["content"], "merged": a.text, "base + adapter": b.text}
        for c, a, b in zip(conversations, ours, theirs, strict=True)
        if a.text != b.text
    ]
    return MergeCheck(len(conversations), gap, tolerance, len(conversations) - len(differing), differing, theirs)


def require(check: MergeCheck) -> None:
    """Block the export unless the merged model behaves as base + adapter."""
    if not check.ok:
        raise ExportError(
            f"the merged model is not base + adapter: logits differ by up to {check.max_logit_diff:.3g} "
            f"(tolerance {check.tolerance:g}) and {check.prompts - check.greedy_identical} of {check.prompts} greedy "
            "answers differ; nothing was exported"
        )


def save_merged(
    merged: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, tokenizer_sources: list[str | Path]
) -> Path:
    """safetensors weights, the tokenizer with its chat template, and a generation config that stops at
    every end id. tokenizer_sources are where the tokenizer was loaded from (adapter, then base)."""
    stops = models.end_ids(tokenizer)
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    complete_tokenizer_files(tokenizer, out_dir, tokenizer_sources)
    return out_dir


def complete_tokenizer_files(tokenizer: PreTrainedTokenizerBase, out_dir: Path, sources: list[str | Path]) -> None:
    """transformers 5 saves a SentencePiece tokenizer as tokenizer.json alone, with a tokenizer_config.json
    that says neither whether BOS is added nor which tokens are special; transformers knows, but other
    readers guess, and llama.cpp's converter guesses wrong (placeholder merge scores, <|im_start|> as text,
    an added BOS). Copy the SentencePiece model from where the tokenizer came from, and write the facts down."""
    for source in sources:
        model_file = _tokenizer_model(source)
        if model_file is not None:
            shutil.copy2(model_file, out_dir / "tokenizer.model")
            break
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["add_bos_token"], config["add_eos_token"] = models.adds_bos_eos(tokenizer)
    config["added_tokens_decoder"] = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "rstrip": token.rstrip,
            "normalized": token.normalized,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_model(source: str | Path) -> Path | None:
    local = Path(source) / "tokenizer.model"
    if local.is_file():
        return local
    if Path(source).exists():
        return None
    from huggingface_hub import try_to_load_from_cache  # a hub id: the file if it was ever downloaded

    cached = try_to_load_from_cache(str(source), "tokenizer.model")
    return Path(cached) if isinstance(cached, str) else None


def register(run_id: str, inputs: Shipment, merged_dir: Path, check: MergeCheck) -> str:
    """The merged model as RUN_ID:export, a model directory of its own that any stage can load by name."""
    record = {
        "base_model": inputs.base_model,
        "adapter": None,
        "model_dir": str(merged_dir),
        "chat_template": registry.entry(inputs.model, run_id).get("chat_template"),
        "merged_from": inputs.model,
        "metrics": {"max_logit_diff": check.max_logit_diff, "greedy_identical": check.greedy_identical},
        "output_hash": hash_tree(merged_dir),
    }
    return registry.register(run_id, "export", record)


def save_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """The PEFT adapter alone, with its tokenizer and chat template; no pickled training state."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter_dir / name).exists():
            shutil.copy2(adapter_dir / name, out_dir / name)
    return out_dir


def context_length(model_dir: Path, cap: int = 4096) -> int:
    """The context llama.cpp is given: the model's own, up to cap (its KV cache is allocated in full)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return min(config.get("max_position_embeddings") or cap, cap)


# --- GGUF, and proof that every output answers like the evaluated model --------------------------------


def write_gguf(merged_dir: Path, out_dir: Path, inputs: Shipment, params: ExportParams) -> tuple[dict, pd.DataFrame]:
    """Each GGUF type of params as out_dir/NAME-TYPE.gguf, made by llama.cpp's converter from the merged
    directory, and checked against the HF tokenizer before anything else reads it (GGUFError otherwise)."""
    stops = models.end_ids(inputs.reference.tokenizer)
    files, checked = {}, []
    for outtype in tqdm(params.gguf, desc="GGUF"):
        name = Path(inputs.base_model).name  # llama.cpp reads the family from it (see gguf.convert)
        path = gguf.convert(merged_dir, outtype, out_dir / f"{params.name}-{outtype}.gguf", name)
        checked.append(gguf.check_tokenizer(path, inputs.reference.tokenizer, inputs.prompts, stops))
        files[outtype] = path
    return files, pd.DataFrame(checked)


def gguf_answers(files: dict[str, Path], inputs: Shipment, params: ExportParams, context: int) -> dict[str, list]:
    """Every GGUF's greedy answers to the prompts, from llama-cpp-python in this process."""
    return {
        f"{outtype} · llama-cpp-python": gguf.generate(path, inputs.prompts, params.max_new_tokens, context)
        for outtype, path in files.items()
    }


def gguf_logits(files: dict[str, Path], inputs: Shipment, check: MergeCheck, context: int) -> pd.DataFrame:
    """Every GGUF's logits against base + adapter's, teacher-forced on the prompts and its answers."""
    answers = [answer.text for answer in check.answers]
    rows = [
        {"gguf": path.name, **gguf.logit_agreement(path, inputs.reference, inputs.prompts, answers, context)}
        for path in files.values()
    ]
    return pd.DataFrame(rows)


SERVED = "llama.cpp-server"  # the served GGUF's name in the served evaluation


def served_evaluation(
    run_id: str,
    registered: str,
    files: dict[str, Path],
    inputs: Shipment,
    params: ExportParams,
    context: int,
    log_path: Path,
) -> evaluate.Evaluation | None:
    """The evaluate module on the merged model as registered (loaded from disk) and on the first GGUF behind
    llama-cpp-python's OpenAI-compatible server on loopback, closed-book and greedy, as the evaluate stage
    asks every model; None without GGUF files."""
    if not params.gguf:
        return None
    path = files[params.gguf[0]]
    # Served answers are cached by model name: the alias names the file's content, so that another export of
    # the same name (another run, another adapter) is asked afresh rather than answered with this one's answers.
    alias = f"{params.name}-{sha256_file(path)[:12]}"
    with servers.llama_server(path, log_path, alias, context) as base_url:
        served = EndpointParams(
            name=SERVED, model=alias, base_url=base_url, concurrency=1, extra_body=servers.LLAMA_GREEDY
        )
        asked = EvaluateParams(
            models=[registered],
            endpoints=[served],
            baseline=registered,
            conditions=["closed_book"],
            max_new_tokens=params.max_new_tokens,
        )
        return evaluate.evaluate_models(inputs.items, asked, run_id)


def parity(
    inputs: Shipment,
    check: MergeCheck,
    answers: dict[str, list[models.Generation]],
    served: evaluate.Evaluation | None,
    registered: str,
    params: ExportParams,
) -> gguf.Parity:
    """Every output against base + adapter: the merged model from disk, each GGUF in-process and the first
    one served. The merged model and the first GGUF, in-process and served, are held to min_agreement."""
    outputs = dict(answers)
    gated = {name for name in answers if params.gguf and name.startswith(params.gguf[0])}
    if served is not None:
        merged_name, served_name = "merged · transformers", f"{params.gguf[0]} · llama.cpp server"
        outputs = {
            merged_name: _answers_of(served, registered, inputs.items),
            **outputs,
            served_name: _answers_of(served, SERVED, inputs.items),
        }
        gated |= {merged_name, served_name}
    return gguf.parity(inputs.items, check.answers, outputs, gated, params.min_agreement)


def _answers_of(evaluation: evaluate.Evaluation, model: str, items: pd.DataFrame) -> list[models.Generation]:
    rows = evaluation.examples[evaluation.examples["model"] == model].set_index("id").loc[items["id"]]
    pairs = zip(rows["prediction"], rows["stopped"], strict=True)
    return [models.Generation(text, bool(stopped)) for text, stopped in pairs]


def write_modelfile(files: dict[str, Path], inputs: Shipment, params: ExportParams, context: int) -> Path | None:
    """An Ollama Modelfile beside the GGUF it names; None when params ask for none."""
    if params.modelfile is None:
        return None
    tokenizer = inputs.reference.tokenizer
    text = gguf.modelfile(files[params.modelfile].name, tokenizer, models.end_ids(tokenizer), context)
    path = files[params.modelfile].parent / "Modelfile"
    write_atomic(path, text)
    return path


def serving_commands(
    merged_dir: Path, inputs: Shipment, name: str, files: dict[str, Path], modelfile: Path | None
) -> dict[str, str]:
    """How to run each output: transformers, vLLM (merged, or base + the adapter as a LoRA module),
    llama.cpp's server and Ollama."""
    commands = {
        "transformers": f"AutoModelForCausalLM.from_pretrained('{merged_dir}')",
        "vllm (merged)": f"vllm serve {merged_dir} --served-model-name {name} --generation-config auto",
        "vllm (base + adapter)": f"vllm serve {inputs.base_model} --enable-lora "
        f"--lora-modules {name}={inputs.adapter_dir}",
    }
    for outtype, path in files.items():
        commands[f"llama.cpp server ({outtype})"] = f"python -m llama_cpp.server --model {path} --model_alias {name}"
    if modelfile is not None:
        commands["ollama"] = f"cd {modelfile.parent} && ollama create {name} -f Modelfile && ollama run {name}"
    return commands


def files_table(directory: Path) -> pd.DataFrame:
    """Every exported file with its size and SHA-256, for the report."""
    rows = [
        {"file": str(p.relative_to(directory)), "MB": round(p.stat().st_size / 1e6, 3), "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]
    return pd.DataFrame(rows, columns=["file", "MB", "sha256"])
