"""Run parameters. A params file is one YAML document with a section per stage, validated in full before any
work starts; the first problem is reported as one line naming the file, line and key path.

One job per module, each importing only those above it:
- prompts: the default prompt texts of the teachers, the judge, RAG and self-critique
- safety: opt-ins to model code and pickles, the model-directory check, what counts as a secret and its masking
- blocks: the pass-through library configs: tunebook's defaults, the fields it sets itself, demo-scale settings
- schema: the pydantic sections, one per stage, and the sections several stages share
- loading: load_params, `--set` overrides, one-line errors, a notebook's `section`, the file checks of a run
"""

from tunebook.params.blocks import (
    DPO_BLOCKS,
    DPO_TRAINER_DEFAULTS,
    REWARD_BLOCKS,
    REWARD_LORA_DEFAULTS,
    REWARD_TRAINER_DEFAULTS,
    SFT_BLOCKS,
    SFT_LORA_DEFAULTS,
    SFT_QUANTIZATION_DEFAULTS,
    SFT_TRAINER_DEFAULTS,
    demo_scale,
    demo_scale_warning,
)
from tunebook.params.loading import ParamsError, base_config_path, load_params, mask_override, section
from tunebook.params.safety import ALLOW_PICKLE, TRUST_REMOTE_CODE, mask_secrets, opted_in
from tunebook.params.schema import (
    SHARED_SECTIONS,
    TINY,
    BudgetParams,
    CheckParams,
    ChromaParams,
    DpoParams,
    EndpointParams,
    EvaluateParams,
    ExportParams,
    FilterParams,
    GenerateParams,
    GGUFType,
    IngestParams,
    JudgeParams,
    Params,
    PromptParams,
    RewardParams,
    RunParams,
    SftParams,
    TeacherParams,
    TinyParams,
    accelerate_config_path,
)

__all__ = [
    "ALLOW_PICKLE",
    "DPO_BLOCKS",
    "DPO_TRAINER_DEFAULTS",
    "REWARD_BLOCKS",
    "REWARD_LORA_DEFAULTS",
    "REWARD_TRAINER_DEFAULTS",
    "SFT_BLOCKS",
    "SFT_LORA_DEFAULTS",
    "SFT_QUANTIZATION_DEFAULTS",
    "SFT_TRAINER_DEFAULTS",
    "SHARED_SECTIONS",
    "TINY",
    "TRUST_REMOTE_CODE",
    "BudgetParams",
    "CheckParams",
    "ChromaParams",
    "DpoParams",
    "EndpointParams",
    "EvaluateParams",
    "ExportParams",
    "FilterParams",
    "GGUFType",
    "GenerateParams",
    "IngestParams",
    "JudgeParams",
    "Params",
    "ParamsError",
    "PromptParams",
    "RewardParams",
    "RunParams",
    "SftParams",
    "TeacherParams",
    "TinyParams",
    "accelerate_config_path",
    "base_config_path",
    "demo_scale",
    "demo_scale_warning",
    "load_params",
    "mask_override",
    "mask_secrets",
    "opted_in",
    "section",
]
