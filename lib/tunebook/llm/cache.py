"""The response cache: every chat reply, content-addressed and shared by every run on this workdir.

Key: (backend, model, messages, sampling params). Every request costs time or money, so a response is
written to disk the moment it arrives: a campaign killed at any point and started again finds it here
and sends nothing twice, and a finished campaign (or judging) re-run sends nothing at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from tunebook import paths
from tunebook.files import sha256_text, write_atomic
from tunebook.llm.reply import Reply


def cache_dir() -> Path:
    return paths.data_dir() / "cache" / "responses"


def request_key(backend: str, model: str, messages: list[dict], sampling: dict) -> str:
    request = {"backend": backend, "model": model, "messages": messages, "sampling": sampling}
    return sha256_text(json.dumps(request, sort_keys=True, ensure_ascii=False))


class ResponseCache:
    """Responses by request key, one small JSON file each; counts what was sent and what was reused."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir()
        self.sent = 0
        self.hits = 0
        # The same request twice in flight is sent once; the second caller awaits the first's answer.
        self._inflight: dict[str, asyncio.Future[Reply]] = {}

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Reply | None:
        path = self._path(key)
        if not path.exists():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        return Reply(stored["text"], stored["stopped"])

    def put(self, key: str, reply: Reply) -> None:
        stored = {"key": key, "text": reply.text, "stopped": reply.stopped}
        write_atomic(self._path(key), json.dumps(stored, ensure_ascii=False) + "\n")

    async def fetch(self, key: str, send: Callable[[], Awaitable[Reply]]) -> tuple[Reply, bool]:
        """The cached response for key, or send() once and store its answer; and whether this call sent it."""
        if (reply := self.get(key)) is not None:
            self.hits += 1
            return reply, False
        if key in self._inflight:
            self.hits += 1
            return await asyncio.shield(self._inflight[key]), False
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.sent += 1
            reply = await send()
            self.put(key, reply)
            future.set_result(reply)
            return reply, True
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            future.set_exception(err)
            future.exception()  # mark it retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[key]
