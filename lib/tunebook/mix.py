"""General data mixed into SFT, so that a domain fine-tune keeps what it knew (`sft.mix`).

Each source is a local JSONL or Parquet file (or, on a machine with the hub, a dataset id) of rows shaped like the
domain's: `messages` for `sft.task: chat`, `text` for continued pre-training, where it is the replay share. A source
with ratio r adds r general rows per domain row, drawn seeded (repeating a source smaller than that), after every
row sharing a word n-gram with the domain's test split or the general evaluation set is removed: a mix must not
teach the tests it is measured on. The domain rows and the drawn ones are then shuffled together, seeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook import paths, quality
from tunebook.files import jsonl_text, read_complete_lines, sha256_text
from tunebook.params import MixSourceParams

DOMAIN = "domain"


@dataclass
class Mixture:
    rows: list[dict]  # the domain's and every source's, shuffled
    sources: list[str]  # each row's source: "domain" or the source's name
    removed: dict[str, int]  # per source, rows left out for sharing an n-gram with a test or evaluation text

    @property
    def data_hash(self) -> str:
        return sha256_text(jsonl_text(self.rows))


def read_source(source: MixSourceParams) -> list[dict]:
    """A source's rows: a local .jsonl or .parquet (relative to the workdir, then the checkout), or a hub id."""
    if found := paths.locate(source.path):
        return pd.read_parquet(found).to_dict("records") if found.suffix == ".parquet" else read_complete_lines(found)
    from datasets import load_dataset  # a hub dataset id, on a connected machine

    return list(load_dataset(source.path, split=source.split))


def texts_of(row: dict) -> str:
    """Everything a row says, as one text: what overlap is measured on."""
    if "messages" in row:
        return quality.conversation_text(row)
    return " ".join(str(value) for value in row.values() if isinstance(value, str | list))


def mix(
    domain: list[dict],
    sources: list[MixSourceParams],
    shape: str,
    against: list[str],
    ngram: int,
    seed: int,
) -> Mixture:
    """The domain rows with each source's share of general rows (only its `shape` field, messages or text, so
    that rows match), seeded;
    general rows that share an `ngram`-word n-gram with any of `against` are left out first."""
    rows, names, removed = list(domain), [DOMAIN] * len(domain), {}
    rng = random.Random(seed)
    for source in sources:
        found = [{shape: row[shape]} for row in read_source(source) if row.get(shape)]
        if not found:
            raise ValueError(f"sft.mix {source.name}: no rows with a {shape!r} field in {source.path}")
        overlap = quality.ngram_overlap([texts_of(row) for row in found], against, ngram)
        clean = [row for row, shared in zip(found, overlap, strict=True) if shared == 0]
        removed[source.name] = len(found) - len(clean)
        wanted = round(source.ratio * len(domain))
        if not clean and wanted:
            raise ValueError(f"sft.mix {source.name}: every row overlaps the test or evaluation texts")
        shuffled = rng.sample(clean, len(clean))
        drawn = [shuffled[i % len(shuffled)] for i in range(wanted)] if wanted else []
        rows += drawn
        names += [source.name] * len(drawn)
    order = list(range(len(rows)))
    rng.shuffle(order)
    return Mixture([rows[i] for i in order], [names[i] for i in order], removed)


def table(mixture: Mixture, tokenizer=None) -> pd.DataFrame:
    """Per source: rows, their share, tokens (with the tokenizer, through its chat template for chat rows) and the
    rows left out as contaminated."""
    frame = pd.DataFrame({"source": mixture.sources, "row": mixture.rows})
    if tokenizer is not None:
        frame["tokens"] = [_tokens(row, tokenizer) for row in mixture.rows]
    grouped = frame.groupby("source", sort=False)
    result = grouped.size().rename("rows").to_frame()
    result["share"] = (result["rows"] / len(frame)).round(3)
    if tokenizer is not None:
        result["tokens"] = grouped["tokens"].sum()
    result["left out (overlap)"] = [mixture.removed.get(source, 0) for source in result.index]
    return result.reset_index()


def _tokens(row: dict, tokenizer) -> int:
    if "messages" in row:
        return len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
    return len(tokenizer(row["text"])["input_ids"])


def evaluation_texts(files: list[str]) -> list[str]:
    """The texts of the general evaluation set: every row of its JSONL files and of the data beside its task YAML
    files (a task named for the hub is not on this machine to read)."""
    from tunebook import general

    found: list[Path] = []
    for name in files:
        if name.endswith((".yaml", ".yml")):
            found += [Path(path) for path in general.task_config(name)["dataset_kwargs"]["data_files"].values()]
        elif name.endswith(".jsonl"):
            found.append(general.located(name))
    return [texts_of(row) for path in found for row in read_complete_lines(path)]
