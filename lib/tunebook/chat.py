"""The chat template a model is trained with, and proof that it prompts the model as inference will.

`sft.chat_template` chooses it:
- `auto`: the model's own template when it marks the assistant turns with {% generation %}; else TRL's
  training version of it (`trl/chat_templates/*_training.jinja`, which renders the same text with the
  markers added); else, for a stock template TRL does not know (Mistral, Llama 3.1...), the model's own
  template, trained on prompt/completion rows: the loss covers what follows the rendered prompt, which
  holds for any template that renders a prompt as a prefix of the whole conversation. A base model
  without a template gets `chatml`.
- a name: `chatml` (tunebook's) or a TRL training template (`llama3`, `qwen2_5`, `gemma`, `phi3`...).
- a path to a `.jinja` file.
A template that writes tokens the vocabulary lacks (ChatML's <|im_start|> on a base model) brings them
as new special tokens; training resizes the embeddings and trains their rows.

The template chosen is saved with the adapter, so evaluation, DPO, the reward model and the export
all prompt the model the way it was trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import AddedToken, PreTrainedTokenizerBase

from tunebook.files import sha256_text
from tunebook.models import turn_end_id

# ChatML. The assistant's content and its <|im_end|> sit inside {% generation %} so that an
# assistant-only loss teaches the model to end its turn; the newline after it is not trained.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Pieces a template writes that look like control tokens: <|im_start|>, <|eot_id|>, <start_of_turn>...
_CONTROL_PIECE = re.compile(r"<\|[^|\s<>'\"]+\|>|<[a-z][a-z_]*>")


class TemplateError(ValueError):
    """A chat template that cannot train the model correctly; the message says what to fix."""


@dataclass(frozen=True)
class ChatTemplate:
    text: str  # the template the model is trained, evaluated and served with
    source: str  # model, trl:NAME, tunebook:chatml or file:PATH
    # assistant: the loss covers the {% generation %} spans; completion: what follows the rendered prompt
    loss: Literal["assistant", "completion"]
    added_tokens: list[str] = field(default_factory=list)  # special tokens it needs that the base lacked

    @property
    def hash(self) -> str:
        return sha256_text(self.text)[:16]

    def record(self) -> dict:
        """What the registry keeps of it."""
        return {"source": self.source, "loss": self.loss, "hash": self.hash, "added_tokens": self.added_tokens}


def has_markers(template: str) -> bool:
    return bool(_GENERATION_MARKER.search(template))


def stock_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def names() -> list[str]:
    """Every template name `sft.chat_template` takes."""
    return [
        "chatml",
        *sorted(path.name.removesuffix("_training.jinja") for path in _trl_dir().glob("*_training.jinja")),
    ]


def _trl_dir() -> Path:
    import trl

    return Path(trl.__file__).parent / "chat_templates"


def choose(tokenizer: PreTrainedTokenizerBase, setting: str) -> ChatTemplate:
    """The template `setting` names for this tokenizer (see the module docstring); TemplateError if none."""
    stock = stock_template(tokenizer)
    if setting == "auto":
        if stock is None:
            return _with_tokens(tokenizer, ChatTemplate(CHATML, "tunebook:chatml", "assistant"))
        if has_markers(stock):
            return ChatTemplate(stock, "model", "assistant")
        from trl.chat_template_utils import get_training_chat_template

        try:
            patched = get_training_chat_template(tokenizer)
        except ValueError:  # a stock template TRL has no training version of
            return ChatTemplate(stock, "model", "completion")
        return ChatTemplate(patched, f"trl:{_trl_name(patched)}", "assistant")
    if setting.endswith((".jinja", ".j2")):
        path = Path(setting).expanduser()
        if not path.is_file():
            raise TemplateError(f"sft.chat_template: no such file {path}")
        text = path.read_text(encoding="utf-8")
        return _with_tokens(
            tokenizer, ChatTemplate(text, f"file:{path}", "assistant" if has_markers(text) else "completion")
        )
    if setting == "chatml":
        return _with_tokens(tokenizer, ChatTemplate(CHATML, "tunebook:chatml", "assistant"))
    path = _trl_dir() / f"{setting}_training.jinja"
    if not path.is_file():
        raise TemplateError(
            f"sft.chat_template: unknown template {setting!r}: use auto, a .jinja file or one of {', '.join(names())}"
        )
    return _with_tokens(tokenizer, ChatTemplate(path.read_text(encoding="utf-8"), f"trl:{setting}", "assistant"))


def _trl_name(text: str) -> str:
    return next(
        p.name.removesuffix("_training.jinja")
        for p in _trl_dir().glob("*_training.jinja")
        if p.read_text(encoding="utf-8") == text
    )


def _with_tokens(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> ChatTemplate:
    """The template with the control tokens it writes that this vocabulary has no single id for."""
    vocab = tokenizer.get_vocab()
    missing = sorted({piece for piece in _CONTROL_PIECE.findall(template.text) if piece not in vocab})
    return ChatTemplate(template.text, template.source, template.loss, missing)


def apply(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> PreTrainedTokenizerBase:
    """Give the tokenizer the template, and its new tokens as special tokens (the model must then be resized)."""
    if template.added_tokens:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in template.added_tokens], special_tokens=True
        )
    tokenizer.chat_template = template.text
    return tokenizer


def check_rendering(
    stock: str, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]]
) -> None:
    """A training template that replaces the model's own must render every prompt, and every whole
    conversation, exactly as the model's own does: the model is then prompted at inference as it was trained."""
    if template.text == stock:
        return
    for index, messages in enumerate(conversations):
        for part, kwargs in ((messages[:-1], {"add_generation_prompt": True}), (messages, {})):
            ours = tokenizer.apply_chat_template(part, tokenize=False, chat_template=template.text, **kwargs)
            theirs = tokenizer.apply_chat_template(part, tokenize=False, chat_template=stock, **kwargs)
            if ours != theirs:
                raise TemplateError(
                    f"the training template ({template.source}) renders training example {index} differently from "
                    f"the model's own template ({ours[:60]!r}... vs {theirs[:60]!r}...): set sft.chat_template to "
                    "a template that renders as the model's does"
                )


