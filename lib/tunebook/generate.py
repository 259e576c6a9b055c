"""Stage 01: chunks -> question/answer rows -> deduplicated train/val/test JSONL plus a dataset card."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tunebook.files import jsonl_text, read_jsonl, sha256_text, write_atomic
from tunebook.ingest import Chunk
from tunebook.params import GenerateParams
from tunebook.teachers import extractive

SPLITS = ("train", "val", "test")


@dataclass
class Generated:
    rows: list[dict]
    counts: dict[str, int] = field(default_factory=dict)  # rows removed or kept at each step


def generate_rows(chunks: list[Chunk], params: GenerateParams, progress: bool = True) -> Generated:
    """Ask the teacher about every chunk, then drop exact duplicates and cap the total."""
    rows = []
    for chunk in tqdm(chunks, desc="teacher", disable=not progress):
        for qa in extractive.ask(chunk.text, params.max_answer_chars):
            rows.append(_row(qa, chunk))
    counts = {"chunks": len(chunks), "generated": len(rows)}
    unique = _dedupe(rows)
    counts["duplicates_removed"] = len(rows) - len(unique)
    counts["capped"] = max(0, len(unique) - params.max_samples)
    kept = unique[: params.max_samples]
    counts["kept"] = len(kept)
    return Generated(kept, counts)


def _row(qa: extractive.QA, chunk: Chunk) -> dict:
    messages = [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}]
    return {
        "id": _digest(qa.question),
        "messages": messages,
        "template": qa.template,
        "source": chunk.source,
        "chunk_id": chunk.id,
    }


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per question: the same question twice is either a copy or an ambiguous target."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            unique.append(row)
    return unique


def split_rows(rows: list[dict], val_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
    """Split by a hash of the question, so a row's split never changes when the corpus grows."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in rows:
        position = int(row["id"][:8], 16) / 16**8
        name = "test" if position < test_fraction else "val" if position < test_fraction + val_fraction else "train"
        splits[name].append(row)
    return splits


def write_dataset(splits: dict[str, list[dict]], out_dir: Path, card: dict) -> dict:
    """Write each split as JSONL and a card (JSON + Markdown); returns the card with hashes added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, rows in splits.items():
        text = jsonl_text(rows)
        write_atomic(out_dir / f"{name}.jsonl", text)
        hashes[name] = sha256_text(text)
    card = {
        **card,
        "splits": {name: len(rows) for name, rows in splits.items()},
        "templates": dict(sorted(Counter(r["template"] for rs in splits.values() for r in rs).items())),
        "question_templates": extractive.TEMPLATES,
        "split_hashes": hashes,
        "dataset_hash": sha256_text("".join(hashes[name] for name in SPLITS)),
        "format": "TRL conversational: {'messages': [{'role', 'content'}, ...]}",
    }
    write_atomic(out_dir / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    write_atomic(out_dir / "README.md", _card_markdown(card))
    return card


def read_split(dataset_dir: Path, split: str) -> list[dict]:
    return read_jsonl(dataset_dir / f"{split}.jsonl")


def read_card(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "card.json").read_text(encoding="utf-8"))


def _card_markdown(card: dict) -> str:
    lines = [
        f"# Dataset card: {card.get('name', 'dataset')}",
        "",
        f"Teacher: `{card.get('teacher')}`. Format: {card['format']}.",
        f"Dataset hash: `{card['dataset_hash']}`.",
        "",
        "| split | rows |",
        "|---|---|",
        *(f"| {name} | {n} |" for name, n in card["splits"].items()),
        "",
        "## Pipeline counts",
        "",
        *(f"- {step}: {n}" for step, n in card.get("counts", {}).items()),
        "",
        "## Question templates",
        "",
        *(f"- `{name}`: {template}" for name, template in card["question_templates"].items()),
        "",
    ]
    return "\n".join(lines)


def _digest(text: str) -> str:
    return sha256_text(text)[:16]
