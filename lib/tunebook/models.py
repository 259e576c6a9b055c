"""Loading models and running them: chat template, batched greedy generation, reference NLL.

Inference only: nothing here imports a trainer, so a model can be evaluated and served without trl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunebook.params import ALLOW_PICKLE, TRUST_REMOTE_CODE, opted_in


@dataclass(frozen=True)
class Generation:
    text: str
    stopped: bool  # ended its turn before max_new_tokens; a model that never stops was trained without its end token


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pretrained_options(weights: bool = True) -> dict:
    """Keyword arguments for every `from_pretrained`: no model's own Python code unless the user trusts it
    (TUNEBOOK_TRUST_REMOTE_CODE=1), and for weights safetensors only, as a pickle checkpoint can run code
    when loaded, unless the user allows pickles (TUNEBOOK_ALLOW_PICKLE=1; then safetensors still come first).
    A tokenizer or config takes weights=False: a tokenizer would save `use_safetensors` into its own config.
    """
    options = {"trust_remote_code": opted_in(TRUST_REMOTE_CODE)}
    if weights:
        options["use_safetensors"] = None if opted_in(ALLOW_PICKLE) else True
    return options


def adds_bos_eos(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether tokenizing text puts BOS in front of it and EOS after it, as this tokenizer really does."""
    probe = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bos is not None and probe[:1] == [bos], eos is not None and probe[-1:] == [eos]


def turn_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn in the chat template: the first special token written after the
    answer (<|im_end|>, <|eot_id|>, <end_of_turn>, <|end|>...), or EOS where the template ends turns with it."""
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    after = rendered[rendered.rindex("ANSWER") + len("ANSWER") :]
    # Tokens added as special for a template are not among all_special_ids.
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    found = next((t for t in tokenizer(after, add_special_tokens=False)["input_ids"] if t in special), None)
    if found is None and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS and its chat template ends turns with no special token")
    return found if found is not None else tokenizer.eos_token_id


def end_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids generation stops at: the end of an assistant turn, and EOS (Llama 3 ends a turn with <|eot_id|>,
    not its EOS <|end_of_text|>; Gemma with <end_of_turn>)."""
    ids = [turn_end_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def load_base(
    base: str, tokenizer: PreTrainedTokenizerBase, auto_class=AutoModelForCausalLM, **kwargs
) -> PreTrainedModel:
    """A base model sized for the tokenizer it is used with: a template that brought new tokens (ChatML on a
    base model) needs their embedding rows, which the adapter then fills with the trained ones."""
    model = auto_class.from_pretrained(base, **kwargs, **pretrained_options())
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_model(
    name: str, base: str, adapter: str | Path | None = None, tokenizer_dir: str | Path | None = None
) -> LoadedModel:
    """A base model, optionally with a PEFT adapter on top.

    The tokenizer (and so the chat template) comes from the adapter directory when it has one, or from
    tokenizer_dir (the base evaluated with the template its fine-tune was trained with): the template a
    model was trained with is the one it is evaluated and served with.
    """
    tokenizer_source = next(
        (d for d in (adapter, tokenizer_dir) if d and (Path(d) / "tokenizer_config.json").exists()), base
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **pretrained_options(weights=False))
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    model = load_base(base, tokenizer, dtype=dtype)
    if adapter:
        from peft import PeftModel  # peft is inference-safe; only imported when an adapter is used

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device()).eval()
    return LoadedModel(name, model, tokenizer)


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    temperature: float = 0.0,
) -> list[Generation]:
    """Answers to each conversation's last user turn, in the input order; greedy at temperature 0.

    Greedy answers in batches are the ones each prompt gets alone (tests/unit/test_models.py;
    benchmarks/bench_evaluate.py on the demo): see generate_tokens for how close.
    """
    tokenizer = loaded.tokenizer
    stops = end_ids(tokenizer)
    prompts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    new_tokens = generate_tokens(
        loaded.model,
        tokenizer,
        prompt_ids,
        max_new_tokens,
        batch_size,
        temperature,
        progress,
        f"generate {loaded.name}",
    )
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [
        Generation(text.strip(), bool(ids) and ids[-1] in stops) for text, ids in zip(texts, new_tokens, strict=True)
    ]


@torch.inference_mode()
def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    progress: bool = True,
    description: str = "generate",
) -> list[list[int]]:
    """The new tokens of each prompt, in the input order, up to and with the first end id (the end of an assistant
    turn, or EOS): what every stage generates with, the RL stage's rollouts included.

    Prompts run in batches of similar length (longest first), left-padded, with the KV cache. The logits agree with
    a prompt's alone to ~1e-5 on the demo model rather than to the bit, so only a near tie between the two best
    tokens could break another way. No attention implementation closes that gap on a CPU (measured): with sdpa and
    eager alike, padding lengthens the key axis the kernels sum over and regroups the sums, and the BLAS rounds a
    matmul's rows differently with the number of rows (MKL: under 4 rows, and by how rows split across threads).
    So the model keeps its default attention, sdpa: as fast as eager here, and much faster on a GPU.
    """
    stops = end_ids(tokenizer)
    # Many base models ship without a pad token; an end id can pad instead, as the attention mask hides
    # padding whatever its id.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    # Batches of similar lengths pad little, and longest first makes the batch that needs the most memory
    # the first one to run.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    completions: dict[int, list[int]] = {}
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=description, disable=not progress):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = left_padded([prompt_ids[i] for i in rows], pad_id)
        # transformers derives position ids from the attention mask, so a padded prompt's first real
        # token sits at position 0, as it does when the prompt runs alone.
        output = model.generate(
            input_ids=input_ids.to(device()),
            attention_mask=attention_mask.to(device()),
            max_new_tokens=max_new_tokens,
            **({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}),
            pad_token_id=pad_id,
            eos_token_id=stops,
        )
        # A row that ends before the rest of its batch is padded after its end id: it is cut there.
        for row, tokens in zip(rows, output[:, input_ids.shape[1] :].tolist(), strict=True):
            end = next((i for i, token in enumerate(tokens) if token in stops), len(tokens) - 1)
            completions[row] = tokens[: end + 1]
    return [completions[i] for i in range(len(prompt_ids))]


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to the longest prompt, so every row's next token goes at the end,
    and the attention mask that hides the padding."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    return input_ids, attention_mask


@torch.inference_mode()
def reference_nll(
    loaded: LoadedModel, conversations: list[list[dict]], batch_size: int, progress: bool = True
) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant turns (the references) and their token count."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    batches = range(0, len(conversations), batch_size)
    for start in tqdm(batches, desc=f"perplexity {loaded.name}", disable=not progress):
        encoded = tokenizer.apply_chat_template(
            conversations[start : start + batch_size],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            padding=True,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"].to(device())
        mask = torch.as_tensor(encoded["assistant_masks"], device=device()).bool()
        logits = loaded.model(input_ids=input_ids, attention_mask=encoded["attention_mask"].to(device())).logits
        targets = input_ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        ).item()
        count += int(mask[:, 1:].sum())
    return total, count


def perplexity(total_nll: float, tokens: int) -> float:
    return math.exp(total_nll / tokens) if tokens else float("nan")
