"""Local servers started and stopped from Python: a `chroma run` store, OpenAI-compatible endpoints
(`transformers serve` over a model directory, llama-cpp-python's server over a GGUF file).

Tests and benchmarks talk to the real thing on loopback; these helpers start it, wait until it answers
and always stop it, with its log at hand when it does not come up.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def venv_command(name: str) -> str:
    """A console script of this environment (chroma, transformers), whatever PATH says."""
    return str(Path(sys.executable).with_name(name))


@contextmanager
def running(command: list[str], log_path: Path, ready: Callable[[], bool], timeout_s: float = 120) -> Iterator[None]:
    """Run command until the block ends; enter the block once ready() is true."""
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if server.poll() is not None:
                raise ServerError(f"{command[0]} exited with code {server.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServerError(f"{command[0]} did not answer within {timeout_s} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def answers(url: str, headers: dict | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def openai_server(model_dir: str, log_path: Path, batching: bool = False) -> Iterator[str]:
    """`transformers serve` over a local model: yields the base URL of its OpenAI-compatible API.

    With batching, concurrent requests are decoded together (continuous batching), as vLLM or
    llama.cpp's server do; without it, each request runs on its own.
    """
    port = free_port()
    command = [venv_command("transformers"), "serve", model_dir, "--host", HOST, "--port", str(port)]
    command += ["--device", "cpu", "--log-level", "warning", *(["--continuous-batching"] if batching else [])]
    with running(command, log_path, lambda: answers(f"http://{HOST}:{port}/health")):
        yield f"http://{HOST}:{port}/v1"


# llama.cpp's server applies repeat_penalty 1.1 unless a request says otherwise, even at temperature 0; a
# client that wants the model's greedy answers sends this with every request.
LLAMA_GREEDY = {"repeat_penalty": 1.0}


@contextmanager
def llama_server(
    gguf_path: Path, log_path: Path, name: str, context_length: int, threads: int = 2, api_key: str | None = None
) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server over a GGUF file, serving it as `name`: yields the base
    URL of its API. With api_key, it answers only requests that carry it. It has no health route; it is
    ready once it lists its model."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path),
        "--model_alias",
        name,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_ctx",
        str(context_length),
        "--seed",
        "0",
        "--n_threads",
        str(threads),
        *(["--api_key", api_key] if api_key else []),
    ]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with running(command, log_path, lambda: answers(f"http://{HOST}:{port}/v1/models", headers)):
        yield f"http://{HOST}:{port}/v1"


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
