import csv
import json
import math

import pandas as pd
import pytest

from tunebook.human import agreement, export_sheet, import_ratings
from tunebook.params import ParamsError

MODELS = ("alpha-model-7", "beta-model-9")


def answers(n: int = 12) -> pd.DataFrame:
    """Two models' answers; their texts say which model wrote them only through a word the test knows."""
    rows = []
    for i in range(n):
        question = f"Question {i}: what does <b>step {i}</b> do, and why?"
        for model, word in zip(MODELS, ("ALPHA", "BETA"), strict=True):
            prediction = f'{word} answer {i},\nwith a comma, "quotes" and <script>x</script> café'
            rows.append(
                {
                    "model": model,
                    "id": f"q{i}",
                    "question": question,
                    "reference": f"Ref {i}",
                    "prediction": prediction,
                    "f1": 0.5,
                }
            )
    return pd.DataFrame(rows)


def read_sheet(path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def write_sheet(path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sheet_is_blind_and_shuffled_per_row(tmp_path):
    sheet = export_sheet(answers(), MODELS, tmp_path, seed=3)
    csv_text, html_text = sheet.csv.read_text(encoding="utf-8"), sheet.html.read_text(encoding="utf-8")
    for model in MODELS:
        assert model not in csv_text and model not in html_text
    rows = read_sheet(sheet.csv)
    assert list(rows[0]) == ["Item", "Question", "Reference", "Answer 1", "Answer 2", "Rating"]
    assert len(rows) == 12 and all(row["Rating"] == "" for row in rows)
    firsts = [row["Answer 1"].split()[0] for row in rows]
    assert set(firsts) == {"ALPHA", "BETA"}  # both orders occur
    key = json.loads(sheet.key.read_text())["items"]
    assert [key[row["Item"]]["answer_1"] for row in rows] == [MODELS[0] if w == "ALPHA" else MODELS[1] for w in firsts]
    # Text is escaped, never markup: the answers' <script> must not run in the rater's browser.
    assert "<script>" not in html_text and "&lt;script&gt;x&lt;/script&gt; café" in html_text
    assert "<h2>Item 12</h2>" in html_text


def test_same_seed_same_sheet_other_seed_other_order(tmp_path):
    first = export_sheet(answers(), MODELS, tmp_path / "a", seed=3)
    again = export_sheet(answers(), MODELS, tmp_path / "b", seed=3)
    other = export_sheet(answers(), MODELS, tmp_path / "c", seed=4)
    assert first.csv.read_text() == again.csv.read_text()
    assert first.key.read_text() == again.key.read_text()
    assert first.csv.read_text() != other.csv.read_text()


def test_ratings_round_trip_unblinds_to_the_model_the_rater_preferred(tmp_path):
    sheet = export_sheet(answers(), MODELS, tmp_path, seed=0)
    rows = read_sheet(sheet.csv)
    # The rater prefers ALPHA on even q's and BETA on odd ones, ties q3, skips q4, pads q5 and shouts TIE on q6.
    expected = {}
    for row in rows:
        i = int(row["Item"]) - 1
        preferred = "ALPHA" if i % 2 == 0 else "BETA"
        row["Rating"] = "1" if row["Answer 1"].startswith(preferred) else "2"
        expected[f"q{i}"] = MODELS[0] if preferred == "ALPHA" else MODELS[1]
    rows[3]["Rating"], expected["q3"] = "tie", "tie"
    rows[4]["Rating"] = " "
    rows[5]["Rating"] = f" {rows[5]['Rating']} "
    rows[6]["Rating"], expected["q6"] = "TIE", "tie"
    write_sheet(sheet.csv, rows)
    ratings = import_ratings(sheet.csv, sheet.key)
    assert list(ratings.columns) == ["item", "id", "rating", "answer_1", "winner"]
    winners = ratings.set_index("id")["winner"]
    assert pd.isna(winners.pop("q4")) and pd.isna(ratings.loc[4, "rating"])
    assert winners.to_dict() == {item: winner for item, winner in expected.items() if item != "q4"}


def test_bad_rating_names_the_csv_line_of_its_row(tmp_path):
    sheet = export_sheet(answers(), MODELS, tmp_path, seed=0)
    rows = read_sheet(sheet.csv)
    rows[2]["Rating"] = "maybe"
    write_sheet(sheet.csv, rows)
    # Each row spans three lines (both answers hold a newline), so row 3 starts on line 1 + 3 * 2 + 1 = 8.
    with pytest.raises(ParamsError) as err:
        import_ratings(sheet.csv, sheet.key)
    assert str(err.value) == f"{sheet.csv}:8: rating must be 1, 2, tie or blank (got 'maybe')"


def test_ratings_against_another_sheets_key_are_refused(tmp_path):
    sheet = export_sheet(answers(), MODELS, tmp_path / "a", seed=0)
    other = answers().assign(question=lambda frame: "Another " + frame["question"])
    other_sheet = export_sheet(other, MODELS, tmp_path / "b", seed=0)
    with pytest.raises(ParamsError, match=r"sheet.csv:2: item 1's question is not the one sheet_key.json was"):
        import_ratings(sheet.csv, other_sheet.key)


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no answers from model 'gamma'"):
        export_sheet(answers(), ("alpha-model-7", "gamma"), tmp_path, seed=0)
    assert not any(tmp_path.iterdir())


def test_agreement_on_a_hand_computed_example():
    human = pd.DataFrame({"id": list("abcdefg"), "winner": ["A", "A", "B", "tie", "B", "A", None]})
    judge = pd.DataFrame({"id": list("abcdefgh"), "winner": ["A", "B", "B", "tie", "A", "A", "B", "B"]})
    result = agreement(human, judge)
    # Six items decided by both; 4 agree. Both give A 3 times, B twice, tie once: chance agreement is
    # (3*3 + 2*2 + 1*1) / 36 = 14/36, so kappa = (24/36 - 14/36) / (1 - 14/36) = 10/22.
    assert result["n"] == 6
    assert result["agreement"] == pytest.approx(4 / 6)
    assert result["kappa"] == pytest.approx(10 / 22)


def test_agreement_is_nan_kappa_when_both_always_say_the_same():
    same = pd.DataFrame({"id": ["a", "b"], "winner": ["A", "A"]})
    result = agreement(same, same)
    assert result["n"] == 2 and result["agreement"] == 1.0 and math.isnan(result["kappa"])
