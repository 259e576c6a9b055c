"""Human evaluation: a blind side-by-side sheet of two models' answers, its ratings read back and
un-blinded, and how far they agree with the LLM judge."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.metrics import cohen_kappa_score

from tunebook.files import sha256_text, write_atomic
from tunebook.params import ParamsError

COLUMNS = ("Item", "Question", "Reference", "Answer 1", "Answer 2", "Rating")
RATINGS = ("1", "2", "tie")
TIE = "tie"


@dataclass(frozen=True)
class Sheet:
    csv: Path  # for the raters: they fill its Rating column
    html: Path  # the same items, readable in a browser
    key: Path  # private: which model was Answer 1 on each item


def export_sheet(answers: pd.DataFrame, models: tuple[str, str], out_dir: str | Path, seed: int) -> Sheet:
    """Write sheet.csv, sheet.html and sheet_key.json for the items both models answered.

    `answers` is evaluate's examples (model, id, question, reference, prediction). Which model is
    Answer 1 is drawn per item from `seed`, so raters cannot learn a side; the sheets never name a model.
    """
    model_a, model_b = models
    if model_a == model_b:
        raise ValueError(f"compare two different models, got {model_a!r} twice")
    by_model = {name: _answers_of(answers, name) for name in models}
    ids = [item_id for item_id in by_model[model_a].index if item_id in by_model[model_b].index]
    if not ids:
        raise ValueError(f"{model_a} and {model_b} answered no item in common")
    rng = random.Random(seed)
    items, key = [], {}
    for number, item_id in enumerate(ids, start=1):
        first, second = (model_a, model_b) if rng.random() < 0.5 else (model_b, model_a)
        question, reference = by_model[model_a].loc[item_id, ["question", "reference"]]
        answer_1, answer_2 = by_model[first].loc[item_id, "prediction"], by_model[second].loc[item_id, "prediction"]
        items.append([str(number), question, reference, answer_1, answer_2, ""])
        key[str(number)] = {"id": item_id, "answer_1": first, "answer_2": second, "question": _fingerprint(question)}
    out_dir = Path(out_dir)
    sheet = Sheet(out_dir / "sheet.csv", out_dir / "sheet.html", out_dir / "sheet_key.json")
    # The key first: a sheet that could not be un-blinded would waste the raters' work.
    write_atomic(sheet.key, json.dumps({"models": list(models), "seed": seed, "items": key}, indent=2) + "\n")
    write_atomic(sheet.csv, _csv_text(items))
    write_atomic(sheet.html, _html_text(items, sheet.csv.name))
    return sheet


def _answers_of(answers: pd.DataFrame, model: str) -> pd.DataFrame:
    rows = answers[answers["model"] == model]
    if rows.empty:
        raise ValueError(f"no answers from model {model!r} (models: {sorted(answers['model'].unique())})")
    if not rows["id"].is_unique:
        raise ValueError(f"model {model!r} answered some items more than once")
    return rows.set_index("id")


def _fingerprint(question: str) -> str:
    # Whitespace-blind, because spreadsheets rewrite line endings when they save a CSV.
    return sha256_text(" ".join(str(question).split()))[:12]


def _csv_text(items: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(items)
    # A byte-order mark, or Excel reads UTF-8 as Latin-1 and mangles every accent.
    return "\ufeff" + buffer.getvalue()


STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
section{border:1px solid #ccc;border-radius:6px;padding:.5rem 1rem 1rem;margin:1.5rem 0}
h2{font-size:1.1rem}h3{font-size:.95rem;margin:.5rem 0 .25rem;color:#555}
.text{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;border-radius:4px}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.rating{margin-top:.75rem;font-weight:600}"""


