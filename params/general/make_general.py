"""Writes the offline general-ability set next to this file, from the documentation of Python standard-library
modules outside the demo's domain (so nothing the demo trains on): held-out text for perplexity, and a small
multiple-choice task for lm-evaluation-harness (which function a description belongs to). Beside them, a general
instruction set from yet other modules, for `sft.mix`: general data to train on that shares nothing with the set
it is measured on.

    .venv/bin/python params/general/make_general.py

The files are committed: the set must not change with the Python that runs the tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
from pathlib import Path

from tunebook.files import sha256_text
from tunebook.ingest import _public_members

# Not among params/demo.yaml's ingest.stdlib_modules, and documented in plain English.
MODULES = ["itertools", "calendar", "fractions", "ipaddress", "uuid", "zipfile", "hashlib", "secrets", "enum"]
# The general instructions to mix into SFT: neither the demo's domain nor the evaluation set's modules.
MIX_MODULES = ["queue", "sched", "gzip", "tarfile", "colorsys", "plistlib", "graphlib", "contextlib", "zlib", "wave"]
HERE = Path(__file__).parent
# Short enough that a question and any choice fit the tiny model's 256 positions, whatever its vocabulary.
MAX_CHARS = 160


def descriptions(modules: list[str]) -> list[tuple[str, str]]:
    """(qualified name, the first paragraph of its docstring) for each public function and class."""
    found = []
    for name in modules:
        module = importlib.import_module(name)
        for member_name, member in _public_members(module):
            # Its own docstring: an inherited one (an exception's) describes its base.
            doc = inspect.cleandoc(member.__doc__ or "").split("\n\n")[0].replace("\n", " ").strip()
            if 20 <= len(doc) <= MAX_CHARS and member_name not in doc.split()[0]:
                found.append((f"{name}.{member_name}", doc))
    unique = {doc: qualname for qualname, doc in reversed(found)}  # a description two names share is kept once
    return [(qualname, doc) for qualname, doc in found if unique[doc] == qualname]


def main() -> None:
    rng = random.Random(0)
    found = descriptions(MODULES)
    texts = [{"id": sha256_text(qualname)[:12], "title": qualname, "text": doc} for qualname, doc in found]
    items = []
    for qualname, doc in found:
        others = rng.sample([d for q, d in found if q != qualname and d != doc], 3)
        choices = [doc, *others]
        rng.shuffle(choices)
        question = f"Which sentence describes `{qualname}`?"
        items.append(
            {"id": sha256_text(question)[:12], "question": question, "choices": choices, "answer": choices.index(doc)}
        )
    instructions = [
        {
            "id": sha256_text(qualname)[:12],
            "messages": [
                {"role": "user", "content": f"What does `{qualname}` do?"},
                {"role": "assistant", "content": doc},
            ],
        }
        for qualname, doc in descriptions(MIX_MODULES)
    ]
    for file, rows in (("stdlib_text.jsonl", texts), ("stdlib_mc.jsonl", items), ("stdlib_chat.jsonl", instructions)):
        (HERE / file).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(texts)} passages, {len(items)} questions from {', '.join(MODULES)}; {len(instructions)} instructions")


if __name__ == "__main__":
    main()
