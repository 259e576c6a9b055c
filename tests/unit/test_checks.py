import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tunebook.checks import check_answer, check_answers, extract_code, read_benchmark, run_checks
from tunebook.params import CheckParams, ParamsError, load_params


def python_check(**fields) -> CheckParams:
    return CheckParams(name="code", kind="python", **fields)


# --- regex and contains ----------------------------------------------------------------------------------


def test_regex_check_matches_anywhere_and_can_ignore_case():
    check = CheckParams(name="version", kind="regex", pattern=r"\bv\d+\.\d+\b")
    assert check_answer(check, "Install v2.10 first.") == (True, "", True)
    assert check_answer(check, "Install V2.10 first.") == (False, r"no match for /\bv\d+\.\d+\b/", True)
    assert check_answer(check.model_copy(update={"ignore_case": True}), "Install V2.10 first.")[0]


def test_contains_check_is_case_sensitive_unless_told():
    check = CheckParams(name="torque", kind="contains", value="12 Nm")
    assert check_answer(check, "Tighten to 12 Nm.") == (True, "", True)
    assert check_answer(check, "Tighten to 12 NM.") == (False, "does not contain '12 Nm'", True)
    assert check_answer(check.model_copy(update={"ignore_case": True}), "Tighten to 12 NM.") == (True, "", True)


# --- python ----------------------------------------------------------------------------------------------


def test_code_that_prints_the_expected_value_passes():
    answer = "Sum them:\n\n```python\nprint(sum(range(4)))\n```\n\nThat prints 6."
    assert check_answer(python_check(expected=6), answer) == (True, "", True)


def test_code_that_prints_something_else_fails_with_what_it_printed():
    assert check_answer(python_check(expected=6), "print(sum(range(5)))") == (False, "printed '10', expected 6", True)


def test_code_that_loops_forever_times_out_as_a_fail_that_did_not_complete():
    answer = "```python\nwhile True:\n    pass\n```"
    assert check_answer(python_check(expected=1, timeout_s=1), answer) == (False, "timed out after 1 s", False)


def test_code_that_raises_fails_with_the_exception_and_did_not_complete():
    verdict = check_answer(python_check(expected=1), "```py\nprint(1 / 0)\n```")
    assert verdict == (False, "exited with code 1: ZeroDivisionError: division by zero", False)


def test_expression_is_evaluated_after_the_code_and_compared_as_json():
    answer = "```python\ndef span(xs):\n    return (min(xs), max(xs))\n```"
    assert check_answer(python_check(expression="span([3, 1, 2])", expected=[1, 3]), answer) == (True, "", True)
    verdict = check_answer(python_check(expression="span([5])", expected=[1, 3]), answer)
    assert verdict == (False, "span([5]) gave '(5, 5)', expected [1, 3]", True)


def test_expression_with_an_undefined_name_fails():
    verdict = check_answer(python_check(expression="add(2, 3)", expected=5), "def plus(a, b): return a + b")
    assert not verdict.passed and not verdict.completed
    assert verdict.reason.startswith("exited with code 1: NameError: name 'add' is not defined")


def test_code_that_exits_early_by_itself_is_a_completed_fail():
    verdict = check_answer(python_check(expression="add(2, 3)", expected=5), "import sys\nsys.exit(0)")
    assert verdict == (False, "the code exited before add(2, 3) could be evaluated", True)


def test_code_runs_isolated_in_an_empty_directory_without_our_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("ours")
    code = "import os, sys\nprint(sorted(os.listdir('.')), 'OPENAI_API_KEY' in os.environ, sys.flags.isolated)"
    assert check_answer(python_check(expected="['answer.py'] False 1"), code) == (True, "", True)


def test_check_answers_runs_python_checks_concurrently_in_the_order_given():
    answers = [f"import time\ntime.sleep(0.5)\nprint({n})" for n in (6, 7, 6, 5)]
    verdicts = check_answers(python_check(expected=6, timeout_s=3), answers, workers=4)
    assert [verdict.passed for verdict in verdicts] == [True, False, True, False]
    assert verdicts[3] == (False, "printed '5', expected 6", True)
    assert check_answers(CheckParams(name="c", kind="contains", value="6"), ["6", "7"]) == [
        (True, "", True),
        (False, "does not contain '6'", True),
    ]


