"""sft.mix: general rows mixed into the domain's at their ratio, seeded, and decontaminated against the domain's
test split and the general evaluation set."""

import json

import pytest

from tunebook import mix
from tunebook.params import MixSourceParams, Params, SftParams

SHARED = "returns an iterator that aggregates elements from each of the iterables in turn until the shortest ends"


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


DOMAIN = [chat(f"What does json.f{i} do?", f"It does thing {i}.") for i in range(20)]


def test_each_source_adds_its_ratio_of_rows_repeating_a_small_source(tmp_path):
    general = write(tmp_path / "g.jsonl", [chat(f"What is g{i}?", f"General answer {i}.") for i in range(10)])
    half = mix.mix(DOMAIN, [MixSourceParams(name="g", path=general, ratio=0.5)], "messages", [], 13, seed=0)
    assert half.sources.count("domain") == 20 and half.sources.count("g") == 10
    kept = [json.dumps(row) for row, source in zip(half.rows, half.sources, strict=True) if source == "domain"]
    assert sorted(kept) == sorted(map(json.dumps, DOMAIN))
    double = mix.mix(DOMAIN, [MixSourceParams(name="g", path=general, ratio=2.0)], "messages", [], 13, seed=0)
    drawn = [json.dumps(row) for row, source in zip(double.rows, double.sources, strict=True) if source == "g"]
    assert len(drawn) == 40 and len(set(drawn)) == 10  # every row four times
    table = mix.table(half).set_index("source")
    assert table.loc["g", "rows"] == 10 and table.loc["domain", "share"] == round(20 / 30, 3)


def test_the_mixture_is_the_same_for_a_seed_and_another_for_another(tmp_path):
    general = write(tmp_path / "g.jsonl", [chat(f"What is g{i}?", f"General answer {i}.") for i in range(30)])
    sources = [MixSourceParams(name="g", path=general, ratio=0.5)]
    first, again = (mix.mix(DOMAIN, sources, "messages", [], 13, seed=0) for _ in range(2))
    other = mix.mix(DOMAIN, sources, "messages", [], 13, seed=1)
    assert first.rows == again.rows and first.data_hash == again.data_hash
    assert first.rows != other.rows


def test_rows_sharing_an_ngram_with_a_test_or_evaluation_text_are_left_out_and_counted(tmp_path):
    rows = [
        chat("What does zip do?", f"It {SHARED}."),  # shares 13 words with the domain's test split
        chat("What does chain do?", "It chains iterables one after another, each to its end, then the next one."),
        chat("What is a queue?", "A first-in first-out store of items that threads put and get."),
    ]
    general = write(tmp_path / "g.jsonl", rows)
    evaluation = write(tmp_path / "eval.jsonl", [{"id": "e", "text": rows[1]["messages"][1]["content"]}])
    against = [f"zip {SHARED}", *mix.evaluation_texts([evaluation])]
    mixed = mix.mix(DOMAIN, [MixSourceParams(name="g", path=general, ratio=0.1)], "messages", against, 13, seed=0)
    assert mixed.removed == {"g": 2}
    assert [row for row, source in zip(mixed.rows, mixed.sources, strict=True) if source == "g"] == [rows[2]] * 2
    everything = [*against, rows[2]["messages"][1]["content"]]
    with pytest.raises(ValueError, match="sft.mix g: every row overlaps the test or evaluation texts"):
        mix.mix(DOMAIN, [MixSourceParams(name="g", path=general, ratio=0.1)], "messages", everything, 5, 0)


def test_the_evaluation_set_is_read_from_task_yaml_and_decontaminates_the_shipped_instructions():
    texts = mix.evaluation_texts(
        ["params/general/stdlib_text.jsonl", "params/general/tunebook_stdlib_mc.yaml", "arc_easy"]
    )
    source = MixSourceParams(name="s", path="params/general/stdlib_chat.jsonl", ratio=1)
    shipped = [mix.texts_of(row) for row in mix.read_source(source)]
    assert len(texts) == 2 * 89 and not any(mix.quality.ngram_overlap(shipped, texts, 8))


def test_mix_against_defaults_to_the_general_evaluation_set():
    params = Params.model_validate({"evaluate": {"forgetting": {"tasks": ["params/general/tunebook_stdlib_mc.yaml"]}}})
    assert params.sft.mix_against == ["params/general/stdlib_text.jsonl", "params/general/tunebook_stdlib_mc.yaml"]
    assert Params.model_validate({"sft": {"mix_against": []}}).sft.mix_against == []


def test_sft_training_data_mixes_chat_rows_and_replays_general_text(tmp_path):
    from tunebook.chunking import Chunk
    from tunebook.sft import training_data

    for split, rows in (("train", DOMAIN), ("val", DOMAIN[:2]), ("test", [chat("What does zip do?", SHARED)])):
        write(tmp_path / f"{split}.jsonl", [{"id": f"{split}{i}", **row} for i, row in enumerate(rows)])
    (tmp_path / "card.json").write_text(json.dumps({"dataset_hash": "h", "warnings": []}))
    general = write(tmp_path / "g.jsonl", [chat("What is g?", "General."), chat("What is zip?", SHARED)])
    plain = training_data(SftParams(), tmp_path, [])
    params = SftParams(mix=[{"name": "g", "path": general, "ratio": 0.5}], mix_against=[])
    mixed = training_data(params, tmp_path, [], 0)
    assert plain.mixture is None and len(plain.train) == 20
    assert len(mixed.train) == 30 and mixed.data_hash != plain.data_hash and mixed.mixture.removed == {"g": 1}
    assert mixed.train.column_names == ["messages"]
    # continued pre-training replays general text
    chunks = [Chunk(id=f"c{i}", source="s.md", index=i, heading="", text=f"domain text {i}") for i in range(40)]
    text = write(tmp_path / "t.jsonl", [{"id": "t", "text": "General prose about queues and threads."}])
    replay = SftParams(task="text", mix=[{"name": "prose", "path": text, "ratio": 0.25}], mix_against=[])
    data = training_data(replay, tmp_path, chunks, 0)
    assert data.mixture.sources.count("prose") == round(0.25 * data.mixture.sources.count("domain"))


def test_the_demo_runs_without_the_mix_by_one_override(checkout_workdir):
    from tunebook.params import load_params

    demo = load_params(checkout_workdir / "params" / "demo.yaml")
    assert [source.name for source in demo.sft.mix] == ["stdlib-general"]
    unmixed = load_params(checkout_workdir / "params" / "demo.yaml", ["run.id=nomix", "sft.mix=[]"])
    assert unmixed.sft.mix == [] and unmixed.run.id == "nomix"


def test_the_model_card_says_where_the_train_rows_came_from():
    from tunebook.sft import _model_card

    entry = {
        "params": SftParams().model_dump(),
        "metrics": {},
        "chat_template": None,
        "base_model": "b",
        "base_hash": "h",
        "dataset_hash": "d",
        "trainable_params": 1,
        "mixture": {"domain": 20, "stdlib-general": 4},
    }
    assert "train rows by source: domain 20, stdlib-general 4" in _model_card("r", entry)
    assert "train rows by source" not in _model_card("r", {**entry, "mixture": None})
