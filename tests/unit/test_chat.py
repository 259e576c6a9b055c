"""The chat template SFT trains with: chosen, checked and pictured before any compute (tunebook.chat)."""

import pytest
from transformers import AutoTokenizer

from tunebook import chat, plots
from tunebook.chat import CHATML, TemplateError
from tunebook.sft import prepare_template

MESSAGES = [
    {"role": "user", "content": "What does `json.dumps` do?"},
    {"role": "assistant", "content": "Serialize obj to a JSON formatted str."},
]
UNMARKED_CHATML = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(mask: chat.TokenMask) -> str:
    # SentencePiece writes a space as ▁; byte-level BPE (Qwen) writes it as Ġ and a newline as Ċ.
    text = "".join(t for t, keep in zip(mask.tokens, mask.trained, strict=True) if keep)
    return text.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "\n")


def test_the_tiny_template_is_kept_and_trains_the_answer_and_its_end_of_turn_only(tokenizer):
    template, mask = prepare_template(tokenizer, "auto", [MESSAGES])
    assert (template.source, template.loss, template.added_tokens) == ("model", "assistant", [])
    assert trained_text(mask) == "Serialize obj to a JSON formatted str.<|im_end|>"
    assert plots.token_mask(mask.tokens, mask.trained).axes  # the report's picture of it


def test_a_stock_template_trl_does_not_know_trains_the_completion_after_its_prompt(tokenizer):
    """No {% generation %} markers and no TRL training version: the model's own template is kept, and the loss
    covers what follows the rendered prompt, end-of-turn included (TRL's prompt/completion rows)."""
    tokenizer.chat_template = UNMARKED_CHATML
    template, mask = prepare_template(tokenizer, "auto", [MESSAGES])
    assert (template.source, template.loss, template.text) == ("model", "completion", UNMARKED_CHATML)
    assert trained_text(mask) == "Serialize obj to a JSON formatted str.<|im_end|><0x0A>"
    assert chat.as_prompt_completion(MESSAGES) == {"prompt": MESSAGES[:1], "completion": MESSAGES[1:]}


def test_an_end_of_turn_left_out_of_the_mask_is_refused(tokenizer):
    tokenizer.chat_template = CHATML.replace(
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
        "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}",
    )
    with pytest.raises(TemplateError, match=r"end-of-turn token '<\|im_end\|>' is not among the trained tokens"):
        prepare_template(tokenizer, "auto", [MESSAGES])


def test_a_template_marking_everything_is_refused(tokenizer):
    tokenizer.chat_template = "{% generation %}" + UNMARKED_CHATML + "{% endgeneration %}"
    with pytest.raises(TemplateError, match="every token"):
        prepare_template(tokenizer, "auto", [MESSAGES])


def test_a_template_whose_prompt_is_not_the_start_of_its_conversation_is_refused(tokenizer):
    tokenizer.chat_template = UNMARKED_CHATML.replace(
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}", "{% if add_generation_prompt %}{{ 'A:' }}"
    )
    with pytest.raises(TemplateError, match="does not render a prompt as the start of its conversation"):
        prepare_template(tokenizer, "auto", [MESSAGES])


def test_a_named_template_brings_the_tokens_it_writes_as_special_tokens(tokenizer):
    """llama3 on the tiny vocabulary: its header and end-of-turn tokens are added as single special ids, and the
    end of the assistant's turn is <|eot_id|>, which the loss trains."""
    before = len(tokenizer)
    template, mask = prepare_template(tokenizer, "llama3", [MESSAGES])
    assert template.source == "trl:llama3" and template.loss == "assistant"
    assert set(template.added_tokens) == {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
    assert len(tokenizer) == before + 3
    assert "<|eot_id|>" in mask.tokens and trained_text(mask).endswith("<|eot_id|>")
    from tunebook.models import end_ids

    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in end_ids(tokenizer)


def test_a_jinja_file_and_unknown_names_are_answered_in_one_line(tokenizer, tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(CHATML, encoding="utf-8")
    template, _ = prepare_template(tokenizer, str(path), [MESSAGES])
    assert template.source == f"file:{path}" and template.text == CHATML
    with pytest.raises(TemplateError, match=r"unknown template 'lama3'.*chatml.*llama3.*qwen2_5"):
        chat.choose(tokenizer, "lama3")
    with pytest.raises(TemplateError, match="no such file"):
        chat.choose(tokenizer, str(tmp_path / "missing.jinja"))


def test_a_swapped_in_template_that_renders_otherwise_is_refused(tokenizer):
    stock = UNMARKED_CHATML
    drifted = chat.ChatTemplate(CHATML.replace("'\\n' }}{% endfor %}", "'\\n\\n' }}{% endfor %}"), "trl:x", "assistant")
    with pytest.raises(TemplateError, match=r"renders training example 0 differently"):
        chat.check_rendering(stock, drifted, tokenizer, [MESSAGES])
    chat.check_rendering(stock, chat.ChatTemplate(CHATML, "trl:x", "assistant"), tokenizer, [MESSAGES])


# Each zoo family's stock template: the template SFT trains with under `auto`, its loss, and the token that ends
# its turn (tests/unit/test_zoo_pipeline.py takes them through every stage).
STOCK = {
    "llama3": ("trl:llama3", "assistant", "<|eot_id|>"),
    "qwen2_5": ("trl:qwen2_5", "assistant", "<|im_end|>"),
    "gemma": ("trl:gemma", "assistant", "<end_of_turn>"),
    "mistral": ("model", "completion", "</s>"),
    "phi3": ("trl:phi3", "assistant", "<|end|>"),
}
CONVERSATIONS = [
    MESSAGES,
    [{"role": "system", "content": "Answer briefly."}, *MESSAGES],
    [*MESSAGES, {"role": "user", "content": "And json.loads?"}, {"role": "assistant", "content": "The reverse."}],
]


@pytest.mark.parametrize("family", STOCK)
def test_stock_templates_are_accepted_and_prompt_as_at_inference(family, zoo):
    """The template a stock model trains with renders every prompt and conversation its own template
    accepts exactly as its own does; the loss trains the answer and the family's end-of-turn token."""
    stock = AutoTokenizer.from_pretrained(zoo(family))
    tokenizer = AutoTokenizer.from_pretrained(zoo(family))
    accepted = []
    for messages in CONVERSATIONS:
        try:
            stock.apply_chat_template(messages, tokenize=False)
            accepted.append(messages)
        except Exception:  # noqa: BLE001 - Gemma's and Mistral's templates refuse a system turn
            continue
    template, mask = prepare_template(tokenizer, "auto", accepted)
    assert (template.source, template.loss) == STOCK[family][:2]
    assert template.added_tokens == []
    for messages in accepted:
        for part, kwargs in ((messages[:-1], {"add_generation_prompt": True}), (messages, {})):
            assert tokenizer.apply_chat_template(part, tokenize=False, **kwargs) == stock.apply_chat_template(
                part, tokenize=False, **kwargs
            )
    trained = trained_text(mask)
    # The answer, then the token ending its turn; what follows it (a newline, Phi-3's EOS) may be trained too.
    assert trained.strip().startswith("Serialize obj to a JSON formatted str." + STOCK[family][2])
    assert "json.dumps" not in trained
    from tunebook.models import end_ids

    assert end_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids(STOCK[family][2])
    assert plots.token_mask(mask.tokens, mask.trained).axes
