"""What a chat model answers: a Reply, or Unavailable when it cannot answer at all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    text: str
    stopped: bool = True  # False when the model ran into its max_new_tokens: the reply is cut off


class Unavailable(RuntimeError):
    """A model that cannot answer at all (endpoint down after its retries, bad key, unknown model).

    The campaign hands the chunk to the teacher's fallback; any other caller stops, and asking again
    resumes from the response cache.
    """
