"""Teachers turn chunks into question/answer pairs.

`extractive` lifts them from the text itself; `hf` (a local transformers model) and `openai` (any
OpenAI-compatible endpoint) are chat teachers: they answer the campaign's prompts through `chat()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    text: str
    stopped: bool = True  # False when the teacher ran into its max_new_tokens: the reply is cut off


class TeacherUnavailable(RuntimeError):
    """A teacher that cannot answer at all (endpoint down after its retries, bad key, unknown model).

    The campaign hands the chunk to the teacher's fallback, or stops, resumable, if it has none.
    """