def test_extract_code_takes_the_first_python_block_and_skips_other_languages():
    answer = "Run:\n```bash\npip install x\n```\nthen\n```python\nimport x\n```\nand\n```python\nlater()\n```"
    assert extract_code(answer) == "import x\n"
    assert extract_code("```\nprint(2)\n```") == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"


# --- run_checks ------------------------------------------------------------------------------------------


def test_run_checks_gives_a_column_per_check_nan_where_it_does_not_apply():
    answers = pd.DataFrame(
        {
            "question": ["What torque for the M6 bolt?", "Which tool opens the panel?", "Torque for M8?"],
            "prediction": ["12 Nm", "A hex key.", "20 nm"],
        },
        index=[10, 11, 12],
    )
    checks = [
        CheckParams(name="newtons", kind="regex", pattern=r"\d+ Nm", applies_to="(?i)torque"),
        CheckParams(name="short", kind="regex", pattern=r"^.{0,12}$"),
    ]
    results = run_checks(answers, checks)
    assert list(results.index) == [10, 11, 12]
    assert list(results.columns) == ["check_newtons", "check_newtons_reason", "check_short", "check_short_reason"]
    assert results.loc[10, "check_newtons"] == 1.0 and results.loc[12, "check_newtons"] == 0.0
    assert math.isnan(results.loc[11, "check_newtons"])
    assert results.loc[12, "check_newtons_reason"] == r"no match for /\d+ Nm/"
    assert pd.isna(results.loc[10, "check_newtons_reason"])
    assert results["check_short"].tolist() == [1.0, 1.0, 1.0]