def _html_text(items: list[list[str]], csv_name: str) -> str:
    def block(title: str, text: str) -> str:
        return f'<h3>{title}</h3><div class="text">{html.escape(str(text))}</div>'

    sections = [
        f"<section><h2>Item {number}</h2>{block('Question', question)}{block('Reference', reference)}"
        f'<div class="answers"><div>{block("Answer 1", answer_1)}</div><div>{block("Answer 2", answer_2)}</div></div>'
        f'<p class="rating">Rating (1, 2 or tie): ____</p></section>'
        for number, question, reference, answer_1, answer_2, _ in items
    ]
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Blind comparison</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>Blind comparison: {len(items)} items</h1>\n"
        f"<p>Two answers to each question, in an order that changes from item to item. For each item, write in "
        f"the Rating column of <code>{html.escape(csv_name)}</code>: <b>1</b> if Answer 1 is better, <b>2</b> "
        f"if Answer 2 is better, <b>tie</b> if neither is. Leave it blank to skip an item.</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def import_ratings(csv_path: str | Path, key_path: str | Path) -> pd.DataFrame:
    """The filled sheet, un-blinded: one row per item with id, rating (1, 2, tie; missing when blank),
    answer_1 (the model shown first) and winner (a model's name or "tie"; missing when unrated).

    A rating other than 1, 2, tie or blank, or a row the key does not know, raises ParamsError naming
    the file and line.
    """
    csv_path, key_path = Path(csv_path), Path(key_path)
    try:
        key = json.loads(key_path.read_text(encoding="utf-8"))["items"]
    except (OSError, ValueError, KeyError) as err:
        raise ParamsError(f"{key_path}: not a sheet key ({err})") from None
    rows, seen = [], set()
    # utf-8-sig: the byte-order mark we write (and Excel keeps) is not part of the first header.
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [name for name in ("Item", "Question", "Rating") if name not in header]
        if missing:
            raise ParamsError(f'{csv_path}:1: missing column "{missing[0]}"')
        column = {name: header.index(name) for name in ("Item", "Question", "Rating")}
        # A record can span lines (answers hold newlines): its first line is one past the last record's end.
        start = reader.line_num + 1
        for record in reader:
            where, start = f"{csv_path}:{start}", reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            record += [""] * (len(header) - len(record))  # spreadsheets drop trailing empty cells
            item, question, rating = (record[column[name]].strip() for name in ("Item", "Question", "Rating"))
            if item not in key:
                raise ParamsError(f"{where}: item {item!r} is not in {key_path.name}")
            if item in seen:
                raise ParamsError(f"{where}: item {item} appears twice")
            if _fingerprint(question) != key[item]["question"]:
                raise ParamsError(f"{where}: item {item}'s question is not the one {key_path.name} was written for")
            rating = rating.lower() or None
            if rating is not None and rating not in RATINGS:
                raise ParamsError(f"{where}: rating must be 1, 2, tie or blank (got {record[column['Rating']]!r})")
            seen.add(item)
            entry = key[item]
            winner = {None: None, "1": entry["answer_1"], "2": entry["answer_2"], TIE: TIE}[rating]
            rows.append(
                {
                    "item": int(item),
                    "id": entry["id"],
                    "rating": rating,
                    "answer_1": entry["answer_1"],
                    "winner": winner,
                }
            )
    return pd.DataFrame(rows, columns=["item", "id", "rating", "answer_1", "winner"])


def agreement(human: pd.DataFrame, judge: pd.DataFrame) -> dict[str, float]:
    """How far the judge agrees with the human ratings on the items both decided.

    Both frames have `id` and `winner` (a model's name or "tie"; missing = undecided). Returns n, the share
    of identical verdicts and Cohen's kappa: agreement beyond chance, NaN where it is undefined (both
    always gave the same single verdict).
    """
    for name, frame in (("human", human), ("judge", judge)):
        if not frame["id"].is_unique:
            raise ValueError(f"{name} ratings hold an item more than once")
    both = human[["id", "winner"]].dropna().merge(judge[["id", "winner"]].dropna(), on="id", suffixes=("_h", "_j"))
    if both.empty:
        return {"n": 0, "agreement": math.nan, "kappa": math.nan}
    labels = sorted(set(both["winner_h"]) | set(both["winner_j"]))
    # One verdict from both sides leaves nothing beyond chance to measure.
    kappa = cohen_kappa_score(both["winner_h"], both["winner_j"], labels=labels) if len(labels) > 1 else math.nan
    return {
        "n": len(both),
        "agreement": float((both["winner_h"] == both["winner_j"]).mean()),
        "kappa": float(kappa),
    }


def judge_agreement(ratings_csv: str, sheet_dir: Path, pairs: pd.DataFrame) -> dict[str, float]:
    """How often the judge's pairwise verdicts (`judge.Judgement.pairs`) agree with filled human ratings of
    the blind sheet."""
    ratings = import_ratings(ratings_csv, sheet_dir / "sheet_key.json").dropna(subset=["winner"])
    verdicts = pairs.dropna(subset=["final"])
    winners = verdicts.apply(lambda p: p["model_" + p["final"]] if p["final"] != "tie" else "tie", axis=1)
    return agreement(ratings[["id", "winner"]], pd.DataFrame({"id": verdicts["id"], "winner": winners}))
