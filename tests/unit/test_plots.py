"""Every report plot is readable (a title, labelled axes with units), small, and gives a model the same colour
wherever it appears."""

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tunebook import plots

SYSTEMS = ["base", "sft", "dpo"]
rng = np.random.default_rng(0)

COMPARISON = pd.DataFrame(
    [
        {"system": s, "metric": m, "delta": d, "ci_low": d - 2, "ci_high": d + 2}
        for s, d in (("sft", 5.0), ("dpo", 7.0))
        for m in ("f1", "rouge_l")
    ]
)
EXAMPLES = pd.DataFrame(
    {
        "system": np.repeat(SYSTEMS, 10),
        "condition": ["closed_book", "rag"] * 15,
        "answer_words": rng.integers(1, 40, 30),
        "f1": rng.random(30),
    }
)
HISTORY = pd.DataFrame(
    {"step": [10, 20, 30, 20], "split": ["train", "train", "train", "eval"], "loss": [3.0, 2.5, 2.0, 2.7]}
)
DPO_HISTORY = HISTORY.assign(**{"reward margin": [0.1, 0.3, 0.5, 0.2], "reward accuracy": [0.5, 0.6, 0.8, 0.6]})
PAIRS = pd.DataFrame(
    {
        "strategy": ["sample_judge"] * 6 + ["self_critique"] * 4,
        "gap": rng.random(10),
        "chosen_words": rng.integers(1, 40, 10),
        "rejected_words": rng.integers(1, 40, 10),
    }
)
PARITY = pd.DataFrame(
    {
        "output": ["merged · transformers", "f16 · llama-cpp-python"],
        "agreement": [1.0, 0.9],
        "identical": [32, 29],
        "prompts": [32, 32],
        "gate": ["gated", "reported"],
    }
)
RUNS = pd.DataFrame(
    [
        {"run": run, "model": model, "metric": metric, "score": score}
        for run in ("demo", "r8")
        for model, score in (("base", 10.0), ("sft", 30.0), ("dpo", 32.0))
        for metric in ("f1", "rouge_l")
    ]
)
JUDGE = pd.DataFrame(
    {"system": ["sft", "dpo"], "wins": [20, 22], "ties": [5, 4], "losses": [3, 2], "unparsable": [0, 1]}
)

FIGURES = {
    "histogram": lambda: plots.histogram(
        pd.Series(rng.integers(100, 900, 50)), "50 chunks", "chunk length (characters)"
    ),
    "counts": lambda: plots.counts(pd.Series({"train": 80, "val": 10, "test": 10}), "Rows per split", "rows"),
    "loss_curves": lambda: plots.loss_curves(HISTORY),
    "deltas": lambda: plots.deltas(COMPARISON),
    "judge_outcomes": lambda: plots.judge_outcomes(JUDGE),
    "score_vs_length": lambda: plots.score_vs_length(EXAMPLES),
    "dpo_curves": lambda: plots.dpo_curves(DPO_HISTORY),
    "pair_statistics": lambda: plots.pair_statistics(PAIRS),
    "parity": lambda: plots.parity(PARITY, 0.95),
    "runs_headline": lambda: plots.runs_headline(RUNS),
}


def categorical(labels) -> bool:
    """Tick labels that name things (splits, systems) rather than measure them need no axis title."""
    texts = [label.get_text().replace("−", "-") for label in labels if label.get_text()]
    return bool(texts) and not all(text.replace(".", "", 1).lstrip("-").isdigit() for text in texts)


@pytest.mark.parametrize("name", FIGURES)
def test_every_plot_has_a_title_labelled_axes_and_stays_small(name):
    fig = FIGURES[name]()
    suptitle = fig._suptitle.get_text() if fig._suptitle else ""
    for ax in fig.axes:
        assert ax.get_title() or suptitle, "no title"
        assert ax.get_xlabel() or categorical(ax.get_xticklabels()), "unlabelled x axis"
        assert ax.get_ylabel() or categorical(ax.get_yticklabels()), "unlabelled y axis"
    # an inline PNG the size of a thumbnail, not a multi-megabyte picture
    assert len(plots.data_uri(fig)) < 150_000


def colours_of(fig) -> set[str]:
    found = set()
    for ax in fig.axes:
        for line in ax.get_lines():
            found.add(mcolors.to_hex(line.get_color()))
        for collection in ax.collections:
            found.update(mcolors.to_hex(c) for c in collection.get_facecolors())
        for patch in ax.patches:
            found.add(mcolors.to_hex(patch.get_facecolor()))
    plt.close(fig)
    return found


def test_a_model_has_one_colour_in_every_report():
    sft, dpo, base = (mcolors.to_hex(plots.color(name)) for name in ("sft", "dpo", "base"))
    assert len({sft, dpo, base}) == 3
    assert {sft, dpo} <= colours_of(plots.deltas(COMPARISON))
    assert {sft, dpo, base} <= colours_of(plots.score_vs_length(EXAMPLES))
    assert {sft, dpo, base} <= colours_of(plots.runs_headline(RUNS))
    # names the palette does not fix (registry entries, endpoints) get theirs from a hash of the name, not from
    # the order they are drawn in
    assert mcolors.to_hex(plots.color("demo:export")) in colours_of(
        plots.score_vs_length(EXAMPLES.assign(system=EXAMPLES["system"].replace("dpo", "demo:export")))
    )