def test_run_checks_applies_each_benchmark_items_own_check(workdir):
    path = workdir / "bench.jsonl"
    lines = [
        {"prompt": "Square of 7 in Python?", "reference": "print(7 ** 2)", "check": {"kind": "python", "expected": 49}},
        {"prompt": "Name the unit of torque.", "reference": "Newton metre"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = read_benchmark("bench.jsonl")
    answers = pd.DataFrame(
        {
            "question": [row["messages"][0]["content"] for row in rows],
            "prediction": ["```python\nprint(7 * 7)\n```", "newton metre"],
            "check": [row["check"] for row in rows],
        }
    )
    results = run_checks(answers, [CheckParams(name="unit", kind="contains", value="Newton", ignore_case=True)])
    assert results["check_benchmark"].tolist()[0] == 1.0
    assert math.isnan(results["check_benchmark"].tolist()[1])
    assert results["check_unit"].tolist() == [0.0, 1.0]


# --- params ----------------------------------------------------------------------------------------------


def write_params(tmp_path: Path, evaluate: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("ingest:\n  stdlib_modules: [json]\nevaluate:\n" + evaluate)
    return path


def test_checks_load_from_params(tmp_path):
    path = write_params(
        tmp_path,
        "  checks:\n"
        "    - {name: cites, kind: regex, pattern: '\\[\\d+\\]'}\n"
        "    - {name: runs, kind: python, expected: null, expression: main(), timeout_s: 2, applies_to: code}\n"
        "    - {name: big, kind: python, expected: 1, memory_mb: 2048, max_processes: 4}\n",
    )
    checks = load_params(path).evaluate.checks
    assert [c.name for c in checks] == ["cites", "runs", "big"]
    assert checks[1].expected is None and checks[1].timeout_s == 2
    assert (checks[1].memory_mb, checks[1].max_processes) == (512, 32)
    assert (checks[2].memory_mb, checks[2].max_processes) == (2048, 4)


def test_a_python_checks_memory_limit_leaves_room_for_python(tmp_path):
    path = write_params(tmp_path, "  checks:\n    - {name: c, kind: python, expected: 1, memory_mb: 16}\n")
    with pytest.raises(ParamsError, match=r"p.yaml:5: evaluate.checks.0.memory_mb: Input should be greater than or"):
        load_params(path)


def test_bad_check_regex_is_one_line_naming_file_line_and_key(tmp_path):
    path = write_params(
        tmp_path,
        "  checks:\n    - name: ok\n      kind: regex\n      pattern: x\n"
        "    - name: bad\n      kind: regex\n      pattern: '(unclosed'\n",
    )
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == (
        f"{path}:10: evaluate.checks.1.pattern: not a valid regex "
        "(missing ), unterminated subpattern at position 0) (got '(unclosed')"
    )


def test_bad_applies_to_regex_is_rejected(tmp_path):
    path = write_params(tmp_path, "  checks:\n    - {name: c, kind: contains, value: x, applies_to: '[a-'}\n")
    with pytest.raises(ParamsError, match=r"p.yaml:5: evaluate.checks.0.applies_to: not a valid regex"):
        load_params(path)


def test_check_missing_its_kinds_field(tmp_path):
    path = write_params(tmp_path, "  checks:\n    - {name: runs, kind: python}\n")
    with pytest.raises(ParamsError, match=r"p.yaml:5: evaluate.checks.0: check 'runs' \(python\) needs expected$"):
        load_params(path)


def test_check_key_typo_gets_a_suggestion(tmp_path):
    path = write_params(tmp_path, "  checks:\n    - name: c\n      kind: regex\n      patern: x\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:7: evaluate.checks.0.patern: unknown key (did you mean 'pattern'?)"


def test_check_names_must_be_unique(tmp_path):
    path = write_params(
        tmp_path, "  checks:\n    - {name: c, kind: contains, value: x}\n    - {name: c, kind: contains, value: y}\n"
    )
    with pytest.raises(ParamsError, match=r"evaluate: check names must be unique, got \['c', 'c'\]"):
        load_params(path)


def test_benchmark_file_is_resolved_against_the_workdir(tmp_path, workdir):
    path = write_params(tmp_path, "  benchmark_file: mine/bench.jsonl\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: evaluate.benchmark_file: no such file: {workdir / 'mine/bench.jsonl'}"
    (workdir / "mine").mkdir()
    (workdir / "mine/bench.jsonl").write_text('{"prompt": "p", "reference": "r"}\n')
    assert load_params(path).evaluate.benchmark_file == "mine/bench.jsonl"


# --- the benchmark file ----------------------------------------------------------------------------------


def test_benchmark_rows_have_the_test_split_shape(workdir):
    (workdir / "bench.jsonl").write_text(
        '{"prompt": "What does `ls -a` show?", "reference": "Hidden files too."}\n'
        "\n"
        '{"prompt": "Torque?", "reference": "12 Nm", "check": {"name": "nm", "kind": "regex", "pattern": "Nm"}}\n'
    )
    rows = read_benchmark(workdir / "bench.jsonl")
    assert rows[0]["messages"] == [
        {"role": "user", "content": "What does `ls -a` show?"},
        {"role": "assistant", "content": "Hidden files too."},
    ]
    assert rows[0]["check"] is None and rows[0]["split"] == "benchmark"
    assert rows[1]["check"] == {"name": "nm", "kind": "regex", "pattern": "Nm"}
    assert rows[0]["id"].startswith("bench-") and rows[0]["id"] != rows[1]["id"]
    assert read_benchmark("bench.jsonl") == rows  # relative to the workdir


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "reference": ', "not valid JSON (Expecting value at column 30)"),
        ('["p", "r"]', "expected a JSON object with prompt, reference, check"),
        ('{"reference": "r"}', 'missing "prompt"'),
        ('{"prompt": "p"}', 'missing "reference"'),
        ('{"prompt": "", "reference": "r"}', '"prompt" must be a non-empty string'),
        ('{"prompt": "p", "reference": "r", "chek": {}}', 'unknown key "chek" (expected prompt, reference, check)'),
        ('{"prompt": "p", "reference": "r", "check": "regex"}', '"check" must be an object like a params check'),
        (
            '{"prompt": "p", "reference": "r", "check": {"kind": "regex", "pattern": "(x"}}',
            "check.pattern: not a valid regex (missing ), unterminated subpattern at position 0)",
        ),
        ('{"prompt": "p", "reference": "r", "check": {"kind": "sql"}}', "check.kind: Input should be"),
        ('{"prompt": "first", "reference": "again"}', "duplicate prompt (first on line 1)"),
    ],
)
def test_bad_benchmark_line_names_file_and_line(workdir, line, message):
    path = workdir / "bench.jsonl"
    path.write_text('{"prompt": "first", "reference": "r"}\n{"prompt": "second", "reference": "r"}\n' + line + "\n")
    with pytest.raises(ParamsError) as err:
        read_benchmark(path)
    assert str(err.value).startswith(f"{path}:3: {message}")


def test_empty_or_missing_benchmark_file(workdir):
    (workdir / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ParamsError, match=r"empty.jsonl: no benchmark items$"):
        read_benchmark("empty.jsonl")
    with pytest.raises(ParamsError, match=r"nowhere.jsonl: no such benchmark file$"):
        read_benchmark("nowhere.jsonl")
