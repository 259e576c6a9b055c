"""GGUF files for llama.cpp and Ollama, and the checks that they answer like the model that was evaluated.

The converter is llama.cpp's own `convert_hf_to_gguf.py`, from llama-cpp-python's source distribution
(`make install` fetches it into .cache/llama.cpp, outside git); tunebook never writes a tensor mapping.
A conversion can succeed and still ship a wrong tokenizer, with nothing printed: special tokens typed as
ordinary text (so `<|im_start|>` is split into pieces), a BOS the model never saw, placeholder merge scores.
So every GGUF is checked against the HF tokenizer, token id for token id, before its answers are compared.

Inference only: nothing here imports a trainer.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from tunebook import metrics, models, paths, servers, stats
from tunebook.params import GGUFType

CONVERTER_ENV = "TUNEBOOK_GGUF_CONVERTER"  # a convert_hf_to_gguf.py to use instead of the cached one
OUTTYPES = typing.get_args(GGUFType)  # what the converter writes by itself
GREEDY = {"temperature": 0.0, **servers.LLAMA_GREEDY}  # llama.cpp's own decoding, as its server is asked


class GGUFError(ValueError):
    """A GGUF that would not behave like the model it was made from: the message says how."""


def converter() -> Path:
    """llama.cpp's converter, from the sdist of the llama-cpp-python that is installed."""
    if os.environ.get(CONVERTER_ENV):
        script = Path(os.environ[CONVERTER_ENV])
    else:
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            raise GGUFError("GGUF export needs llama-cpp-python (the `gguf` extra): run `make install`") from None
        script = paths.project_root() / ".cache" / "llama.cpp" / f"converter-{version}" / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise GGUFError(f"llama.cpp's GGUF converter is not at {script}: `make install` fetches it")
    return script