@dataclass
class TokenMask:
    """One example as the trainer sees it: its tokens, and which of them the loss trains."""

    tokens: list[str]
    trained: list[bool]


def token_mask(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, messages: list[dict]) -> TokenMask:
    """Which tokens of a training example the loss trains, as TRL computes it for the template, once the
    tokenizer has it (see apply); TemplateError when that would train nothing, everything, or never the token
    that ends the assistant's turn."""
    if template.loss == "assistant":
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = encoded["input_ids"], [bool(m) for m in encoded["assistant_masks"]]
    else:
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if ids[: len(prompt)] != prompt:
            raise TemplateError(
                f"the chat template ({template.source}) does not render a prompt as the start of its conversation, so "
                "the answer cannot be told apart: use a template with {% generation %} markers (sft.chat_template)"
            )
        mask = [False] * len(prompt) + [True] * (len(ids) - len(prompt))
    if not any(mask):
        raise TemplateError(
            "the chat template marks no assistant token in a training example: nothing would be trained"
        )
    if all(mask):
        raise TemplateError("the chat template marks every token as the assistant's: the prompts would be trained too")
    end = turn_end_id(tokenizer)
    if end not in {token for token, trained in zip(ids, mask, strict=True) if trained}:
        raise TemplateError(
            f"the end-of-turn token {tokenizer.convert_ids_to_tokens(end)!r} is not among the trained tokens: the "
            "model would never learn to stop; move it inside {% generation %}...{% endgeneration %}"
        )
    return TokenMask(tokenizer.convert_ids_to_tokens(ids), mask)


def as_prompt_completion(messages: list[dict]) -> dict:
    """A conversation as TRL's prompt/completion row: the last (assistant) turn is the completion."""
    return {"prompt": messages[:-1], "completion": messages[-1:]}
