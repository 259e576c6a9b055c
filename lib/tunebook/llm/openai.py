"""The `openai` backend: any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp's server, hosted APIs).

Requests go out concurrently through one async HTTP client; the pool bounds how many are in flight,
and this module spaces them to the limits' requests- and tokens-per-minute. 429, 5xx, timeouts
and dropped connections are retried with exponential backoff (tenacity), honouring Retry-After.
The API key is read from the environment variable that params name, never from params themselves.
"""

from __future__ import annotations

import os

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from tunebook.llm.limits import Limits
from tunebook.llm.reply import Reply, Unavailable
from tunebook.params import TeacherParams

CHARS_PER_TOKEN = 4  # rough, only to budget tokens-per-minute before the server counts them


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text[:200]}")
        self.retry_after = _retry_after(response)


class OpenAIEndpoint:
    def __init__(self, spec: TeacherParams, limits: Limits, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = spec.name
        self.model_id = spec.model
        # Part of the cache key: a request with other extra fields is another request.
        self.sampling = {"max_tokens": spec.max_new_tokens, "temperature": spec.temperature, **spec.extra_body}
        self.base_url = spec.base_url.rstrip("/")
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise Unavailable(f"'{spec.name}': environment variable {spec.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=limits.timeout_s,
            limits=httpx.Limits(max_connections=limits.concurrency),
            transport=transport,  # tests script the statuses a real local server never sends
        )
        self._max_attempts = limits.max_retries + 1
        self._requests = AsyncLimiter(limits.requests_per_minute, 60) if limits.requests_per_minute else None
        self._tokens = AsyncLimiter(limits.tokens_per_minute, 60) if limits.tokens_per_minute else None

    async def chat(self, messages: list[dict]) -> Reply:
        """The assistant's reply; raises Unavailable once the retries are spent."""
        body = {"model": self.model_id, "messages": messages, **self.sampling}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=_backoff,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._post(body, messages)
        except (httpx.HTTPError, RetryableStatus) as err:
            tries = retrying.statistics.get("attempt_number", 1)
            raise Unavailable(
                f"'{self.name}': {self.base_url} failed after {tries} tries ({type(err).__name__}: {err})"
            ) from None
        if response.status_code >= 400:
            raise Unavailable(
                f"'{self.name}': {self.base_url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            choice = response.json()["choices"][0]
            return Reply(choice["message"]["content"] or "", choice.get("finish_reason") != "length")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            # The server spoke, but not the protocol: a parse failure of this request, not a dead model.
            raise ValueError(f"not an OpenAI chat completion ({type(err).__name__}): {response.text[:200]}") from None

    async def _post(self, body: dict, messages: list[dict]) -> httpx.Response:
        if self._requests:
            await self._requests.acquire()
        if self._tokens:
            prompt_chars = sum(len(m["content"]) for m in messages)
            wanted = prompt_chars // CHARS_PER_TOKEN + self.sampling["max_tokens"]
            await self._tokens.acquire(min(wanted, self._tokens.max_rate))
        response = await self._client.post("/chat/completions", json=body)
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableStatus(response)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


def _retryable(err: BaseException) -> bool:
    return isinstance(err, RetryableStatus | httpx.TimeoutException | httpx.TransportError)


_exponential = wait_exponential_jitter(initial=0.5, max=30)


def _backoff(state: RetryCallState) -> float:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After."""
    err = state.outcome.exception() if state.outcome else None
    return max(_exponential(state), getattr(err, "retry_after", 0.0))


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), 120.0)
    except ValueError:
        return 0.0  # an HTTP date instead of seconds: fall back to our own backoff
