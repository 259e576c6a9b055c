"""tunebook.llm, the one way tunebook asks a model: the response cache (on disk and in flight), retries, the
extra request fields a server needs, and the stages that ask a model through it rather than the campaign's
machinery. Real requests go to llama-cpp-python's OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pandas as pd
import pytest

from tunebook import dpo, llm, servers
from tunebook.llm.openai import OpenAIEndpoint
from tunebook.params import DpoParams, EndpointParams, GenerateParams, TeacherParams

LIMITS = llm.Limits(concurrency=2, max_retries=0, timeout_s=60)


def served(base_url: str, **fields) -> TeacherParams:
    return TeacherParams(name="served", backend="openai", model="tiny", base_url=base_url, max_new_tokens=8, **fields)


def test_a_request_in_flight_twice_is_sent_once_and_asked_again_comes_from_the_cache(llama_server, tmp_path):
    question = [{"role": "user", "content": "What does heapq.heappush do?"}]
    answered_before = llama_server.requests_answered()
    first = llm.chat_many(
        served(llama_server.base_url), LIMITS, [question, question], "ask", False, llm.ResponseCache(tmp_path)
    )
    assert first[0].reply == first[1].reply is not None
    assert sorted(a.requests for a in first) == [0, 1]  # the second waited for the first one's answer
    # A new cache on the same directory, as a later run would open it: nothing is sent.
    again = llm.chat_many(served(llama_server.base_url), LIMITS, [question], "ask", False, llm.ResponseCache(tmp_path))
    assert again[0].reply == first[0].reply and again[0].requests == 0
    assert llama_server.requests_answered() - answered_before == 1


def test_the_dpo_critic_asks_the_judges_model_through_the_response_cache(llama_server):
    judge = {"backend": "openai", "model": "tiny", "base_url": llama_server.base_url, "max_new_tokens": 8}
    params = DpoParams(critic="judge", judge=judge)
    failures = pd.DataFrame(
        {
            "question": ["What does json.dumps return?", "What does bisect.insort do?"],
            "reference": ["A str.", "It inserts an item into a sorted list."],
            "prediction": ["bytes", "nothing"],
            "label": ["wrong", None],
        }
    )
    answered_before = llama_server.requests_answered()
    revised = dpo.critique_and_revise(None, failures, params, progress=False)  # no policy: the judge critiques
    assert len(revised) == 2 and revised["revision"].map(type).eq(str).all()
    assert llama_server.requests_answered() - answered_before == 2
    again = dpo.critique_and_revise(None, failures, params, progress=False)
    assert llama_server.requests_answered() - answered_before == 2  # the second time: from the cache
    pd.testing.assert_frame_equal(again, revised)


def test_asking_a_model_does_not_import_the_campaign():
    """The judge, evaluated endpoints, the DPO critic and the export ask through tunebook.llm, which builds no
    tiny model: none of them loads the generate stage's module."""
    code = (
        "import sys, tunebook.judge, tunebook.evaluate, tunebook.dpo, tunebook.export, tunebook.llm; "
        "print(sorted(m for m in sys.modules if m in ('tunebook.generate', 'tunebook.tiny')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("status", [429, 503])
def test_retryable_statuses_are_retried_with_backoff(status):
    """The retry policy on the statuses a local server never sends: a scripted transport, not a protocol fake."""
    calls = []

    def respond(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(status, headers={"retry-after": "0"}, text="slow down")
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    spec = TeacherParams(name="t", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    limits = llm.Limits.of(GenerateParams(max_retries=3))
    endpoint = OpenAIEndpoint(spec, limits, transport=httpx.MockTransport(respond))
    assert asyncio.run(endpoint.chat([{"role": "user", "content": "hi"}])).text == "ok"
    assert len(calls) == 3
    calls.clear()
    stubborn = OpenAIEndpoint(
        spec,
        llm.Limits.of(GenerateParams(max_retries=1)),
        transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(status, text="no")),
    )
    with pytest.raises(llm.Unavailable, match=f"'t': http://127.0.0.1:1/v1 failed after 2 tries .*HTTP {status}"):
        asyncio.run(stubborn.chat([{"role": "user", "content": "hi"}]))


def test_extra_body_fields_reach_the_server_and_are_part_of_the_cache_key(llama_server, tmp_path):
    prompts = [[{"role": "user", "content": "What does bisect.insort do?"}]]
    cache = llm.ResponseCache(tmp_path / "cache")

    def ask(extra_body: dict) -> list[llm.Answer]:
        endpoint = EndpointParams(
            name="served", model="tiny", base_url=llama_server.base_url, max_retries=0, extra_body=extra_body
        )
        return llm.chat_many(endpoint.chat_model(8), llm.Limits.of(endpoint), prompts, "ask", False, cache)

    answered_before = llama_server.requests_answered()
    assert ask(servers.LLAMA_GREEDY)[0].reply is not None and ask({})[0].reply is not None
    assert ask(servers.LLAMA_GREEDY)[0].requests == 0  # the same request again: from the cache
    assert llama_server.requests_answered() - answered_before == 2  # with and without the field: two requests
    # The server reads the field: a value it cannot use is refused, not ignored.
    with pytest.raises(llm.Unavailable, match="repeat_penalty"):
        ask({"repeat_penalty": "strong"})


def test_a_local_model_is_found_relative_to_the_workdir_wherever_it_is_asked_from(workdir, tmp_path, monkeypatch):
    from tunebook.llm.hf import HFModel

    (workdir / "models" / "judge").mkdir(parents=True)
    monkeypatch.chdir(tmp_path.parent)  # a notebook's kernel runs in notebooks/, not in the workdir
    spec = TeacherParams(name="judge", backend="hf", model="models/judge")
    assert HFModel(spec).model_id == str((workdir / "models" / "judge").resolve())
    assert HFModel(spec.model_copy(update={"model": "org/hub-id"})).model_id == "org/hub-id"