def convert(model_dir: Path, outtype: str, out_path: Path, model_name: str | None = None) -> Path:
    """model_dir (safetensors, config, tokenizer) as one GGUF file of outtype; its log lands beside it.
    The file appears only once it is complete. model_name becomes the GGUF's `general.name` (by default the
    converter takes the directory's name): llama.cpp keys some tokenizer behaviour on it (Phi-3's whitespace
    after its control tokens), so a merged model is named after its base."""
    if outtype not in OUTTYPES:
        raise GGUFError(f"GGUF type {outtype!r} is not one of {', '.join(OUTTYPES)}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    log_path = out_path.with_suffix(".log")
    command = [
        sys.executable,
        str(converter()),
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(partial),
        *(["--model-name", model_name] if model_name else []),
    ]
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise GGUFError(f"llama.cpp's converter failed on {model_dir} ({outtype}); its log {log_path} ends:\n{tail}")
    partial.replace(out_path)
    return out_path


def load(gguf_path: Path, context_length: int = 0, vocab_only: bool = False, logits_all: bool = False):
    """The GGUF in llama-cpp-python, quiet, seeded, on as many threads as torch uses."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf_path),
        n_ctx=context_length,
        seed=0,
        n_threads=torch.get_num_threads(),
        vocab_only=vocab_only,
        logits_all=logits_all,
        verbose=False,
    )


# --- the tokenizer the GGUF carries -----------------------------------------------------------------------


def check_tokenizer(
    gguf_path: Path, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]], stop_ids: list[int]
) -> dict:
    """Check that llama.cpp reads the GGUF's tokenizer as transformers reads the model's: the same chat
    template, the same prompt text once rendered, the same token ids for every prompt, BOS added or not
    alike, and generation ending at every stop id. Returns what was checked; raises GGUFError on the first
    difference, since each one silently changes every answer."""
    from llama_cpp import llama_cpp as lib
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(gguf_path, context_length=64, vocab_only=True)  # the tokenizer alone: no weights are read
    name = gguf_path.name
    template = llm.metadata.get("tokenizer.chat_template")
    if template != tokenizer.chat_template:
        raise GGUFError(f"{name} carries a chat template other than the model's: servers would prompt it differently")
    adds_bos, _ = models.adds_bos_eos(tokenizer)
    if llm._model.add_bos_token() != adds_bos:
        llama, hf = ("omits", "adds") if adds_bos else ("adds", "omits")
        raise GGUFError(f"{name}: llama.cpp {llama} the BOS token that transformers {hf} (add_bos_token)")
    vocab = llm._model.vocab
    not_ending = [i for i in stop_ids if not lib.llama_vocab_is_eog(vocab, i)]
    if not_ending:
        pieces = tokenizer.convert_ids_to_tokens(not_ending)
        raise GGUFError(f"{name}: llama.cpp would not stop at {pieces} (ids {not_ending}): answers would run on")
    bos = tokenizer.bos_token or ""
    eos = tokenizer.eos_token or ""
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    prompts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    for conversation, prompt in zip(conversations, prompts, strict=True):
        rendered = formatter(messages=conversation).prompt
        if rendered != prompt:
            raise GGUFError(
                f"{name}: llama.cpp renders the chat template as {rendered[:80]!r}..., "
                f"transformers as {prompt[:80]!r}..."
            )
        expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        got = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
            raise GGUFError(
                f"{name}: llama.cpp tokenizes the prompt {prompt[:60]!r}... differently from transformers from "
                f"token {at} on ({got[at : at + 4]} vs {expected[at : at + 4]}); is tokenizer.model beside the "
                "model, and are the special tokens marked special in tokenizer_config.json?"
            )
    return {
        "gguf": name,
        "chat template": "identical",
        "prompts tokenized alike": len(prompts),
        "adds BOS": adds_bos,
        "stops at": tokenizer.convert_ids_to_tokens(stop_ids),
    }


# --- answers and logits -----------------------------------------------------------------------------------


def generate(
    gguf_path: Path, conversations: list[list[dict]], max_new_tokens: int, context_length: int, progress: bool = True
) -> list[models.Generation]:
    """Greedy answers from llama-cpp-python, prompted through the GGUF's own chat template as a server
    would prompt it."""
    llm = load(gguf_path, context_length)
    answers = []
    for conversation in tqdm(conversations, desc=f"generate {gguf_path.name}", disable=not progress):
        choice = llm.create_chat_completion(conversation, max_tokens=max_new_tokens, seed=0, **GREEDY)["choices"][0]
        answers.append(models.Generation(choice["message"]["content"].strip(), choice["finish_reason"] == "stop"))
    return answers


@torch.inference_mode()
def logit_agreement(
    gguf_path: Path,
    reference: models.LoadedModel,
    conversations: list[list[dict]],
    answers: list[str],
    context_length: int,
) -> dict:
    """Teacher-forced on each prompt and the reference model's answer: the largest logit difference between
    the GGUF and the reference model, and the share of positions where both pick the same next token. This is
    what tells rounding (small gaps, a near tie flipped now and then) from a broken conversion."""
    llm = load(gguf_path, context_length, logits_all=True)
    tokenizer = reference.tokenizer
    gap, same, positions = 0.0, 0, 0
    for conversation, answer in zip(conversations, answers, strict=True):
        text = tokenizer.apply_chat_template([*conversation, {"role": "assistant", "content": answer}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:context_length]
        expected = reference.model(input_ids=torch.tensor([ids], device=models.device())).logits[0].float().cpu()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        gap = max(gap, float(np.abs(got - expected.numpy()).max()))
        same += int((got.argmax(-1) == expected.numpy().argmax(-1)).sum())
        positions += len(ids)
    return {"max_logit_diff": gap, "top1_agreement": same / positions, "positions": positions}


# --- parity with the evaluated model ----------------------------------------------------------------------


@dataclass
class Parity:
    table: pd.DataFrame  # one row per output: identical answers, stop rate, metric deltas with CIs, its gate
    differing: pd.DataFrame  # every prompt an output answers differently, both answers side by side

    @property
    def ok(self) -> bool:
        return bool(self.table["passes"].all())

    def require(self) -> None:
        """Block the export when a gated output answers too few prompts like the evaluated model."""
        for row in self.table[~self.table["passes"]].itertuples():
            raise GGUFError(
                f"{row.output} answers {row.prompts - row.identical} of {row.prompts} prompts differently from "
                f"the evaluated model (gate {row.gate}); see the differing answers"
            )


def parity(
    items: pd.DataFrame,
    evaluated: list[models.Generation],
    outputs: dict[str, list[models.Generation]],
    gated: set[str],
    min_agreement: float,
    resamples: int = 1000,
    seed: int = 0,
) -> Parity:
    """How each exported output answers the items compared with the evaluated model: identical answers,
    and its F1 / ROUGE-L against the references, with the paired-bootstrap delta to the evaluated model.
    The gated outputs must give the evaluated model's answer on at least min_agreement of the items."""
    baseline = "evaluated"
    frames = []
    for name, generations in {baseline: evaluated, **outputs}.items():
        scores = metrics.score_examples([g.text for g in generations], items["reference"].tolist())
        frames.append(scores.assign(model=name, id=items["id"].to_numpy()))
    scored = pd.concat(frames, ignore_index=True)
    deltas = stats.compare(scored, baseline, ["f1", "rouge_l"], resamples=resamples, seed=seed, scale=100)
    deltas = deltas.set_index(["model", "metric"])
    rows, differing = [], []
    for name, generations in outputs.items():
        same = [a.text == b.text for a, b in zip(generations, evaluated, strict=True)]
        agreement = sum(same) / len(same)
        row = {
            "output": name,
            "prompts": len(same),
            "identical": sum(same),
            "agreement": round(agreement, 4),
            "stopped": sum(g.stopped for g in generations),
        }
        row.update({f"{metric} Δ": stats.format_ci(deltas.loc[(name, metric)]) for metric in ("f1", "rouge_l")})
        row["gate"] = f"≥ {min_agreement:.0%}" if name in gated else "reported"
        row["passes"] = agreement >= min_agreement if name in gated else True
        rows.append(row)
        answered = zip(items["question"], generations, evaluated, same, strict=True)
        differing += [
            {"output": name, "question": q, "evaluated model": b.text, "output's answer": a.text}
            for q, a, b, s in answered
            if not s
        ]
    columns = ["output", "question", "evaluated model", "output's answer"]
    return Parity(pd.DataFrame(rows), pd.DataFrame(differing, columns=columns))


# --- Ollama -----------------------------------------------------------------------------------------------


EOS = "{eos}"  # where a TEMPLATE writes the tokenizer's EOS token


@dataclass(frozen=True)
class ChatFormat:
    """A chat format Ollama can be given: its Go TEMPLATE, and the same format rendered in Python, which
    must reproduce the model's own chat template exactly before the TEMPLATE is trusted.

    Both take the messages as Ollama hands them to a TEMPLATE (`_collate`), and neither writes the BOS token;
    starts_with_bos says whether the model's template does. Ollama's tokenizer, like llama.cpp's, puts BOS in
    front of every prompt when the model's tokenizer adds it, so the TEMPLATE writes BOS only when the
    tokenizer does not: written twice, the model would be prompted with two."""

    name: str
    template: str  # Go text/template, as Ollama executes it; EOS stands for the tokenizer's eos token
    render: Callable[[list[dict], str], str]  # (messages, eos token) -> the prompt that follows any BOS
    starts_with_bos: bool = False

    def prompt(self, messages: list[dict], bos: str, eos: str) -> str:
        """The text Ollama prompts the model with for these messages, BOS included."""
        return (bos if self.starts_with_bos else "") + self.render(_collate(messages), eos)

    def ollama_template(self, bos: str, eos: str, adds_bos: bool) -> str:
        """The TEMPLATE for a tokenizer with these BOS and EOS tokens, which adds BOS to text or not."""
        return (bos if self.starts_with_bos and not adds_bos else "") + self.template.replace(EOS, eos)


def _collate(messages: list[dict]) -> list[dict]:
    """The messages as Ollama hands them to a TEMPLATE: consecutive messages of one role (tool results
    aside) merged into one, their contents joined by a blank line."""
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["role"] == message["role"] != "tool":
            collated[-1] = {**collated[-1], "content": f"{collated[-1]['content']}\n\n{message['content']}"}
        else:
            collated.append(message)
    return collated


def _fold_system(messages: list[dict]) -> list[dict]:
    """Gemma's and Mistral's templates refuse a system turn, but Ollama's clients send one all the same. A role
    the model never saw would be worse than the instruction in the user's words: it opens the next user turn."""
    folded, system = [], ""
    for message in messages:
        if message["role"] == "system":
            system = message["content"]
        elif message["role"] == "user" and system:
            folded.append({**message, "content": f"{system}\n\n{message['content']}"})
            system = ""
        else:
            folded.append(message)
    return folded


# In the TEMPLATEs below, a system message's text opens the next user turn (as _fold_system does).
_FOLD_SYSTEM = '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}'
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # when none is given
LLAMA3_1_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"  # the template's own date


def _chatml(messages: list[dict], eos: str) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _qwen2_5(messages: list[dict], eos: str) -> str:
    has_system = bool(messages) and messages[0]["role"] == "system"
    return _chatml(messages if has_system else [{"role": "system", "content": QWEN_SYSTEM}, *messages], eos)


def _llama3(messages: list[dict], eos: str) -> str:
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return f"{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama3_1(messages: list[dict], eos: str) -> str:
    has_system = bool(messages) and messages[0]["role"] == "system"
    system = messages[0]["content"] if has_system else ""
    header = f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_1_SYSTEM}{system}<|eot_id|>"
    return header + _llama3(messages[1:] if has_system else messages, eos)


