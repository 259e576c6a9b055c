"""Pass-through blocks: a stage's settings for TRL's, PEFT's and transformers' config classes, in their own words.

A params file writes `sft.trainer` as `trl.SFTConfig` fields, `sft.lora` as `peft.LoraConfig` fields, and so
on (alignment-handbook's way). Each block is checked against the real class when params load: an unknown key,
a value of the wrong type, or a field tunebook sets itself is refused with one line naming the key. tunebook's
real-model defaults (one dict per block, in tunebook.params) are merged under what the file gives, and a report
shows what the resolved configs change from the library's own defaults.

The libraries are imported only when a block has keys to check, so `import tunebook.params` stays light.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import importlib
import inspect
import typing
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    import pandas as pd

# The pydantic error type of a refused block key; its context names the key inside the block.
ERROR_TYPE = "library_field"

# transformers' deprecated aliases: a block that sets the old name leaves the new name's default out, or the
# default would win over it.
ALIASES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


@dataclass(frozen=True)
class Block:
    """One pass-through block: the class it becomes, tunebook's defaults under it, and the fields tunebook sets."""

    module: str  # where the class lives; imported only to check a block that has keys
    name: str  # the class
    defaults: dict[str, Any]
    owned: dict[str, str]  # field -> what tunebook does with it, or which tunebook key to set instead
    # Construct the class to let it check the values itself: for classes whose arguments carry no type hints.
    construct: bool = False


def resolve(block: Block, given: dict[str, Any]) -> dict[str, Any]:
    """tunebook's defaults for the block, overridden by the given keys (checked, and coerced to their types)."""
    checked = check(block, given) if given else {}
    dropped = {ALIASES[key] for key in checked if key in ALIASES}
    return {**{k: v for k, v in block.defaults.items() if k not in dropped}, **checked}


def activation_checkpointing(trainer: dict[str, Any]) -> bool:
    """Whether a TRL trainer block checkpoints activations: its new name, else transformers' deprecated alias,
    else TRL's default (on)."""
    for key in ("activation_checkpointing", "gradient_checkpointing"):
        if trainer.get(key) is not None:
            return bool(trainer[key])
    return True


def check(block: Block, given: dict[str, Any]) -> dict[str, Any]:
    """The given keys with their values typed; raises the block's one-line error for the first bad key."""
    fields = field_types(block.module, block.name)
    checked = {}
    for key, value in given.items():
        key = str(key)
        if key in block.owned:
            fail(key, f"tunebook sets this itself: {block.owned[key]}")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            fail(key, f"unknown {block.name} field" + (f" (did you mean '{close[0]}'?)" if close else ""))
        checked[key] = _typed(block, key, value)
    if block.construct:
        _construct(block, {**block.defaults, **checked}, list(checked))
    return checked


def fail(key: str, message: str) -> typing.NoReturn:
    raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "key": key})


@functools.cache
def field_types(module: str, name: str) -> dict[str, Any]:
    """The arguments the class takes and their type hints (None where a hint cannot be resolved: not checked).

    The arguments come from the signature: a dataclass's generated one, or a hand-written one such as
    BitsAndBytesConfig's (a dataclass by inheritance, whose fields are not its arguments)."""
    cls = getattr(importlib.import_module(module), name)
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = [p for p in inspect.signature(cls).parameters.values() if p.kind not in skipped]
    hints: dict[str, Any] = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
    if dataclasses.is_dataclass(cls):
        try:
            hints.update(typing.get_type_hints(cls))
        except Exception:  # an annotation that cannot be resolved: only the hints that are objects already count
            hints.update({f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)})
    return {p.name: hints.get(p.name) for p in parameters}


@functools.cache
def _adapter(module: str, name: str, key: str) -> TypeAdapter | None:
    hint = field_types(module, name)[key]
    if hint is None or isinstance(hint, str):  # an unresolved forward reference
        return None
    try:
        return TypeAdapter(hint)
    except Exception:  # a type pydantic cannot check (a torch dtype, another config class): left to the library
        return None


# What a checked value may be coerced to: plain data, so that params stay JSON (an enum or a dataclass would not).
PLAIN = (bool, int, float, str, type(None), list, dict)


def _typed(block: Block, key: str, value: Any) -> Any:
    adapter = _adapter(block.module, block.name, key)
    if adapter is None:
        return value
    try:
        typed = adapter.validate_python(value)
    except ValidationError as err:
        fail(key, f"{err.errors()[0]['msg']} (got {value!r})")
    # `--set sft.trainer.learning_rate=1e-4` arrives as the string '1e-4' (YAML 1.1): it is stored as the float.
    # A value already of an equal plain value (100 for 100.0) stays as written.
    if typed == value and type(value) in PLAIN:
        return value
    return typed if type(typed) in PLAIN else value


def _construct(block: Block, values: dict[str, Any], given: list[str]) -> None:
    cls = getattr(importlib.import_module(block.module), block.name)
    try:
        cls(**values)
    except (TypeError, ValueError) as err:
        message = str(err).splitlines()[0]
        key = next((k for k in given if k in message), given[0])
        fail(key, f"{block.name} refuses it: {message}")


def differences(configs: dict[str, Any]) -> pd.DataFrame:
    """The fields of each config object that differ from the library's defaults: what really trained, beyond
    what the library would have done by itself. `configs` maps a label to an SFTConfig, a LoraConfig... (None:
    left out). The defaults are the class's own, constructed on the same device (TRL's bf16 is on by default,
    even on a CPU), or as its signature declares them where that construction fails."""
    import pandas as pd

    rows = []
    for label, config in configs.items():
        if config is None:
            continue
        defaults = _defaults(config)
        for field, default in defaults.items():
            value = getattr(config, field, None)
            if not _same(value, default):
                rows.append(
                    {"config": label, "field": field, "value": _shown(value), "library default": _shown(default)}
                )
    return pd.DataFrame(rows, columns=["config", "field", "value", "library default"])


def _defaults(config: Any) -> dict[str, Any]:
    cls = type(config)
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = [p for p in inspect.signature(cls).parameters.values() if p.kind not in skipped]
    device = {"use_cpu": config.use_cpu} if hasattr(config, "use_cpu") else {}
    try:
        with warnings.catch_warnings():  # TRL's defaults set transformers' deprecated gradient_checkpointing
            warnings.simplefilter("ignore")
            default = cls(**device)
        return {p.name: getattr(default, p.name, None) for p in parameters}
    except (TypeError, ValueError):
        factories = (
            {f.name: f.default_factory for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        )
        return {
            p.name: p.default
            if factories.get(p.name, dataclasses.MISSING) is dataclasses.MISSING
            else factories[p.name]()
            for p in parameters
        }


def _same(value: Any, default: Any) -> bool:
    try:
        if value == default:  # 3 and 3.0 are the same setting
            return True
    except Exception:  # values that cannot be compared (tensors): by what they show
        pass
    return _shown(value) == _shown(default)


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, set | frozenset):
        value = sorted(value)
    return str(value)
