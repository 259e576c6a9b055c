"""The generate stage's dataset on disk, which every later stage reads through this module.

A dataset directory holds train/val/test JSONL (TRL's conversational format, one row per question),
parse_failures.jsonl (the campaign's parse failures) and a card (card.json, and README.md for people).
`read_split` checks every row it reads, so a hand-edited or foreign dataset fails at its bad line.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunebook.files import jsonl_text, numbered_jsonl, sha256_text, write_atomic

SPLITS = ("train", "val", "test")
ROLES = ("system", "user", "assistant")  # the turns a split row's messages may hold


@dataclass
class Dataset:
    splits: dict[str, list[dict]]
    counts: dict[str, int]  # rows in, then rows removed by each step, then rows kept
    removed: dict[str, list[dict]]  # the rows each filter removed, for the report
    teachers: pd.DataFrame  # one row per teacher: jobs, requests, failures, yield, quality
    failures: pd.DataFrame  # every parse failure, with the id of its job or sample
    recipe: dict  # what made it, recorded in the card: filters, the chat teachers' prompts, extractive templates
    decontamination: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. thin data: shown in the card and the SFT report


def write_dataset(dataset: Dataset, out_dir: Path, name: str) -> dict:
    """Each split as JSONL, parse_failures.jsonl, and a card (card.json + README.md); returns the card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "parse_failures.jsonl", jsonl_text(dataset.failures.to_dict("records")))
    hashes = {}
    for split, rows in dataset.splits.items():
        text = jsonl_text(rows)
        write_atomic(out_dir / f"{split}.jsonl", text)
        hashes[split] = sha256_text(text)
    card = {
        "name": name,
        "splits": {split: len(rows) for split, rows in dataset.splits.items()},
        "counts": dataset.counts,
        **dataset.recipe,
        "decontamination": dataset.decontamination,
        "teachers": dataset.teachers.to_dict("records"),
        "templates": dict(sorted(Counter(r["template"] for rs in dataset.splits.values() for r in rs).items())),
        "split_hashes": hashes,
        "dataset_hash": sha256_text("".join(hashes[split] for split in SPLITS)),
        "format": "TRL conversational: {'messages': [{'role', 'content'}, ...]}",
        "warnings": dataset.warnings,
    }
    write_atomic(out_dir / "card.json", json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    write_atomic(out_dir / "README.md", _card_markdown(card))
    return card


def read_split(dataset_dir: Path, split: str) -> list[dict]:
    """A split's rows, each checked to be one every stage can use: a ValueError names the file and line."""
    path = dataset_dir / f"{split}.jsonl"
    rows = []
    for number, row in numbered_jsonl(path):
        if problem := _row_problem(row):
            raise ValueError(f"{path}:{number}: {problem}")
        rows.append(row)
    return rows


def _row_problem(row: dict) -> str | None:
    """What is wrong with a split row, if anything. Evaluation and DPO read a row's last two turns as the
    question and its reference answer, and rows are told apart by id."""
    if not (isinstance(row.get("id"), str) and row["id"]):
        return "no 'id' string"
    messages = row.get("messages")
    if not isinstance(messages, list):
        return "no 'messages' list (expected [{'role': ..., 'content': ...}, ...])"
    for i, turn in enumerate(messages):
        if not (isinstance(turn, dict) and turn.get("role") in ROLES and isinstance(turn.get("content"), str)):
            roles = ", ".join(ROLES)
            return f"messages[{i}] is not a {{'role', 'content'}} turn with a role of {roles} (got {turn!r:.80})"
    if [turn["role"] for turn in messages[-2:]] != ["user", "assistant"]:
        return "messages must end with a user turn and the assistant's answer to it"
    if not messages[-1]["content"].strip():
        return "empty assistant turn"
    return None


def read_card(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "card.json").read_text(encoding="utf-8"))


def _card_markdown(card: dict) -> str:
    files = ", ".join(f'"{split}": "{split}.jsonl"' for split in SPLITS)
    lines = [
        f"# Dataset card: {card['name']}",
        "",
        f"Format: {card['format']}. Dataset hash: `{card['dataset_hash']}`.",
        "",
        *(f"**Warning:** {warning}\n" for warning in card["warnings"]),
        f'Load it with `datasets.load_dataset("json", data_files={{{files}}})`.',
        "",
        "| split | rows |",
        "|---|---|",
        *(f"| {split} | {n} |" for split, n in card["splits"].items()),
        "",
        "## Teachers",
        "",
        pd.DataFrame(card["teachers"]).to_markdown(index=False),
        "",
        "## Quality pipeline",
        "",
        "Rows in, then the rows each step removed, in order:",
        "",
        *(f"- {step}: {n}" for step, n in card["counts"].items()),
        "",
        f"Filters: `{json.dumps(card['filters'], sort_keys=True)}`.",
        f"Decontamination: `{json.dumps(card['decontamination'], sort_keys=True)}`.",
        "",
        "## Prompts of the chat teachers",
        "",
        *(f"### {name}\n\n```text\n{prompt}\n```\n" for name, prompt in card["prompts"].items()),
        "## Question templates of the extractive teacher",
        "",
        *(f"- `{name}`: {template}" for name, template in card["extractive_templates"].items()),
        "",
    ]
    return "\n".join(lines)
