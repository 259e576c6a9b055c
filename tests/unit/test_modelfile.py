"""The Ollama Modelfile for every family of the zoo: its chat format recognised from what the stock chat
template renders, a TEMPLATE that prompts as the template does, and stops at the family's end of turn.

Ollama itself is not run here: its TEMPLATEs are checked for Go template structure, and their Python
renderings against the model's own chat template."""

import re
from pathlib import Path

import jinja2
import pytest
import zoo
from transformers import AutoTokenizer

from tunebook import gguf, models

# The stock templates, as the zoo builds them, plus Llama 3.1's (Llama 3's tokens, its own template).
TEMPLATES = {family: zoo.stock_template(family) for family in zoo.FAMILIES}
TEMPLATES["llama3_1"] = (zoo.TRL_TEMPLATES / "llama3_1.jinja").read_text(encoding="utf-8")
ZOO_FAMILY = {**{family: family for family in zoo.FAMILIES}, "llama3_1": "llama3"}

# What each family's model is prompted with for one user turn, BOS included.
USER_ONLY = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQuestion one?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3_1": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQuestion one?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2_5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nQuestion one?<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<bos><start_of_turn>user\nQuestion one?<end_of_turn>\n<start_of_turn>model\n",
    "mistral": "<s>[INST] Question one? [/INST]",
    "phi3": "<|user|>\nQuestion one?<|end|>\n<|assistant|>\n",
}
STOPS = {
    "llama3": ["<|eot_id|>", "<|end_of_text|>"],
    "llama3_1": ["<|eot_id|>", "<|end_of_text|>"],
    "qwen2_5": ["<|im_end|>"],
    "gemma": ["<end_of_turn>", "<eos>"],
    "mistral": ["</s>"],
    "phi3": ["<|end|>", "<|endoftext|>"],
}

# Conversations beyond the probes: several turns, a system turn, and content that looks like markup.
CONVERSATIONS = [
    [{"role": "user", "content": "What does json.dumps return?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "How do I use bisect.insort?"}],
    [
        {"role": "user", "content": "What is item 3?"},
        {"role": "assistant", "content": "Item 3 is a number."},
        {"role": "user", "content": "And  item 4 (with\ttabs, é, {{ .Role }} and <|im_end|> as text)?"},
    ],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "1."},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": "Three?"},
    ],
]


def family_tokenizer(family: str, directory: Path, add_bos_token: bool = False):
    """The family's tokenizer as the zoo builds it, with its stock chat template; add_bos_token makes
    tokenizer(text) put BOS in front, as the real Llama 3, Gemma and Mistral tokenizers do."""
    zoo.build(ZOO_FAMILY[family], directory, chat_template=TEMPLATES[family])
    return AutoTokenizer.from_pretrained(directory, add_bos_token=add_bos_token)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-tokenizers")
    return {family: family_tokenizer(family, root / family) for family in TEMPLATES}


@pytest.mark.parametrize("family", list(TEMPLATES))
def test_every_familys_stock_template_is_recognised_and_rendered_as_it_renders(family, tokenizers):
    tokenizer = tokenizers[family]
    fmt = gguf.chat_format(tokenizer)
    assert fmt.name == family
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    assert fmt.prompt([{"role": "user", "content": "Question one?"}], bos, eos) == USER_ONLY[family]
    accepted = 0
    for conversation in CONVERSATIONS:
        try:
            expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError:  # Gemma and Mistral refuse a system turn
            continue
        assert fmt.prompt(conversation, bos, eos) == expected
        accepted += 1
    assert accepted >= 2


@pytest.mark.parametrize("family", list(TEMPLATES))
def test_every_familys_modelfile_has_its_template_and_stops_at_its_end_of_turn(family, tokenizers):
    tokenizer = tokenizers[family]
    text = gguf.modelfile("m-q8_0.gguf", tokenizer, models.end_ids(tokenizer), 256)
    fmt = gguf.chat_format(tokenizer)
    # The zoo's tokenizers add no BOS to text, so the TEMPLATE writes the one the chat template writes.
    template = text.split('TEMPLATE """', 1)[1].split('"""\n', 1)[0]
    assert template == fmt.ollama_template(tokenizer.bos_token or "", tokenizer.eos_token or "", adds_bos=False)
    assert template.startswith(
        "<bos>"
        if family == "gemma"
        else "<s>"
        if family == "mistral"
        else "<|begin_of_text|>"
        if family.startswith("llama3")
        else "{{"
    )
    stops = [line.removeprefix("PARAMETER stop ") for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == [f'"{piece}"' for piece in STOPS[family]]
    assert f"(chat format: {family})" in text.splitlines()[0] and "FROM ./m-q8_0.gguf" in text.splitlines()


def test_mistral_ends_each_answer_with_the_tokenizers_own_eos(tokenizers):
    tokenizer = tokenizers["mistral"]
    template = gguf.chat_format(tokenizer).ollama_template("<s>", "</s>", adds_bos=False)
    assert "{{ .Content }}</s>{{ end }}" in template and gguf.EOS not in template
    answered = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "r"},
    ]
    assert gguf.chat_format(tokenizer).prompt(answered, "<s>", "</s>") == "<s>[INST] q [/INST]a</s>[INST] r [/INST]"


