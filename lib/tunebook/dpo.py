"""Stage 04: preference pairs from the SFT model's own answers, then DPO on top of the SFT adapter.

Two ways to get pairs, both on train prompts only (never a test prompt):
- sample_judge: draw `candidates` answers per prompt by temperature sampling, score them (the judge's grade,
  a metric against the reference, or the reward model), and pair the best with a random worse one.
- self_critique: the SFT model's greedy answers that the judge grades as failures are critiqued and revised
  (by the model itself or by the judge's LLM); revision over original, kept only when it scores higher.

DPO (TRL) then trains the SFT adapter further, against a frozen copy of it as the reference model.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tunebook import chunking, dataset, evaluate, judge, llm, metrics, models, paths, quality, recipe, registry
from tunebook.files import hash_fraction, hash_tree, jsonl_text, read_complete_lines, sha256_text, write_atomic
from tunebook.params import DpoParams, EvaluateParams, RlParams

PAIRS_FILE = "pairs.jsonl"


class DpoError(ValueError):
    """DPO refuses to start: the message says why and what to change."""


# --- prompts ----------------------------------------------------------------------------------------------


@dataclass
class PairSources:
    """What preference pairs are made from: train prompts, their passages, and the policy that answers them."""

    prompts: pd.DataFrame  # the train prompts pairs are built from: id, question, reference, chunk_id
    chunk_texts: dict[str, str]  # chunk id -> text: the source passage the judge is shown
    policy: models.LoadedModel  # the model DPO starts from, which answers, samples and critiques
    base_model: str
    adapter: str  # the policy's adapter, with the tokenizer and chat template it was trained with


def inputs(run_id: str, params: DpoParams, seed: int) -> PairSources:
    """This run's train prompts (decontaminated against its test split), chunks, and the model to improve."""
    dataset_dir = paths.stage_dir(run_id, "generate")
    prompts = train_prompts(
        dataset.read_split(dataset_dir, "train"), dataset.read_split(dataset_dir, "test"), params, seed
    )
    chunks = chunking.read_chunks(paths.stage_dir(run_id, "ingest") / "chunks.jsonl")
    spec = registry.resolve(params.model, run_id)
    policy = models.load_model(params.model, spec["base_model"], spec["adapter"])
    return PairSources(prompts, {c.id: c.text for c in chunks}, policy, spec["base_model"], spec["adapter"])


def train_prompts(
    train_rows: list[dict], test_rows: list[dict], params: DpoParams | RlParams, seed: int
) -> pd.DataFrame:
    """Train rows to build pairs from (a seeded sample of `prompts` of them), never one sharing a question
    or an n-gram of `decontamination_ngram` words with a test item: pairs are decontaminated against the test
    split."""
    test_ids = {row["id"] for row in test_rows}
    test_texts = [quality.conversation_text(row) for row in test_rows]
    rows = [row for row in train_rows if row["id"] not in test_ids]
    texts = [quality.conversation_text(row) for row in rows]
    overlap = quality.ngram_overlap(texts, test_texts, params.decontamination_ngram)
    rows = [row for row, shared in zip(rows, overlap, strict=True) if shared == 0]
    if params.prompts and len(rows) > params.prompts:
        rows = random.Random(seed).sample(rows, params.prompts)
    return pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "question": [r["messages"][-2]["content"] for r in rows],
            "reference": [r["messages"][-1]["content"] for r in rows],
            "chunk_id": [r.get("chunk_id") for r in rows],
        }
    )


# --- scoring ------------------------------------------------------------------------------------------------


def score_answers(answers: pd.DataFrame, params: DpoParams, reward_scorer=None, progress: bool = True) -> pd.Series:
    """A score per answer (higher is better; missing when the scorer could not score it)."""
    if params.scorer == "metric":
        scorer = metrics.rouge_l if params.metric == "rouge_l" else metrics.token_f1
        return pd.Series(
            [scorer(p, [r]) for p, r in zip(answers["prediction"], answers["reference"], strict=True)],
            index=answers.index,
            dtype=float,
        )
    if params.scorer == "judge":
        table = answers.assign(model="candidate", id=[f"{i}-{n}" for i, n in enumerate(answers["id"])])
        grades = judge.grade(table, params.judge, progress=progress)
        return pd.Series(grades["score"].astype(float).to_numpy(), index=answers.index)
    from tunebook import reward

    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": p}]
        for q, p in zip(answers["question"], answers["prediction"], strict=True)
    ]
    return pd.Series(reward.score(reward_scorer, conversations), index=answers.index, dtype=float)