def _gemma(messages: list[dict], eos: str) -> str:
    roles = {"assistant": "model"}
    turns = "".join(
        f"<start_of_turn>{roles.get(m['role'], m['role'])}\n{m['content']}<end_of_turn>\n"
        for m in _fold_system(messages)
    )
    return turns + "<start_of_turn>model\n"


def _mistral(messages: list[dict], eos: str) -> str:
    turns = {"user": ("[INST] ", " [/INST]"), "assistant": ("", eos)}  # what goes before and after the content
    return "".join(
        turns[m["role"]][0] + m["content"] + turns[m["role"]][1] for m in _fold_system(messages) if m["role"] in turns
    )


def _phi3(messages: list[dict], eos: str) -> str:
    turns = "".join(
        f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages if m["role"] in ("system", "user", "assistant")
    )
    return turns + "<|assistant|>\n"


# One format per family, told apart by what they render, never by a model's name. What no TEMPLATE can do:
# Llama 3 and Gemma trim each message, and Go templates have no trim, so a message sent through Ollama with
# spaces or newlines around it keeps them; tools are not written (tunebook sends none); Llama 3.2's template
# writes today's date, which Ollama's TEMPLATE cannot, so it matches no format and is refused.
CHAT_FORMATS = (
    ChatFormat(
        "chatml",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        _chatml,
    ),
    ChatFormat(
        "qwen2_5",
        '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
        "<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n{{ end }}"
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        _qwen2_5,
    ),
    ChatFormat(
        "llama3",
        "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        _llama3,
        starts_with_bos=True,
    ),
    ChatFormat(
        "llama3_1",
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_1_SYSTEM}"
        '{{ if and .Messages (eq (index .Messages 0).Role "system") }}{{ (index .Messages 0).Content }}{{ end }}'
        '<|eot_id|>{{ range $i, $m := .Messages }}{{ if or $i (ne $m.Role "system") }}'
        "<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ $m.Content }}<|eot_id|>{{ end }}{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        _llama3_1,
        starts_with_bos=True,
    ),
    ChatFormat(
        "gemma",
        '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ else }}'
        '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        '{{ if eq .Role "user" }}' + _FOLD_SYSTEM + "{{ end }}"
        "{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n",
        _gemma,
        starts_with_bos=True,
    ),
    ChatFormat(
        "mistral",
        '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}'
        '{{ else if eq .Role "user" }}[INST] ' + _FOLD_SYSTEM + "{{ .Content }} [/INST]"
        '{{ else if eq .Role "assistant" }}{{ .Content }}' + EOS + "{{ end }}{{ end }}",
        _mistral,
        starts_with_bos=True,
    ),
    ChatFormat(
        "phi3",
        '{{ range .Messages }}{{ if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}'
        "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n",
        _phi3,
    ),
)

