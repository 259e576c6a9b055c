"""Domain checks on answers (a regex, a substring, or code that runs and gives the expected value) and the
user's own benchmark file, whose items may each carry such a check."""

from __future__ import annotations

import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from pydantic import ValidationError

from tunebook import paths, sandbox
from tunebook.files import sha256_text
from tunebook.params import CheckParams, ParamsError

# The check of a benchmark item that names none; all such checks share one column, check_benchmark.
BENCHMARK_CHECK = "benchmark"


class Verdict(NamedTuple):
    passed: bool
    reason: str  # why it failed; empty on a pass
    # False when the answer's code did not run to its end (it raised, was killed, timed out or hit a sandbox
    # limit): RL scores such an answer None, evaluation counts it as a fail.
    completed: bool


def run_checks(answers: pd.DataFrame, checks: list[CheckParams]) -> pd.DataFrame:
    """Per answer and check, check_<name>: 1.0 pass, 0.0 fail, NaN where the check does not apply, and
    check_<name>_reason: why it failed (missing otherwise).

    `answers` has `question` and `prediction` columns (evaluate's examples) and may have `check`: a
    benchmark item's own check, as read_benchmark gives it. The result is indexed like `answers`, so
    `answers.join(run_checks(answers, checks))` lines up.
    """
    row_checks = answers["check"] if "check" in answers else pd.Series(None, index=answers.index, dtype=object)
    params_names = {check.name for check in checks}
    jobs: list[tuple[object, CheckParams, str]] = []  # (index, check, answer)
    for index, question, prediction, row_check in zip(
        answers.index, answers["question"], answers["prediction"], row_checks, strict=True
    ):
        applicable = list(checks)
        if isinstance(row_check, dict):
            own = CheckParams.model_validate(row_check)
            if own.name in params_names:
                raise ValueError(f"benchmark check '{own.name}' has the name of a params check; rename one")
            applicable.append(own)
        answer = prediction if isinstance(prediction, str) else ""
        for check in applicable:
            if applies(check, question):
                jobs.append((index, check, answer))
    outcomes: dict[str, dict] = {check.name: {} for check in checks}
    verdicts = _check_all([(check, answer) for _, check, answer in jobs])
    for (index, check, _), verdict in zip(jobs, verdicts, strict=True):
        outcomes.setdefault(check.name, {})[index] = verdict
    columns = {}
    for name, by_index in outcomes.items():
        columns[f"check_{name}"] = pd.Series({i: float(v.passed) for i, v in by_index.items()}, dtype=float)
        columns[f"check_{name}_reason"] = pd.Series({i: v.reason or None for i, v in by_index.items()})
    return pd.DataFrame(columns, index=answers.index)


def applies(check: CheckParams, question: str) -> bool:
    """Whether a check scores the answer to this question: its applies_to regex is found in it, or it has none."""
    return check.applies_to is None or re.search(check.applies_to, str(question)) is not None


def check_answers(check: CheckParams, answers: list[str], workers: int | None = None) -> list[Verdict]:
    """check_answer on each answer, in order; python checks run `workers` at a time (default: one per CPU)."""
    return _check_all([(check, answer) for answer in answers], workers)


def _check_all(jobs: list[tuple[CheckParams, str]], workers: int | None = None) -> list[Verdict]:
    if all(check.kind != "python" for check, _ in jobs):
        return [check_answer(check, answer) for check, answer in jobs]
    # Threads are enough: each python check waits on its own sandboxed process.
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(lambda job: check_answer(*job), jobs))


def check_answer(check: CheckParams, answer: str) -> Verdict:
    """Whether one answer passes one check, and if not, why (an empty reason on a pass). Raises
    sandbox.SandboxError for a python check on a machine where the sandbox cannot run."""
    flags = re.IGNORECASE if check.ignore_case else 0
    if check.kind == "regex":
        passed = re.search(check.pattern, answer, flags) is not None
        return Verdict(passed, "" if passed else f"no match for /{check.pattern}/", True)
    if check.kind == "contains":
        haystack, needle = (answer.casefold(), check.value.casefold()) if check.ignore_case else (answer, check.value)
        passed = needle in haystack
        return Verdict(passed, "" if passed else f"does not contain {check.value!r}", True)
    return _run_python(check, extract_code(answer))


# An opening fence's label, its block, and the closing fence at the start of a line.
FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
PYTHON_LABELS = {"python", "python3", "py", ""}


def extract_code(answer: str) -> str:
    """The answer's first Python (or unlabelled) fenced block, or the whole answer when it has none."""
    for label, block in FENCE.findall(answer):
        if label.lower() in PYTHON_LABELS:
            return block
    return answer


