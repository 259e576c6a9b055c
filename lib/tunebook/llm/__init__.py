"""Every chat request tunebook sends: the generate stage's teachers, the judge, evaluated endpoints and the
DPO critic all ask their models through this package, and none borrows another stage's machinery.

- Where a request goes: a model spec (`params.TeacherParams`) names its backend, `hf` (a local transformers
  model, batched in a worker thread; `hf.py`) or `openai` (any OpenAI-compatible endpoint: vLLM, Ollama,
  llama.cpp's server, hosted APIs; `openai.py`).
- How hard it is pushed (`Limits`): at most `concurrency` requests in flight per `Pool`; openai requests are
  spaced to requests- and tokens-per-minute and retried with backoff on 429, 5xx, timeouts and dropped
  connections, and a model that stays down raises `Unavailable`.
- `chat_many` asks one model many conversations, in order, with a progress bar; a campaign holds a `Pool`.
- The response cache (`cache.py`, data/cache/responses/): a reply is keyed on backend, model, messages and
  sampling, written the moment it arrives and shared by every run on the workdir, and a request already in
  flight is sent once, so nothing is paid for twice.
- The generation cache (`generations.py`, data/cache/generations/): a local model's greedy answers, keyed on
  its weights' hashes, chat template, prompts, decoding, device, libraries and the source of models.py.
"""

from tunebook.llm.cache import ResponseCache
from tunebook.llm.limits import Limits
from tunebook.llm.pool import Answer, Pool, chat_many, run_sync
from tunebook.llm.reply import Reply, Unavailable

__all__ = ["Answer", "Limits", "Pool", "Reply", "ResponseCache", "Unavailable", "chat_many", "run_sync"]
