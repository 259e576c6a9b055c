"""What must not run or leak: opt-ins to loading code from a model directory, and the one test of a secret.

A pickle checkpoint and a model's own Python code (`auto_map`) both run code on this machine when loaded, so a
local model needs safetensors and no code unless the user opts in. A secret must never be a parameter:
papermill writes every parameter into the executed notebook, and manifests record params and `--set`s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Opt-ins to loading what can run code. They are environment variables rather than params: models load in
# many modules and in notebook kernels, which inherit the environment of `tunebook run` or of JupyterLab.
ALLOW_PICKLE = "TUNEBOOK_ALLOW_PICKLE"
TRUST_REMOTE_CODE = "TUNEBOOK_TRUST_REMOTE_CODE"
# Lets python checks run without bubblewrap where it is missing: under rlimits and a timeout only.
UNSANDBOXED_CHECKS = "TUNEBOOK_UNSANDBOXED_CHECKS"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# A key holding a credential contains one of these words (lower-cased): `key` covers api_key, apikey and
# api-key, `token` covers access_token and hf_token.
SECRET_WORDS = ("key", "token", "secret", "password", "authorization")
# ...unless it names a variable (api_key_env), counts tokens (max_new_tokens) or lists ids (stop_token_ids).
NOT_SECRET_SUFFIXES = ("_env", "_tokens", "_ids")


def opted_in(variable: str) -> bool:
    return os.environ.get(variable) == "1"


def model_dir_problem(directory: Path) -> str | None:
    """Why loading this local model would run code the user did not opt in to, or None."""
    suffixes = {file.suffix for file in directory.iterdir()}
    if suffixes & set(PICKLE_SUFFIXES) and ".safetensors" not in suffixes and not opted_in(ALLOW_PICKLE):
        return (
            f"{directory} holds pickle weights ({', '.join(PICKLE_SUFFIXES)}), which can run code when loaded, "
            f"and no *.safetensors: convert them to safetensors, or set {ALLOW_PICKLE}=1 if you trust them"
        )
    for file in (directory / "config.json", directory / "tokenizer_config.json"):
        if opted_in(TRUST_REMOTE_CODE) or not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return f"{file}: not valid JSON ({err})"
        if isinstance(config, dict) and "auto_map" in config:
            return (
                f"{file} has an auto_map: loading the model would run its own Python code; "
                f"set {TRUST_REMOTE_CODE}=1 if you trust it"
            )
    return None


def secret_key(key: str) -> bool:
    """Whether a key's name says it holds a credential: params refuse such keys, and manifests mask them."""
    key = key.lower()
    return not key.endswith(NOT_SECRET_SUFFIXES) and any(word in key for word in SECRET_WORDS)


def holds_secret(key: str, value: Any) -> bool:
    # A number, an empty value or a section is no credential: `tokens_per_minute: 3000` stays readable.
    return secret_key(key) and value not in (None, "") and not isinstance(value, dict | list | int | float)


def mask_secrets(value: Any) -> Any:
    """Values under secret-looking keys are masked before anything is written to a manifest."""
    if isinstance(value, dict):
        return {k: "***" if holds_secret(k, v) else mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value
