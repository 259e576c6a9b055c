"""The pool: chat models by name, each request through the response cache, at most `concurrency` in flight.

A campaign holds one pool for all its teachers and schedules its own jobs over it; everyone else asks one
model many conversations with `chat_many`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

from tunebook.llm.cache import ResponseCache, request_key
from tunebook.llm.limits import Limits
from tunebook.llm.openai import OpenAIEndpoint
from tunebook.llm.reply import Reply, Unavailable
from tunebook.params import TeacherParams

T = TypeVar("T")


class Pool:
    """Chat models by name: an `hf` spec's model is a directory or an HF id, an `openai` spec's is served.

    transport replaces the HTTP transport of the openai models: tests script replies with it.
    """

    def __init__(
        self,
        specs: list[TeacherParams],
        limits: Limits,
        cache: ResponseCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cache = cache or ResponseCache()
        self._models = {spec.name: _connect(spec, limits, transport) for spec in specs}
        self._backends = {spec.name: spec.backend for spec in specs}
        self._in_flight = asyncio.Semaphore(limits.concurrency)

    async def chat(self, name: str, messages: list[dict]) -> tuple[Reply, bool]:
        """The model's reply, and whether a request was sent for it (False: the cache answered).

        Raises Unavailable when the model cannot answer at all, ValueError when it answered outside the protocol.
        """
        model = self._models[name]
        key = request_key(self._backends[name], model.model_id, messages, model.sampling)
        return await self.cache.fetch(key, lambda: self._send(model, messages))

    async def _send(self, model, messages: list[dict]) -> Reply:
        async with self._in_flight:
            return await model.chat(messages)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()


def _connect(spec: TeacherParams, limits: Limits, transport: httpx.AsyncBaseTransport | None):
    if spec.backend == "hf":
        from tunebook.llm.hf import HFModel  # torch and transformers load only when a local model is asked

        return HFModel(spec)
    if spec.backend == "openai":
        return OpenAIEndpoint(spec, limits, transport)
    raise ValueError(f"'{spec.name}' is not a chat model (backend {spec.backend})")


@dataclass(frozen=True)
class Answer:
    reply: Reply | None  # None when the server answered outside the protocol
    error: str | None
    requests: int  # requests sent for it: 0 when the cache answered


def chat_many(
    spec: TeacherParams,
    limits: Limits,
    conversations: list[list[dict]],
    desc: str,
    progress: bool = True,
    cache: ResponseCache | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Answer]:
    """One model's answer to each conversation, in order: concurrently, through the response cache, rate
    limits and retries. Raises Unavailable when the model cannot answer; every reply that arrived is in the
    cache, so asking again resumes from there."""
    return run_sync(_chat_many(spec, limits, conversations, desc, progress, cache, transport))


async def _chat_many(
    spec: TeacherParams,
    limits: Limits,
    conversations: list[list[dict]],
    desc: str,
    progress: bool,
    cache: ResponseCache | None,
    transport: httpx.AsyncBaseTransport | None,
) -> list[Answer]:
    pool = Pool([spec], limits, cache, transport)
    bar = tqdm(total=len(conversations), desc=desc, unit="call", disable=not progress)
    answers: list[Answer | None] = [None] * len(conversations)

    async def ask(index: int, messages: list[dict]) -> None:
        try:
            reply, sent = await pool.chat(spec.name, messages)
            answers[index] = Answer(reply, None, int(sent))
        except ValueError as err:  # the server answered, but not in the protocol (never cached: it was sent)
            answers[index] = Answer(None, str(err), 1)
        bar.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            for index, messages in enumerate(conversations):
                group.create_task(ask(index, messages))
    except* Unavailable as errors:
        raise errors.exceptions[0] from None
    finally:
        bar.close()
        await pool.aclose()
    return answers


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, a notebook cell included."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A notebook kernel already runs an event loop in this thread: give the coroutine a thread of its own.
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coroutine).result()