# --- strategy (a): sample and judge -----------------------------------------------------------------------------


@dataclass
class Pairs:
    pairs: list[dict]  # TRL's conversational preference format, plus id, strategy and both scores
    dropped: Counter = field(default_factory=Counter)  # why prompts or answers gave no pair
    candidates: pd.DataFrame | None = None  # every scored candidate (sample_judge) or revision (self_critique)


def sample_candidates(
    loaded: models.LoadedModel, prompts: pd.DataFrame, params: DpoParams, seed: int, progress: bool = True
) -> pd.DataFrame:
    """`candidates` answers a prompt, sampled at `temperature` (seeded)."""
    conversations = [[{"role": "user", "content": q}] for q in prompts["question"] for _ in range(params.candidates)]
    torch.manual_seed(seed)
    answers = models.generate(
        loaded, conversations, params.max_new_tokens, params.batch_size, progress, params.temperature
    )
    repeated = prompts.loc[prompts.index.repeat(params.candidates)].reset_index(drop=True)
    return repeated.assign(prediction=[a.text for a in answers], stopped=[a.stopped for a in answers])


def sample_and_judge(
    inputs: PairSources, params: DpoParams, seed: int, reward_scorer=None, progress: bool = True
) -> Pairs:
    """Strategy (a), whole: sample candidates, score them, pair the best with a worse one."""
    candidates = sample_candidates(inputs.policy, inputs.prompts, params, seed, progress)
    candidates["score"] = score_answers(candidates, params, reward_scorer, progress)
    return best_vs_worse(candidates, params, seed)


def best_vs_worse(candidates: pd.DataFrame, params: DpoParams, seed: int) -> Pairs:
    """Per prompt: chosen = the best-scored candidate; rejected = a random candidate scored more than
    min_gap lower with a different text. Prompts where that is impossible are dropped and counted."""
    rng = random.Random(seed)
    pairs, dropped = [], Counter()
    unscored = candidates["score"].isna()
    dropped["unscored candidates"] += int(unscored.sum())
    for item_id, group in candidates[~unscored].groupby("id", sort=False):
        best = group.loc[group["score"].idxmax()]
        worse = group[
            (group["score"] < best["score"] - params.min_gap)
            & (group["prediction"].str.strip() != best["prediction"].strip())
        ]
        if worse.empty:
            dropped["prompts with all candidates tied"] += 1
            continue
        rejected = worse.iloc[rng.randrange(len(worse))]
        pairs.append(
            _pair(
                item_id,
                best["question"],
                best["prediction"],
                rejected["prediction"],
                best["score"],
                rejected["score"],
                "sample_judge",
            )
        )
    return Pairs(pairs, dropped, candidates)


def _pair(
    item_id: str, question: str, chosen: str, rejected: str, chosen_score: float, rejected_score: float, strategy: str
) -> dict:
    return {
        "id": f"{strategy}-{item_id}",
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "strategy": strategy,
        "chosen_score": float(chosen_score),
        "rejected_score": float(rejected_score),
    }


# --- strategy (b): self-critique ------------------------------------------------------------------------------


def self_critique(inputs: PairSources, params: DpoParams, reward_scorer=None, progress: bool = True) -> Pairs:
    """Strategy (b), whole: failures on train prompts, critiqued and revised, kept where the revision wins."""
    failures = mine_failures(inputs.policy, inputs.prompts, params, inputs.chunk_texts, progress)
    if failures.empty:
        return Pairs([], Counter({"no failures to revise": 1}), failures)
    revised = critique_and_revise(inputs.policy, failures, params, progress)
    return improved_revisions(revised, params, reward_scorer, progress)


def mine_failures(
    loaded: models.LoadedModel,
    prompts: pd.DataFrame,
    params: DpoParams,
    chunk_texts: dict[str, str],
    progress: bool = True,
) -> pd.DataFrame:
    """The model's greedy answers to the train prompts that the judge grades as failures, with labels:
    the evaluate stage's failure analysis, run on train prompts (its own export is of test prompts)."""
    questions = [[{"role": "user", "content": q}] for q in prompts["question"]]
    answers = models.generate(loaded, questions, params.max_new_tokens, params.batch_size, progress)
    table = prompts.assign(
        model=loaded.name,
        prediction=[a.text for a in answers],
        stopped=[a.stopped for a in answers],
        source_text=prompts["chunk_id"].map(chunk_texts),
    )
    grades = judge.grade(table, params.judge, progress=progress)
    return judge.label_failures(table, grades, params.judge, progress=progress)


