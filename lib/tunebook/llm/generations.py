"""The generation cache: a local model's greedy answers to a list of conversations, under data/cache/generations/.

The answers are a function of the weights (the registry's content hashes), the chat template, the prompts,
the decoding, the batches they were generated in, the device, the libraries and tunebook's generation code
(the source of models.py), so the same evaluation (a notebook run again by hand, a changed judge or checks,
DPO's re-evaluation run again) reuses them. A model without recorded hashes is never cached.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from tunebook import models, paths
from tunebook.files import sha256_file, sha256_text, write_atomic


def cache_dir() -> Path:
    return paths.data_dir() / "cache" / "generations"


def greedy(
    loaded: models.LoadedModel,
    identity: str | None,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
) -> tuple[list[models.Generation], bool]:
    """The model's greedy answers, and whether they came from the cache. identity names the weights (the
    registry's content hashes); None generates afresh every time."""
    if identity is None:
        return models.generate(loaded, conversations, max_new_tokens, batch_size, progress), False
    weights = next(loaded.model.parameters())
    key = sha256_text(
        json.dumps(
            {
                "model": identity,
                "template": loaded.tokenizer.chat_template,
                "conversations": conversations,
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "device": str(weights.device),
                "dtype": str(weights.dtype),
                "libraries": {name: metadata.version(name) for name in ("torch", "transformers", "peft")},
                "generation code": sha256_file(Path(models.__file__)),
            },
            sort_keys=True,
        )
    )
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        return [models.Generation(**answer) for answer in json.loads(path.read_text(encoding="utf-8"))], True
    answers = models.generate(loaded, conversations, max_new_tokens, batch_size, progress)
    write_atomic(path, json.dumps([asdict(answer) for answer in answers]))
    return answers, False
