"""The quality pipeline of generated rows: length, grounding, near-duplicates and decontamination.

Every filter returns the rows it keeps and the rows it removes, so the dataset card can say how many
each step removed and the report can show examples of what went.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH

from tunebook.params import FilterParams

_WORD = re.compile(r"\w+")
# Words too common to show that an answer came from its source.
_STOPWORDS = frozenset(
    "a an the and or of to in on for is are was were be been it its this that these those as at by with "
    "from into if then than so not no do does did can could should would will may might must you your we "
    "our they their he she his her i me my what which who whom how why when where there here also".split()
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def question(row: dict) -> str:
    return row["messages"][-2]["content"]


def answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def conversation_text(row: dict) -> str:
    """Every turn of a row, as one text: what overlap with another split is measured on."""
    return " ".join(turn["content"] for turn in row["messages"])


def by_length(rows: list[dict], filters: FilterParams) -> tuple[list[dict], list[dict]]:
    kept, removed = [], []
    for row in rows:
        ok = (
            len(question(row).strip()) >= filters.min_question_chars
            and filters.min_answer_chars <= len(answer(row).strip()) <= filters.max_answer_chars
        )
        (kept if ok else removed).append(row)
    return kept, removed


def repetition(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that repeat an earlier one: near 0 for prose, near 1 for a loop."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def by_repetition(rows: list[dict], max_repetition: float) -> tuple[list[dict], list[dict]]:
    """Drop answers stuck in a loop, the usual failure of a small or badly prompted teacher."""
    kept, removed = [], []
    for row in rows:
        (kept if repetition(answer(row)) <= max_repetition else removed).append(row)
    return kept, removed


def grounding_score(answer_text: str, sources: Iterable[str]) -> float:
    """Share of the answer's content words that occur in its source text (1.0 for an answer of none)."""
    content = [w for w in words(answer_text) if w not in _STOPWORDS]
    if not content:
        return 1.0
    vocabulary = {w for text in sources for w in words(text)}
    return sum(w in vocabulary for w in content) / len(content)


def by_grounding(rows: list[dict], sources: dict[str, str], threshold: float) -> tuple[list[dict], list[dict]]:
    """Keep answers supported by their source chunk (and its retrieved context); scores land in each row."""
    kept, removed = [], []
    for row in rows:
        texts = [sources[chunk_id] for chunk_id in [row["chunk_id"], *row["context_ids"]] if chunk_id in sources]
        row["grounding"] = round(grounding_score(answer(row), texts), 4)
        (kept if row["grounding"] >= threshold else removed).append(row)
    return kept, removed


def minhash(text: str, num_perm: int) -> MinHash:
    tokens = words(text)
    shingles = {" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))}
    signature = MinHash(num_perm=num_perm, seed=1)
    signature.update_batch([s.encode() for s in shingles])
    return signature


def near_duplicates(rows: list[dict], threshold: float, num_perm: int = 128) -> tuple[list[dict], list[dict]]:
    """Drop rows whose question and answer (word 3-gram MinHash) match an earlier row's above threshold."""
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures: dict[str, MinHash] = {}
    kept, removed = [], []
    for row in rows:
        signature = minhash(f"{question(row)} {answer(row)}", num_perm)
        # LSH finds candidates; the estimated Jaccard decides, so the threshold means what it says.
        if any(signature.jaccard(signatures[key]) >= threshold for key in index.query(signature)):
            removed.append(row)
            continue
        signatures[row["id"]] = signature
        index.insert(row["id"], signature)
        kept.append(row)
    return kept, removed


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def row_ngrams(row: dict, n: int) -> set[tuple[str, ...]]:
    return ngrams(question(row), n) | ngrams(answer(row), n)


def ngram_overlap(texts: list[str], reference_texts: list[str], n: int = 13) -> list[float]:
    """Per text, the share of its distinct word n-grams found anywhere in reference_texts.

    Uses the n-grams `decontaminate` compares, so a text scores above 0 exactly when it shares one with
    the references. A text shorter than n words has no n-grams and scores 0, as decontamination treats
    it: falling back to shorter grams would flag every short answer ("Yes.") as contaminated.
    """
    reference = set().union(*(ngrams(text, n) for text in reference_texts))
    overlaps = []
    for text in texts:
        grams = ngrams(text, n)
        overlaps.append(len(grams & reference) / len(grams) if grams else 0.0)
    return overlaps


def decontaminate(splits: dict[str, list[dict]], n: int) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """Remove train rows sharing an n-gram with val or test; returns splits, removed rows and a report."""
    held_out = set().union(*(row_ngrams(row, n) for name in ("val", "test") for row in splits[name]))
    clean, removed = [], []
    for row in splits["train"]:
        (removed if row_ngrams(row, n) & held_out else clean).append(row)
    report = {
        "ngram": n,
        "train_rows_overlapping": len(removed),
        "train_rows_before": len(splits["train"]),
        "held_out_ngrams": len(held_out),
    }
    return {**splits, "train": clean}, removed, report
