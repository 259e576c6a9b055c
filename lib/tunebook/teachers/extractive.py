"""The extractive teacher: offline, deterministic questions whose answers are lifted from the chunk.

Questions come from the structure of the documents: a heading that names an API gives "what does X do"
(answered by the first sentence of its section) and "what is the signature of X" (answered by the
signature line in its code block); any other heading gives a question about that topic. Text under no
heading at all (a plain-text notice, a PDF page) gives, per paragraph, the opening words of a sentence to
continue, answered by the rest of it. Every answer is a verbatim span of the chunk (white space folded),
so the data is grounded by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEMPLATES = {
    "purpose": "What does `{name}` do?",
    "signature": "What is the signature of `{name}`?",
    "topic": "What does the documentation say about {name}?",
    "continuation": 'In {document}, how does the sentence that begins "{opening}" go on?',
}
OPENING_WORDS = 6  # the words of a sentence a continuation question shows; the rest is its answer

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_API_NAME = re.compile(r"^[A-Za-z_][\w.]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    template: str


def ask(text: str, max_answer_chars: int, document: str | None = None) -> list[QA]:
    """All questions the teacher can ask about one chunk's text. `document` names the file of a chunk that no
    heading of its document stands above, whose text before its first heading then gives continuations."""
    pairs = []
    if document is not None:
        preamble = text[: m.start()] if (m := _HEADING.search(text)) else text
        pairs += _continuations(preamble, document, max_answer_chars)
    for heading, body in _sections(text):
        name = heading.strip("` ")
        sentence = _first_sentence(body, max_answer_chars)
        signature = _signature(body, name) if _API_NAME.match(name) else None
        # A heading names an API when its section shows a signature or the name is dotted (json.dumps).
        if signature or ("." in name and _API_NAME.match(name)):
            if signature and len(signature) <= max_answer_chars:
                pairs.append(QA(TEMPLATES["signature"].format(name=name), signature, "signature"))
            if sentence:
                pairs.append(QA(TEMPLATES["purpose"].format(name=name), sentence, "purpose"))
        elif sentence:
            pairs.append(QA(TEMPLATES["topic"].format(name=name), sentence, "topic"))
    return pairs


def _continuations(text: str, document: str, max_answer_chars: int) -> list[QA]:
    """Per paragraph, its first sentence long enough to continue: its opening words asked, the rest answered."""
    pairs = []
    for paragraph in re.split(r"\n\s*\n", _FENCE.sub("\n\n", text).split("```")[0]):
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            words = sentence.split()
            rest = " ".join(words[OPENING_WORDS:])
            if len(words) >= OPENING_WORDS + 4 and sentence[-1] in ".!?" and len(rest) <= max_answer_chars:
                opening = " ".join(words[:OPENING_WORDS])
                question = TEMPLATES["continuation"].format(document=document, opening=opening)
                pairs.append(QA(question, rest, "continuation"))
                break
    return pairs


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each section whose heading line is inside this chunk."""
    matches = list(_HEADING.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)] if matches else []
    return [(m.group(1), text[m.end() : end]) for m, end in zip(matches, ends, strict=True)]


def _signature(body: str, name: str) -> str | None:
    short = name.rsplit(".", 1)[-1]
    for block in _FENCE.findall(body):
        line = block.strip().splitlines()[0] if block.strip() else ""
        if re.match(rf"^(class\s+)?[\w.]*\b{re.escape(short)}\s*\(", line):
            return line
    return None


def _first_sentence(body: str, max_chars: int) -> str | None:
    # A fence cut off by the chunk boundary has no closing ```; drop everything from it onwards.
    prose = _FENCE.sub("\n\n", body).split("```")[0]
    for paragraph in re.split(r"\n\s*\n", prose):
        paragraph = " ".join(paragraph.split())
        if not paragraph or paragraph.startswith(("#", ">>>", "|")):
            continue
        sentence = _SENTENCE_END.split(paragraph, maxsplit=1)[0]
        if 20 <= len(sentence) <= max_chars and sentence[-1] in ".!?:":
            return sentence
        return None
    return None
