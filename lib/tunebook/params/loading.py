"""Loading a params file: YAML, `--set` overrides, validation, and the one line that names a problem.

The first problem is reported as one line naming the file, line and key path (or the `--set` that gave the
key); the files a run will read are checked before any work starts.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunebook import paths, recipe
from tunebook.files import corpus_files, describe_counts, ignored_extensions
from tunebook.params.blocks import MOVED
from tunebook.params.safety import holds_secret, model_dir_problem
from tunebook.params.schema import IN_STAGE, SHARED_SECTIONS, TINY, Params, error_message

# Keys of earlier params files that tunebook itself renamed, with what they are called now and why.
RENAMED = {
    "generate.max_answer_chars": (
        "generate.extractive_answer_chars (the extractive teacher's longest answer; "
        "generate.filters.max_answer_chars caps every teacher's)"
    ),
    "evaluate.n_worst": "evaluate.changed_most (the items whose answers changed most, not the worst ones)",
}


class ParamsError(Exception):
    """A params problem, already phrased as the one line the user sees."""


def load_params(path: str | Path, overrides: list[str] = ()) -> Params:
    """Read, override and validate a params file; raises ParamsError with a single line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ParamsError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    # Each override's key as validation errors name it (list items by index) -> as it was written.
    written = dict(_apply_override(raw, override) for override in overrides)
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, path, text, written)) from None
    _check_files(params, path)
    return params


def _apply_override(raw: dict, override: str) -> tuple[str, str]:
    """Apply one `--set KEY=VALUE` to the raw params. An item of a list of sections is reached by its name
    (`generate.teachers.gpt.max_new_tokens`) or its index. Returns the key as validation errors name it (an
    item by its index) and the key as written."""
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"--set {override}: expected key.path=value")
    parts = key.split(".")
    node: Any = raw
    model: type[BaseModel] | None = Params  # the schema of `node`, for the defaults of a list it reaches into
    resolved: list[str] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index: int | str = _item_index(node, part, key, ".".join(resolved))
        elif isinstance(node, dict):
            index = part
            if not last and part not in node:
                node[part] = _schema_default(model, part)
            model = _field_model(model, part)
        else:
            raise ParamsError(f"--set {key}: '{parts[depth - 1]}' is not a section")
        resolved.append(str(index))
        if last:
            node[index] = override_value(value)
        else:
            node = node[index]
    return ".".join(resolved), key


def _item_index(items: list, part: str, key: str, where: str) -> int:
    if part.isdigit():
        if int(part) < len(items):
            return int(part)
        raise ParamsError(f"--set {key}: {where} has {len(items)} items")
    names = [str(item.get("name")) if isinstance(item, dict) else None for item in items]
    if part in names:
        return names.index(part)
    known = [name for name in names if name is not None]
    if not known:
        raise ParamsError(f"--set {key}: the items of {where} have no names; give an index")
    raise ParamsError(f"--set {key}: {where} has no item named '{part}' (its names: {', '.join(known)})")


def _field_model(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section model of a field (of its items, for a list of sections), or None for plain values."""
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _schema_default(model: type[BaseModel] | None, name: str) -> Any:
    """What a section the file leaves out starts from: a list keeps its default items (so that --set can name
    them), anything else starts empty and validates to its defaults."""
    if model is None or name not in model.model_fields:
        return {}
    default = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, list):
        return [item.model_dump() if isinstance(item, BaseModel) else item for item in default]
    return {}


def override_value(value: str) -> Any:
    # YAML parsing gives `--set sft.lora.r=8` an int and `--set evaluate.models=[base]` a list.
    return yaml.safe_load(value) if value.strip() else ""


def _describe(err: ValidationError, path: Path, text: str, written: dict[str, str]) -> str:
    first = err.errors()[0]
    loc = _error_loc(first)
    key = ".".join(loc)
    given = _written_key(key, written)
    where = f"--set {given}" if given else f"{path}:{_line_of(text, loc)}: {key}"
    if first["type"] == "extra_forbidden":
        dotted = ".".join(part for part in loc if not part.isdigit())
        if moved := MOVED.get(dotted):
            return f"{where}: moved to {moved}, under the library's own name"
        if renamed := RENAMED.get(dotted):
            return f"{where}: renamed {renamed}"
        hint = _did_you_mean(loc)
        return f"{where}: unknown key{hint}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {error_message(first)}{got_text}"


def _error_loc(error: dict) -> list[str]:
    """The key path of a validation error; a pass-through block's error names the key inside the block."""
    loc = [str(part) for part in error["loc"]]
    return [*loc, error["ctx"]["key"]] if error["type"] == recipe.ERROR_TYPE else loc


def _written_key(key: str, written: dict[str, str]) -> str | None:
    """The --set key (as written) that set this key or a section holding it, if one did."""
    for resolved, given in written.items():
        if key == resolved or key.startswith(resolved + "."):
            return given + key[len(resolved) :]
    return None


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] | None = Params
    for part in loc[:-1]:
        if not part.isdigit():  # an item of a list of sections, e.g. evaluate.checks.0, is its list's model
            model = _field_model(model, part)
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _line_of(text: str, loc: list[str]) -> int:
    """The 1-based line of a key path in the YAML source, or of its deepest existing parent."""
    node = yaml.compose(text)
    line = 1
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def _check_files(params: Params, path: Path) -> None:
    _check_corpus(params, path)
    base = params.sft.base_model
    if base != TINY and _looks_like_path(base) and not paths.resolve(base).is_dir():
        raise ParamsError(f"{path}: sft.base_model: no such model directory: {paths.resolve(base)}")
    for key, model in _transformers_models(params):
        directory = paths.resolve(model)
        problem = model != TINY and directory.is_dir() and model_dir_problem(directory)
        if problem:
            raise ParamsError(f"{path}: {key}: {problem}")
    config = params.sft.base_config
    if config and not _resolve_beside(config, path).is_file():
        raise ParamsError(f"{path}: sft.base_config: no such file: {config}")
    for key in ("benchmark_file", "human_ratings"):
        given = getattr(params.evaluate, key)
        if given and not paths.resolve(given).is_file():
            raise ParamsError(f"{path}: evaluate.{key}: no such file: {paths.resolve(given)}")


