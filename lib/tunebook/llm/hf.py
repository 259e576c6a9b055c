"""The `hf` backend: a local transformers model (a model directory or an HF id) on this machine.

Callers await many `chat()` calls at once; they are gathered into batches of `batch_size` and
generated together in a worker thread, so a local model runs batched while the event loop stays free.
"""

from __future__ import annotations

import asyncio

from tunebook import models, paths
from tunebook.llm.reply import Reply
from tunebook.params import TeacherParams


class HFModel:
    def __init__(self, spec: TeacherParams) -> None:
        self.name = spec.name
        # A local directory is relative to the workdir, not to wherever the caller runs (a notebook's folder).
        self.model_id = paths.model_source(spec.model)
        self.sampling = {"max_tokens": spec.max_new_tokens, "temperature": spec.temperature}
        self._batch_size = spec.batch_size
        self._loaded: models.LoadedModel | None = None
        self._pending: list[tuple[list[dict], asyncio.Future[Reply]]] = []
        self._worker: asyncio.Task | None = None

    async def chat(self, messages: list[dict]) -> Reply:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let every caller that is ready enqueue before the batch is cut
            batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
            try:
                answers = await asyncio.to_thread(self._generate, [messages for messages, _ in batch])
            except Exception as err:  # the whole batch failed: each caller gets the error
                answers = [err] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def _generate(self, conversations: list[list[dict]]) -> list[Reply]:
        if self._loaded is None:
            self._loaded = models.load_model(self.name, self.model_id)
        generations = models.generate(
            self._loaded,
            conversations,
            self.sampling["max_tokens"],
            len(conversations),
            progress=False,
            temperature=self.sampling["temperature"],
        )
        return [Reply(g.text, g.stopped) for g in generations]

    async def aclose(self) -> None:
        self._loaded = None