def critique_and_revise(
    loaded: models.LoadedModel, failures: pd.DataFrame, params: DpoParams, progress: bool = True
) -> pd.DataFrame:
    """Each failure with the critic's critique and revision. The critic is asked for a JSON object; a
    reply without one is taken as the revision itself (small models rarely manage the JSON)."""
    asks = [
        [
            {
                "role": "user",
                "content": params.critique_prompt.format(
                    label=row.label or "unlabelled",
                    question=row.question,
                    reference=row.reference,
                    answer=row.prediction,
                ),
            }
        ]
        for row in failures.itertuples()
    ]
    if params.critic == "self":
        revisions = models.generate(loaded, asks, params.max_new_tokens * 2, params.batch_size, progress)
        replies = [g.text for g in revisions]
    else:
        critic = params.judge
        answers = llm.chat_many(critic.chat_model(), llm.Limits.of(critic), asks, "critique", progress)
        replies = [a.reply.text if a.reply else "" for a in answers]
    parsed = [_revision(reply) for reply in replies]
    return failures.assign(critique=[c for c, _ in parsed], revision=[r for _, r in parsed])


def _revision(reply: str) -> tuple[str, str]:
    found = judge.first_object(reply)
    if found and isinstance(found.get("revision"), str):
        return str(found.get("critique", "")), found["revision"].strip()
    return "", reply.strip()


def improved_revisions(revised: pd.DataFrame, params: DpoParams, reward_scorer=None, progress: bool = True) -> Pairs:
    """Revision over original, for the revisions the scorer ranks higher than the original by more than
    min_gap; the rest are dropped and counted."""
    dropped = Counter()
    empty = revised["revision"].str.strip() == ""
    dropped["empty revisions"] += int(empty.sum())
    revised = revised[~empty]
    if revised.empty:
        return Pairs([], dropped, revised)
    both = pd.concat([revised.assign(prediction=revised["revision"]), revised], ignore_index=True)
    scores = score_answers(both, params, reward_scorer, progress).to_numpy()
    revised = revised.assign(revision_score=scores[: len(revised)], original_score=scores[len(revised) :])
    pairs, gap = [], params.min_gap
    for row in revised.itertuples():
        if pd.isna(row.revision_score) or pd.isna(row.original_score):
            dropped["unscored revisions"] += 1
        elif row.revision.strip() == row.prediction.strip() or row.revision_score <= row.original_score + gap:
            dropped["revisions not better than the original"] += 1
        else:
            pairs.append(
                _pair(
                    row.id,
                    row.question,
                    row.revision,
                    row.prediction,
                    row.revision_score,
                    row.original_score,
                    "self_critique",
                )
            )
    return Pairs(pairs, dropped, revised)


# --- both strategies, and the reward model -----------------------------------------------------------------


def build_pairs(inputs: PairSources, params: DpoParams, seed: int, progress: bool = True) -> dict[str, Pairs]:
    """Each strategy's pairs. With `scorer: reward_model` they are first scored by the metric: the reward
    model learns from those pairs, then re-scores the same candidates and revisions (see rescore)."""
    first = params.model_copy(update={"scorer": "metric"}) if params.scorer == "reward_model" else params
    build = {
        "sample_judge": lambda: sample_and_judge(inputs, first, seed, progress=progress),
        "self_critique": lambda: self_critique(inputs, first, progress=progress),
    }
    return {strategy: build[strategy]() for strategy in params.strategies}


def pair_counts(results: dict[str, Pairs]) -> pd.DataFrame:
    """Per strategy: the pairs kept, and how many were dropped for each reason."""
    rows = [{"strategy": name, "pairs": len(result.pairs), **result.dropped} for name, result in results.items()]
    return pd.DataFrame(rows).fillna(0)


def train_reward(
    results: dict[str, Pairs], inputs: PairSources, params: DpoParams, out_dir: Path, seed: int, progress: bool = True
):
    """The reward model (LoRA on the base) trained from the pairs; its held-out accuracy is in the result."""
    from tunebook import reward

    pairs = [p for result in results.values() for p in result.pairs]
    return reward.train_reward_model(
        pairs, inputs.base_model, inputs.adapter, params.reward, out_dir / "reward", seed, progress
    )