# Conversations the chat template is rendered on to recognise its format, since templates differ most at
# their edges. Every template must take the first REQUIRED_PROBES; those with a system turn it may refuse
# (Gemma's and Mistral's raise), and are then left out of the comparison.
PROBES = (
    [{"role": "user", "content": "Question one?"}],
    [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "Answer."},
        {"role": "user", "content": "Second?"},
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question two?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "Answer."},
        {"role": "user", "content": "Second?"},
    ],
)
REQUIRED_PROBES = 2


def chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """The chat format whose rendering equals the model's chat template on every probe the template takes;
    GGUFError if none does, as an Ollama TEMPLATE that differs from training is the commonest cause of a model
    that never stops."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    expected: list[str | None] = []
    for i, probe in enumerate(PROBES):
        try:
            expected.append(tokenizer.apply_chat_template(list(probe), add_generation_prompt=True, tokenize=False))
        except jinja2.TemplateError as error:
            if i < REQUIRED_PROBES:
                raise GGUFError(
                    f"the model's chat template refuses the conversation {probe} ({error}): "
                    "tunebook writes no Ollama TEMPLATE for it"
                ) from None
            expected.append(None)  # a system turn the template refuses: nothing to compare
    for fmt in CHAT_FORMATS:
        if all(text is None or text == fmt.prompt(p, bos, eos) for p, text in zip(PROBES, expected, strict=True)):
            return fmt
    known = ", ".join(f.name for f in CHAT_FORMATS)
    raise GGUFError(
        f"the model's chat template matches none of the formats tunebook writes an Ollama TEMPLATE for "
        f"({known}); add its format to tunebook.gguf.CHAT_FORMATS"
    )


def modelfile(gguf_name: str, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int], context_length: int) -> str:
    """An Ollama Modelfile: the GGUF, its chat format as TEMPLATE, a stop at every end-of-turn token, and
    greedy decoding as it was evaluated (Ollama's default repeat_penalty 1.1 would change the answers)."""
    fmt = chat_format(tokenizer)
    adds_bos, adds_eos = models.adds_bos_eos(tokenizer)
    # Ollama tokenizes the rendered TEMPLATE as the GGUF says the model's tokenizer does, which tunebook's own
    # prompts never do: a BOS or EOS the chat template does not write would be added to every prompt.
    if adds_bos and not fmt.starts_with_bos:
        raise GGUFError(
            f"the model's tokenizer puts {tokenizer.bos_token} before text, which its chat template "
            f"({fmt.name}) never writes: Ollama would add it to every prompt"
        )
    if adds_eos:
        raise GGUFError(
            f"the model's tokenizer puts {tokenizer.eos_token} after text: Ollama would end every prompt with it"
        )
    template = fmt.ollama_template(tokenizer.bos_token or "", tokenizer.eos_token or "", adds_bos)
    stops = "".join(f'PARAMETER stop "{piece}"\n' for piece in tokenizer.convert_ids_to_tokens(stop_ids))
    return (
        f"# Ollama: ollama create NAME -f Modelfile   (chat format: {fmt.name})\n"
        f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{template}"""\n'
        f"{stops}"
        "PARAMETER temperature 0\n"
        "PARAMETER repeat_penalty 1\n"
        f"PARAMETER num_ctx {context_length}\n"
    )
