"""General ability: perplexity on general text, and lm-evaluation-harness on the offline task the repo ships, for
the base and an adapter model loaded from the registry."""

import json
import math

import pytest
import torch

from tunebook import general, models, registry

TASK = "params/general/tunebook_stdlib_mc.yaml"


def test_the_shipped_general_set_is_out_of_the_demos_domain_and_its_task_reads_its_data_beside_it():
    from tunebook.params import load_params

    demo = set(load_params(general.paths.project_root() / "params" / "demo.yaml").ingest.stdlib_modules)
    path = general.paths.project_root() / "params" / "general" / "stdlib_text.jsonl"
    modules = {json.loads(line)["title"].split(".")[0] for line in path.read_text().splitlines()}
    assert len(general.read_texts(path)) > 50 and modules and not modules & demo
    config = general.task_config(TASK)
    data = config["dataset_kwargs"]["data_files"]["test"]
    assert data == str(general.paths.project_root() / "params" / "general" / "stdlib_mc.jsonl")
    item = json.loads(open(data).readline())
    assert len(item["choices"]) == 4 and 0 <= item["answer"] < 4
    assert general.task_config("arc_easy") == "arc_easy"  # a name goes to lm-eval as it is


def test_text_nll_is_the_models_own_loss(tiny_model):
    loaded = models.load_model("base", tiny_model)
    texts = ["Return series of accumulated sums.", "Make an iterator that returns elements from the first iterable."]
    scored = general.text_nll(loaded, texts, batch_size=2)  # padded together
    for text, row in zip(texts, scored.itertuples(), strict=True):
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            loss = loaded.model(input_ids=ids, labels=ids).loss.item()
        assert row.tokens == ids.shape[1] - 1 and math.isclose(row.nll / row.tokens, loss, rel_tol=1e-4)


def test_a_bad_general_text_is_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: expected JSONL lines with a text field"):
        general.read_texts(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="nope.jsonl: no such file"):
        general.read_texts("nope.jsonl")


@pytest.fixture
def zoo_sft(zoo, tmp_path, workdir):
    """A registered SFT adapter (run `t`) on the zoo's Llama 3, whose 512 positions fit the task's items."""
    from conftest import registered_sft

    return registered_sft(str(zoo("llama3")), tmp_path, learning_rate=1e-2)


def test_lm_eval_runs_offline_on_the_shipped_task_for_base_and_adapter_and_equals_a_direct_call(zoo_sft):
    import lm_eval

    base, sft = registry.resolve("base", "t"), registry.resolve("sft", "t")
    scores = {spec["name"]: general.lm_eval_scores(spec, [TASK], batch_size=8, limit=12) for spec in (base, sft)}
    for name, table in scores.items():
        acc = table[(table["task"] == "tunebook_stdlib_mc") & (table["metric"] == "acc")].iloc[0]
        assert 0 <= acc["value"] <= 1 and acc["stderr"] > 0 and acc["model"] == name
    # The adapter goes on top of the base, with the tokenizer it was trained with.
    assert general.model_args(sft)["peft"] == sft["adapter"] and "peft" not in general.model_args(base)
    # The base through tunebook is lm-eval's own hf model on the same base, tokenizer (the trained chat template)
    # and settings: the same scores.
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": base["base_model"], "tokenizer": base["tokenizer"], "dtype": "auto"},
        tasks=[general.task_config(TASK)],
        batch_size=8,
        device="cpu",
        limit=12,
        apply_chat_template=True,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    assert general.scores_table("base", direct["results"]).equals(scores["base"])


def test_forgetting_compares_general_perplexity_per_text_and_task_scores_with_their_stderr():
    import pandas as pd

    from tunebook.params import EvaluateParams

    nll = pd.DataFrame(
        [
            {"model": m, "id": f"t{i}", "nll": 10.0 * (1.5 if m == "sft" else 1.0) + i, "tokens": 10}
            for m in ("base", "sft")
            for i in range(20)
        ]
    )
    scores = pd.DataFrame(
        [
            {"model": "base", "task": "mc", "metric": "acc", "value": 0.50, "stderr": 0.01},
            {"model": "sft", "task": "mc", "metric": "acc", "value": 0.40, "stderr": 0.01},
            {"model": "sft", "task": "other", "metric": "acc", "value": 0.9, "stderr": 0.01},  # no baseline score
        ]
    )
    params = EvaluateParams(models=["base", "sft"], forgetting={"max_drop": 5.0})
    lost = general.forgetting(nll, scores, params, seed=0).set_index("measure")
    assert lost.loc["general perplexity", "change"] == "+64.9%"  # exp(0.5 nats/token) - 1
    assert lost.loc["general perplexity", "flagged"] and lost.loc["mc acc", "flagged"]
    assert lost.loc["mc acc", "change"] == "-10.0 points" and lost.loc["mc acc", "95% CI"] == "[-12.8, -7.2]"
    assert "other acc" not in lost.index
    comparison = pd.DataFrame(
        [{"system": "sft", "metric": "f1", "delta": 9.0, "ci_low": 4.9, "ci_high": 13.4}]
        + [{"system": "sft+rag", "metric": "f1", "delta": 1.0, "ci_low": 0.0, "ci_high": 2.0}]
    )
    beside = general.forgetting(nll, scores, params, seed=0, comparison=comparison)
    assert beside.iloc[0].to_dict() == {
        "model": "sft",
        "measure": "domain f1",
        "change": "+9.0 points",
        "95% CI": "[+4.9, +13.4]",
        "flagged": False,
    }
    assert len(beside) == len(lost) + 1  # the closed-book system only
    kept = general.forgetting(
        nll, scores, EvaluateParams(models=["base", "sft"], forgetting={"max_drop": 80.0}), seed=0
    )
    assert not kept["flagged"].any()
    assert general.scores_table(
        "m", {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 9, "alias": "t"}}
    ).to_dict("records") == [{"model": "m", "task": "t", "metric": "acc", "value": 0.5, "stderr": 0.1}]


def test_an_edited_general_text_or_task_file_reruns_evaluate(workdir):
    import shutil

    from tunebook import runner
    from tunebook.params import Params

    shutil.copytree(general.paths.project_root() / "params" / "general", workdir / "mine")
    forgetting = {"text": "mine/stdlib_text.jsonl", "tasks": ["mine/tunebook_stdlib_mc.yaml", "arc_easy"]}
    params = Params.model_validate({"evaluate": {"forgetting": forgetting}})
    before = runner.input_hashes(params, "evaluate", {})
    assert {"mine/stdlib_text.jsonl", "mine/tunebook_stdlib_mc.yaml"} <= set(before)
    with open(workdir / "mine" / "stdlib_mc.jsonl", "a") as f:
        f.write('{"id": "x", "question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 0}\n')
    after = runner.input_hashes(params, "evaluate", {})
    assert after["mine/tunebook_stdlib_mc.yaml"] != before["mine/tunebook_stdlib_mc.yaml"]
    assert after["mine/stdlib_text.jsonl"] == before["mine/stdlib_text.jsonl"]