def rescore(
    results: dict[str, Pairs], params: DpoParams, reward_result, base_model: str, seed: int
) -> dict[str, Pairs]:
    """The same candidates and revisions, ranked by the reward model instead."""
    from tunebook import reward

    scorer = reward.load_scorer(base_model, reward_result.adapter_dir)
    rescored = {}
    for name, result in results.items():
        if result.candidates is None or result.candidates.empty:
            rescored[name] = result
        elif name == "sample_judge":
            candidates = result.candidates.assign(score=score_answers(result.candidates, params, scorer))
            rescored[name] = best_vs_worse(candidates, params, seed)
        else:
            revised = result.candidates.drop(columns=["revision_score", "original_score"], errors="ignore")
            rescored[name] = improved_revisions(revised, params, scorer)
    return rescored


# --- the pairs dataset -----------------------------------------------------------------------------------------


def pair_statistics(pairs: list[dict]) -> pd.DataFrame:
    """Per pair: strategy, the score gap, and the lengths (words) of chosen and rejected."""
    return pd.DataFrame(
        {
            "strategy": [p["strategy"] for p in pairs],
            "gap": [p["chosen_score"] - p["rejected_score"] for p in pairs],
            "chosen_words": [len(p["chosen"][0]["content"].split()) for p in pairs],
            "rejected_words": [len(p["rejected"][0]["content"].split()) for p in pairs],
        }
    )


def write_pairs(
    results: dict[str, Pairs],
    out_dir: Path,
    template_hash: str,
    params: DpoParams,
    seed: int,
    reward_accuracy: float | None = None,
) -> dict:
    """pairs.jsonl (train and val, split by a hash of the prompt) and card.json with every count."""
    pairs = [p for result in results.values() for p in result.pairs]
    if not pairs:
        raise DpoError(
            "no preference pairs remain after filtering (see the counts above): sample more "
            "candidates, raise the temperature, lower min_gap or use another scorer"
        )
    for pair in pairs:
        draw = hash_fraction(sha256_text(pair["prompt"][0]["content"] + str(seed)))
        pair["split"] = "val" if draw < params.val_fraction else "train"
    stats = pair_statistics(pairs)
    card = {
        "pairs": len(pairs),
        "by_strategy": {name: len(result.pairs) for name, result in results.items()},
        "splits": dict(Counter(p["split"] for p in pairs)),
        "dropped": {name: dict(result.dropped) for name, result in results.items()},
        "scorer": params.scorer if params.scorer != "metric" else f"metric:{params.metric}",
        "mean_gap": round(float(stats["gap"].mean()), 4),
        "chosen_longer": round(float((stats["chosen_words"] > stats["rejected_words"]).mean()), 4),
        "chat_template": template_hash,
        "decontaminated_against": f"test split (ids and {params.decontamination_ngram}-gram overlap)",
        "reward_model_held_out_accuracy": reward_accuracy,
        "pairs_hash": sha256_text(jsonl_text(pairs)),
    }
    write_atomic(out_dir / PAIRS_FILE, jsonl_text(pairs))
    write_atomic(out_dir / "card.json", json.dumps(card, indent=2) + "\n")
    return card


def read_pairs(out_dir: Path, split: str) -> list[dict]:
    return [p for p in read_complete_lines(out_dir / PAIRS_FILE) if p["split"] == split]


def template_hash(loaded: models.LoadedModel) -> str:
    return evaluate.template_id(loaded.tokenizer.chat_template)


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class DpoResult:
    adapter_dir: Path
    history: pd.DataFrame  # per logged step: loss, reward margin and accuracy (train, and val when held out)
    metrics: dict[str, float]
    reference: str  # the reference model: the SFT model's name, verified by its adapter's hash


def check_reference(name: str, run_id: str, stage: str = "DPO") -> dict:
    """The registry entry of the model a stage starts from (and keeps as its reference), refused when its adapter
    is not the one that was registered."""
    entry = registry.entry(name, run_id)
    if not entry.get("adapter"):
        raise DpoError(f"{stage} starts from a LoRA adapter in the registry, and {entry['name']} is not one")
    found = hash_tree(Path(entry["adapter"]))
    if found != entry.get("output_hash"):
        raise DpoError(
            f"the reference model does not match {entry['name']}: its adapter's hash is {found[:12]}, the registry "
            f"recorded {str(entry.get('output_hash'))[:12]} (retrain it, or re-run sft)"
        )
    return entry