# Runs the answer as __main__, then evaluates the check's expression in what it defined and writes the
# value as JSON where it can be (so a tuple equals the list a params file can hold), else as its repr.
HARNESS = """\
import json, runpy, sys
namespace = runpy.run_path(sys.argv[1], run_name="__main__")
value = eval(sys.argv[2], namespace)
try:
    result = {"json": json.loads(json.dumps(value)), "repr": repr(value)}
except (TypeError, ValueError):
    result = {"repr": repr(value)}
with open(sys.argv[3], "w", encoding="utf-8") as f:
    json.dump(result, f)
"""


def _run_python(check: CheckParams, code: str) -> Verdict:
    limits = sandbox.Limits(timeout_s=check.timeout_s, memory_mb=check.memory_mb, processes=check.max_processes)
    with tempfile.TemporaryDirectory(prefix="tunebook-check-") as workdir:
        Path(workdir, "answer.py").write_text(code, encoding="utf-8")
        args = ["answer.py"] if check.expression is None else ["-c", HARNESS, "answer.py", check.expression, "out.json"]
        outcome = sandbox.run_python(args, Path(workdir), limits)
        if outcome.stopped is not None:
            return Verdict(False, outcome.stopped, False)
        if outcome.returncode != 0:
            lines = outcome.stderr.strip().splitlines()
            reason = f"exited with code {outcome.returncode}: {lines[-1] if lines else 'no error output'}"
            return Verdict(False, reason, False)
        if check.expression is None:
            printed = outcome.stdout.strip()
            passed = printed == str(check.expected).strip()
            return Verdict(passed, "" if passed else f"printed {_clip(printed)}, expected {check.expected!r}", True)
        result_path = Path(workdir, "out.json")
        if not result_path.exists():
            # It ran to its own end, sys.exit(0) say: a wrong answer, not a broken one.
            return Verdict(False, f"the code exited before {check.expression} could be evaluated", True)
        result = json.loads(result_path.read_text(encoding="utf-8"))
    if "json" in result:
        passed = result["json"] == json.loads(json.dumps(check.expected))
    else:
        passed = result["repr"] == check.expected
    reason = "" if passed else f"{check.expression} gave {_clip(result['repr'])}, expected {check.expected!r}"
    return Verdict(passed, reason, True)


def _clip(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- the user's benchmark file -----------------------------------------------------------------------------

BENCHMARK_KEYS = ("prompt", "reference", "check")


def read_benchmark(path: str | Path) -> list[dict]:
    """The items of a benchmark JSONL file as test-split rows: id, messages, check and split="benchmark".

    Each line is {"prompt": str, "reference": str, "check": optional, shaped like a params check with the
    name optional}. A relative path is taken from the workdir. Bad input raises ParamsError naming the
    file and line.
    """
    path = paths.resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such benchmark file") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not UTF-8 text") from None
    rows: list[dict] = []
    first_seen: dict[str, int] = {}
    # Split on newlines only: str.splitlines() also splits on U+2028, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        item = _benchmark_item(line, where)
        row_id = "bench-" + sha256_text(item["prompt"])[:16]
        if row_id in first_seen:
            raise ParamsError(f"{where}: duplicate prompt (first on line {first_seen[row_id]})")
        first_seen[row_id] = number
        messages = [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item["reference"]}]
        rows.append({"id": row_id, "messages": messages, "check": item["check"], "split": "benchmark"})
    if not rows:
        raise ParamsError(f"{path}: no benchmark items")
    return rows


def _benchmark_item(line: str, where: str) -> dict:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ParamsError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(item, dict):
        raise ParamsError(f"{where}: expected a JSON object with {', '.join(BENCHMARK_KEYS)}")
    unknown = [key for key in item if key not in BENCHMARK_KEYS]
    if unknown:
        raise ParamsError(f'{where}: unknown key "{unknown[0]}" (expected {", ".join(BENCHMARK_KEYS)})')
    for key in ("prompt", "reference"):
        if key not in item:
            raise ParamsError(f'{where}: missing "{key}"')
        if not isinstance(item[key], str) or not item[key].strip():
            raise ParamsError(f'{where}: "{key}" must be a non-empty string')
    check = item.get("check")
    if check is None:
        return {**item, "check": None}
    if not isinstance(check, dict):
        raise ParamsError(f'{where}: "check" must be an object like a params check')
    try:
        validated = CheckParams.model_validate({"name": BENCHMARK_CHECK, **check})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(["check", *(str(part) for part in first["loc"])])
        raise ParamsError(f"{where}: {key}: {first['msg'].removeprefix('Value error, ')}") from None
    return {**item, "check": validated.model_dump(exclude_unset=True)}
