"""How hard a pool may push its models: requests in flight, rate limits, retries and the timeout."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    concurrency: int  # requests in flight, whatever the backend
    max_retries: int  # openai: on 429, 5xx, timeouts and dropped connections, with exponential backoff
    timeout_s: float  # openai: seconds before a request times out
    requests_per_minute: int = 0  # openai: 0 means no limit
    tokens_per_minute: int = 0  # openai: 0 means no limit

    @classmethod
    def of(cls, section) -> Limits:
        """The limits a params section sets (generate, the judge, an endpoint); one without rate limits has none."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls) if hasattr(section, f.name)})