def train_dpo(
    params: DpoParams, run_id: str, pairs_dir: Path, out_dir: Path, seed: int, progress: bool = True
) -> DpoResult:
    """TRL's DPOTrainer on the SFT adapter, its frozen copy as the reference."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoTokenizer, set_seed
    from trl import DPOTrainer

    from tunebook import sft

    entry = check_reference(params.model, run_id)
    card = json.loads((pairs_dir / "card.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(entry["adapter"], **models.pretrained_options(weights=False))
    template = evaluate.template_id(tokenizer.chat_template)
    if card["chat_template"] != template:
        raise DpoError(
            f"the pairs were made with chat template {card['chat_template']}, the SFT model has "
            f"{template}: rebuild the pairs with this model"
        )
    columns = ("prompt", "chosen", "rejected")
    train, val = ([{k: p[k] for k in columns} for p in read_pairs(pairs_dir, split)] for split in ("train", "val"))
    if not train:
        raise DpoError("no training pairs (all were held out for validation): lower dpo.val_fraction")
    set_seed(seed)
    base = models.load_base(entry["base_model"], tokenizer, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, entry["adapter"], is_trainable=True)
    trainer = DPOTrainer(
        model=model,
        args=_dpo_config(params, out_dir, seed, has_val=bool(val), progress=progress),
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=tokenizer,
    )
    verify_reference_adapter(trainer.model, Path(entry["adapter"]))
    trainer.train()
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    logged = {"loss": "loss", "reward margin": "rewards/margins", "reward accuracy": "rewards/accuracies"}
    history = sft.history(trainer.state.log_history, logged, {"train": "", "val": "eval_"})
    final = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, float)}
    if val:
        final.update({k: v for k, v in trainer.evaluate().items() if isinstance(v, float)})
    write_atomic(out_dir / "log_history.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
    return DpoResult(adapter_dir, history, final, f"{params.model} ({entry['output_hash'][:12]})")


def _dpo_config(params: DpoParams, out_dir: Path, seed: int, has_val: bool, progress: bool):
    """dpo.trainer (tunebook's defaults under the params' own keys), and what tunebook sets itself."""
    from trl import DPOConfig

    from tunebook.sft import trainer_fields

    # Evaluation batches as large as the training ones, unless the block sets them.
    trainer = {"per_device_eval_batch_size": params.trainer["per_device_train_batch_size"], **params.trainer}
    return DPOConfig(
        **trainer,
        **trainer_fields(params.precision, out_dir, seed, progress),
        eval_strategy="epoch" if has_val else "no",
    )


def resolved_configs(params: DpoParams, pairs_dir: Path, out_dir: Path, seed: int) -> pd.DataFrame:
    """What DPO (and the reward model, when it is trained) trained with beyond the libraries' own defaults:
    each field of the resolved DPOConfig, RewardConfig and LoraConfig that differs from its default."""
    from tunebook import reward

    configs = {
        "DPOConfig": _dpo_config(params, out_dir, seed, has_val=bool(read_pairs(pairs_dir, "val")), progress=True)
    }
    if params.reward.enabled:
        configs["RewardConfig (reward model)"] = reward.reward_config(params.reward, out_dir / "reward", seed)
        configs["LoraConfig (reward model)"] = reward.lora_config(params.reward)
    return recipe.differences(configs)


def verify_reference_adapter(model, adapter_dir: Path) -> None:
    """The trainer's frozen reference adapter (TRL's DPO and GRPO trainers copy a trained adapter as "ref") must
    hold exactly the starting adapter's weights."""
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    parameters = dict(model.named_parameters())
    for name, value in saved.items():
        # The file names a LoRA weight without its adapter; the trainer's copy is the adapter named "ref".
        copy = parameters.get(name.replace(".weight", ".ref.weight"))
        if copy is None:
            raise DpoError(
                f"TRL's reference holds no frozen copy of the starting adapter's {name} (peft >= 0.20 needed)"
            )
        if not torch.equal(copy.detach().cpu().to(value.dtype), value):
            raise DpoError(f"the reference model does not match the starting adapter at {name}")


def register_model(run_id: str, result: DpoResult, params: DpoParams, card: dict) -> str:
    return registry.register_continued(
        run_id, "dpo", params.model, result.adapter_dir, card["pairs_hash"], result.reference, params, result.metrics
    )


def reevaluation_params(params: DpoParams) -> EvaluateParams:
    """How the report compares DPO with SFT and base: closed-book, greedy, through the evaluate module."""
    return EvaluateParams(
        models=["base", params.model, "dpo"],
        baseline=params.model,
        conditions=["closed_book"],
        max_new_tokens=params.max_new_tokens,
        batch_size=params.batch_size,
        judge=params.judge,
    )