def _check_corpus(params: Params, path: Path) -> None:
    corpus = paths.resolve(params.ingest.corpus_dir)
    if params.ingest.stdlib_modules:
        # The demo corpus is written there, and a run writes under data/ and reports/ only unless told otherwise.
        roots = [paths.data_dir().resolve(), paths.reports_dir().resolve()]
        if not params.run.allow_outside_paths and not any(corpus.resolve().is_relative_to(r) for r in roots):
            raise ParamsError(
                f"{path}: ingest.corpus_dir: the demo corpus (ingest.stdlib_modules) would be written to {corpus}, "
                f"outside {roots[0]} and {roots[1]}; set run.allow_outside_paths: true to allow it"
            )
    elif not corpus.is_dir():
        raise ParamsError(f"{path}: ingest.corpus_dir: no such directory: {corpus}")
    elif not corpus_files(corpus, params.ingest.extensions):
        extensions = ", ".join(params.ingest.extensions)
        ignored = ignored_extensions(corpus, params.ingest.extensions)
        found = f" (it has {describe_counts(ignored)})" if ignored else ""
        raise ParamsError(f"{path}: ingest.corpus_dir: no files with the extensions {extensions} in {corpus}{found}")


def _transformers_models(params: Params) -> list[tuple[str, str]]:
    """(key, model) for each model a run loads with transformers by name: the base, hf teachers and hf judges."""
    teachers = [(f"generate.teachers.{i}.model", t) for i, t in enumerate(params.generate.teachers)]
    judges = [(f"{stage}.judge.model", getattr(params, stage).judge) for stage in ("evaluate", "dpo", "rl")]
    hf = [(key, spec.model) for key, spec in teachers + judges if spec.backend == "hf" and spec.model]
    return [("sft.base_model", params.sft.base_model), *hf]


def _looks_like_path(name: str) -> bool:
    # An HF hub id is "org/name"; anything rooted, relative or with more parts is a local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _resolve_beside(name: str, params_path: Path) -> Path:
    """Files named in a params file are looked up next to it first, then in the workdir."""
    beside = params_path.parent / name
    return beside if beside.exists() else paths.resolve(name)


def base_config_path(params: Params, params_path: Path) -> Path | None:
    return _resolve_beside(params.sft.base_config, params_path) if params.sft.base_config else None


def mask_override(override: str) -> str:
    """A `--set KEY=VALUE` as a manifest may record it: the value masked when the key looks secret."""
    key, _, value = override.partition("=")
    return f"{key}=***" if holds_secret(key.rsplit(".", 1)[-1], override_value(value)) else override


def section(name: str, namespace: dict[str, Any]) -> BaseModel:
    """A section's params from a notebook's variables, validated the same way as a params file.

    A stage's own keys are variables of the parameters cell; a shared section (`chroma`) is one dict
    variable. A notebook edited in JupyterLab gets the same checks and one-line errors as a run, and a model
    named `tiny` is refused: the run builds it and hands the stage its directory.
    """
    model: type[BaseModel] = Params.model_fields[name].annotation
    shared = any(name in names for names in SHARED_SECTIONS.values())
    try:
        values = namespace[name] if shared else {key: namespace[key] for key in model.model_fields}
        return model.model_validate(values, context=IN_STAGE)
    except KeyError as err:
        raise ParamsError(f"{name}: the parameters cell does not define {err.args[0]}") from None
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join([name, *_error_loc(first)])
        got = "" if first["type"] == recipe.ERROR_TYPE else f" (got {first.get('input')!r})"
        raise ParamsError(f"{key}: {error_message(first)}{got}") from None