def test_a_tokenizer_that_adds_bos_leaves_it_out_of_the_template(tmp_path):
    # Ollama puts BOS in front of every prompt when the GGUF says the tokenizer adds it: written by the
    # TEMPLATE too, every prompt would start with two.
    tokenizer = family_tokenizer("gemma", tmp_path / "gemma", add_bos_token=True)
    assert models.adds_bos_eos(tokenizer) == (True, False)
    text = gguf.modelfile("m.gguf", tokenizer, models.end_ids(tokenizer), 256)
    assert 'TEMPLATE """{{ $system := "" }}{{ range .Messages }}' in text and "<bos>" not in text


def test_a_bos_that_the_template_never_writes_is_refused(tmp_path):
    tokenizer = family_tokenizer("phi3", tmp_path / "phi3", add_bos_token=True)
    with pytest.raises(gguf.GGUFError, match=r"puts <s> before text, which its chat template \(phi3\) never writes"):
        gguf.modelfile("m.gguf", tokenizer, models.end_ids(tokenizer), 256)


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_a_system_turn_the_template_refuses_opens_the_first_user_turn(family, tokenizers):
    tokenizer = tokenizers[family]
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question one?"}]
    with pytest.raises(jinja2.TemplateError):
        tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    prompt = gguf.chat_format(tokenizer).prompt(conversation, tokenizer.bos_token, tokenizer.eos_token)
    assert prompt == USER_ONLY[family].replace("Question one?", "Be brief.\n\nQuestion one?")


def test_messages_are_collated_as_ollama_collates_them():
    fmt = next(f for f in gguf.CHAT_FORMATS if f.name == "chatml")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert fmt.prompt(twice, "", "") == "<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}Assistant:", "matches none of"),
        # Llama 3.2's writes today's date, which no TEMPLATE can.
        ((zoo.TRL_TEMPLATES / "llama3_2.jinja").read_text(encoding="utf-8"), "matches none of"),
        ("{{ raise_exception('no conversations here') }}", r"refuses the conversation .* \(no conversations here\)"),
    ],
)
def test_a_template_no_format_matches_is_refused_in_one_line(template, message, tokenizers):
    tokenizer = tokenizers["llama3"]
    saved = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        with pytest.raises(gguf.GGUFError, match=message) as refused:
            gguf.modelfile("m.gguf", tokenizer, [tokenizer.eos_token_id], 256)
    finally:
        tokenizer.chat_template = saved
    assert "\n" not in str(refused.value)


# --- the TEMPLATEs are Go templates as Ollama executes them -----------------------------------------------

ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
OLLAMA_FIELDS = {"Messages", "Role", "Content", "System"}  # what these TEMPLATEs may read


def go_template_problems(template: str) -> list[str]:
    """What Go's text/template would refuse, or Ollama would not supply, in template: unbalanced delimiters,
    blocks that do not close, `else` outside a block, undeclared variables, unknown fields, unbalanced
    parentheses or quotes."""
    problems = []
    outside = ACTION.sub("", template)
    if "{{" in outside or "}}" in outside:
        problems.append("a delimiter without its pair")
    blocks, variables = [], {"$"}
    for raw in ACTION.findall(template):
        action = raw.removeprefix("-").removesuffix("-").strip()
        words = action.split()
        keyword = words[0] if words else ""
        if keyword in ("if", "range", "with"):
            blocks.append(keyword)
        elif keyword == "end":
            if not blocks:
                problems.append("an end without a block")
            else:
                blocks.pop()
        elif keyword == "else" and not blocks:
            problems.append("an else outside a block")
        if action.count("(") != action.count(")") or action.count('"') % 2:
            problems.append(f"unbalanced parentheses or quotes in {{{{{raw}}}}}")
        code = re.sub(r'"[^"]*"', '""', action)
        for declared in re.findall(r"((?:\$\w+\s*,\s*)?\$\w+)\s*:=", code):  # $x := ... or range $i, $m := ...
            variables.update(re.findall(r"\$\w+", declared))
        problems += [f"{v} is not declared" for v in re.findall(r"\$\w+", code) if v not in variables]
        fields = re.findall(r"\.(\w+)", code)
        problems += [f".{name} is not a field Ollama gives" for name in fields if name not in OLLAMA_FIELDS]
    if blocks:
        problems.append(f"{len(blocks)} block(s) never closed")
    return problems


@pytest.mark.parametrize("fmt", gguf.CHAT_FORMATS, ids=lambda f: f.name)
def test_every_template_is_a_go_template_over_ollamas_messages(fmt):
    template = fmt.ollama_template("<s>", "</s>", adds_bos=False)
    assert go_template_problems(template) == []
    assert ".Messages" in template  # how Ollama knows to hand it the whole conversation
    assert '"""' not in template  # it sits inside TEMPLATE """..."""


def test_the_go_template_check_finds_what_go_would_refuse():
    assert go_template_problems("{{ range .Messages }}{{ .Content }}") == ["1 block(s) never closed"]
    assert go_template_problems("{{ .Content }}{{ end }}") == ["an end without a block"]
    assert go_template_problems("{{ if $x }}a{{ end }}") == ["$x is not declared"]
    assert go_template_problems("{{ range .Messages }}{{ .Text }}{{ end }}") == [".Text is not a field Ollama gives"]
    assert go_template_problems('{{ if (eq .Role "user" }}a{{ end }} }}') == [
        "a delimiter without its pair",
        'unbalanced parentheses or quotes in {{ if (eq .Role "user" }}',
    ]
