import gc
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunebook import servers

# No model hub here: anything that tries to download must fail loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch, request):
    """Every test writes data/ and reports/ into its own temporary workdir; in a module marked shared_workdir, into
    the module's one."""
    path = request.getfixturevalue("shared_workdir") if request.node.get_closest_marker("shared_workdir") else tmp_path
    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(path))
    return path


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory, request):
    """The workdir of a module marked shared_workdir (`pytestmark = pytest.mark.shared_workdir`), whose tests read
    the runs the first of them made."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))


@pytest.fixture
def checkout_workdir(monkeypatch):
    """The checkout as workdir, as for a user running from it: the example recipe's paths are relative to it.
    Only for read-only tests (validation and planning)."""
    from tunebook import paths

    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(paths.project_root()))
    return paths.project_root()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` server on loopback, shared by the module (it takes seconds to start):
    yields (host, port). Tests sharing it must use their own collection names."""
    port = servers.free_port()
    store = tmp_path_factory.mktemp("chroma-server")
    log_path = store.parent / f"{store.name}.log"  # beside the store, so the store holds only Chroma's files
    command = [servers.venv_command("chroma"), "run", "--path", str(store), "--host", servers.HOST]
    try:
        with servers.running([*command, "--port", str(port)], log_path, lambda: _chroma_answers(port), 60):
            yield servers.HOST, port
    finally:
        _close_chroma_clients()


def _chroma_answers(port: int) -> bool:
    import chromadb
    from chromadb.config import Settings

    try:
        # Not closed: closing drops the client's open connection on the garbage collector mid-module.
        chromadb.HttpClient(host=servers.HOST, port=port, settings=Settings(anonymized_telemetry=False)).heartbeat()
        return True
    except ValueError:  # what HttpClient raises while nothing listens yet
        return False


def _close_chroma_clients() -> None:
    """chromadb's HttpClient never closes its HTTP connection (not even in close()), so the socket is only
    closed by the garbage collector, with a ResourceWarning that lands in whatever test runs then and breaks
    tests that check their warnings. Drop the cached clients and collect them now, quietly."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small tiny model (seconds to build) for the tests that need a real model to talk to."""
    from test_tiny import CFG, stdlib_docs

    from tunebook.tiny import build_tiny

    return str(build_tiny(stdlib_docs(), tmp_path_factory.mktemp("tiny-model"), CFG, progress=False))


@dataclass
class Served:
    base_url: str
    log: Path  # the server's own log, one access line per request it answered

    def requests_answered(self) -> int:
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def openai_server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real OpenAI-compatible server (`transformers serve`) over the tiny model, on loopback."""
    log_path = tmp_path_factory.mktemp("openai-server") / "serve.log"
    with servers.openai_server(tiny_model, log_path) as base_url:
        yield Served(base_url, log_path)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as an f16 GGUF, written by llama.cpp's own converter."""
    from tunebook import gguf

    return gguf.convert(Path(tiny_model), "f16", tmp_path_factory.mktemp("tiny-gguf") / "tiny-f16.gguf")


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """llama-cpp-python's OpenAI-compatible server over the tiny model's GGUF, on loopback, serving it as
    `tiny`: the teacher endpoint of the generate stage's tests."""
    log_path = tmp_path_factory.mktemp("llama-server") / "serve.log"
    # Teacher prompts (a chunk and the instructions) run past the tiny model's 256 positions, which llama.cpp
    # refuses; the tests are about the protocol, not the answers' quality.
    with servers.llama_server(tiny_gguf, log_path, "tiny", context_length=4096) as base_url:
        yield Served(base_url, log_path)


@pytest.fixture(scope="session")
def lora_adapter(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model, trained a few real steps by tunebook's SFT (its B matrices are
    no longer zero, so merging it changes the weights)."""
    from datasets import Dataset

    from tunebook.params import SftParams
    from tunebook.sft import TrainingData, train_sft

    out = tmp_path_factory.mktemp("lora-adapter")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is item {i}?"},
                {"role": "assistant", "content": f"Item {i} is a number."},
            ]
        }
        for i in range(8)
    ]
    data = TrainingData(Dataset.from_list(rows), Dataset.from_list([]), "h", out, [])
    trainer = {"max_steps": 3, "learning_rate": 1e-2, "save_steps": 10, "logging_steps": 1, "max_length": 64}
    params = SftParams(trainer=trainer, precision="fp32")
    return train_sft(params, tiny_model, data, out / "sft", seed=0, progress=False).output_dir


def registered_sft(base_model: str, out: Path, learning_rate: float = 2e-4) -> str:
    """A LoRA adapter on base_model, a few real steps of tunebook's SFT, registered as run `t`'s sft."""
    from datasets import Dataset

    from tunebook.params import SftParams
    from tunebook.sft import TrainingData, register_model, train_sft

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"good answer {i}"},
            ]
        }
        for i in range(8)
    ]
    data = TrainingData(Dataset.from_list(rows), Dataset.from_list([]), "h", out, [])
    trainer = {"max_steps": 2, "learning_rate": learning_rate, "save_steps": 10, "logging_steps": 1, "max_length": 64}
    params = SftParams(base_model=base_model, trainer=trainer, precision="fp32")
    result = train_sft(params, base_model, data, out / "t" / "sft", seed=0, progress=False)
    return register_model("t", result, params, data)


@pytest.fixture
def sft_model(tiny_model, tmp_path, workdir):
    """A registered SFT adapter on the tiny model (run `t`)."""
    return registered_sft(tiny_model, tmp_path)


@pytest.fixture
def pickled_model(tmp_path: Path) -> Path:
    """A tiny random Llama whose only weights are a pickle (pytorch_model.bin), with a word-level tokenizer.
    transformers 5 saves safetensors whatever it is asked, so the pickle is written with torch.save."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "pickled-model"
    config.save_pretrained(model_dir)
    torch.save(LlamaForCausalLM(config).state_dict(), model_dir / "pytorch_model.bin")
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 64)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory):
    """The model zoo (tests/unit/zoo.py): zoo("gemma") is the directory of that family's tiny random model, built on
    first use and shared by the session."""
    from zoo import builder

    return builder(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model hub here: any connection attempt fails the test. The env vars alone would not prove it,
    since huggingface_hub reads them once at import time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(sock: socket.socket, address: object) -> None:
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def chromium_page():
    """A page of Debian's chromium, headless, 1280 px wide, driven by playwright: how reports are checked for real.
    No background traffic: this machine's network is closed, and chromium would retry its hosts at every start."""
    import shutil

    from playwright.sync_api import sync_playwright

    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as playwright:
        executable = shutil.which("chromium") or "/usr/bin/chromium"
        browser = playwright.chromium.launch(executable_path=executable, args=args, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()
