"""Seaborn helpers with one colour per model name across every report."""

from __future__ import annotations

import base64
import io
import zlib

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

_PALETTE = sns.color_palette("colorblind", 10)
_FIXED = {
    "base": _PALETTE[7],
    "sft": _PALETTE[0],
    "dpo": _PALETTE[2],
    "rl": _PALETTE[3],
    "base+rag": _PALETTE[8],
    "sft+rag": _PALETTE[9],
    "dpo+rag": _PALETTE[4],
    "train": _PALETTE[0],
    "eval": _PALETTE[1],
    "val": _PALETTE[1],
    "sample_judge": _PALETTE[0],
    "self_critique": _PALETTE[3],
}


def color(name: str):
    """The same name always gets the same colour, in every report and every run."""
    return _FIXED.get(name, _PALETTE[zlib.crc32(name.encode()) % len(_PALETTE)])


def _figure(title: str, width: float = 7, height: float = 3.5):
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(width, height), dpi=80)
    ax.set_title(title)
    return fig, ax


def _panels(title: str, n: int):
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), dpi=80)
    fig.suptitle(title)
    return fig, axes


def histogram(values: pd.Series, title: str, xlabel: str):
    fig, ax = _figure(title)
    sns.histplot(values, bins=30, ax=ax, color=_PALETTE[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return fig


def counts(series: pd.Series, title: str, xlabel: str):
    fig, ax = _figure(title)
    sns.barplot(x=series.values, y=series.index.astype(str), ax=ax, color=_PALETTE[0], orient="h")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    return fig


def loss_curves(history: pd.DataFrame, title: str = "SFT loss"):
    fig, ax = _figure(title)
    splits = list(history["split"].unique())
    sns.lineplot(
        data=history,
        x="step",
        y="loss",
        hue="split",
        marker="o",
        palette={s: color(s) for s in splits},
        ax=ax,
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    return fig


def token_mask(tokens: list[str], trained: list[bool], title: str = "Tokens the loss trains", per_line: int = 16):
    """One example's tokens in reading order, the trained ones highlighted: what assistant-only loss sees."""
    rows = [list(range(start, min(start + per_line, len(tokens)))) for start in range(0, len(tokens), per_line)]
    fig, ax = _figure(title, width=11, height=0.35 * len(rows) + 0.8)
    ax.set_xlim(0, per_line)
    ax.set_ylim(len(rows), 0)
    ax.axis("off")
    for row, indices in enumerate(rows):
        for column, index in enumerate(indices):
            # Make whitespace and control tokens visible: "▁" is SentencePiece's space.
            label = tokens[index].replace("\n", "\\n").replace("▁", "·")
            ax.text(
                column + 0.5,
                row + 0.5,
                label[:10],
                ha="center",
                va="center",
                fontsize=7,
                family="monospace",
                bbox={
                    "boxstyle": "round,pad=0.2",
                    "facecolor": _PALETTE[2] if trained[index] else "#eeeeee",
                    "edgecolor": "none",
                },
            )
    ax.text(
        0,
        len(rows) + 0.2,
        "green: trained (assistant answer and its end of turn); grey: context only",
        fontsize=8,
        va="top",
    )
    return fig


def deltas(
    comparison: pd.DataFrame,
    title: str = "Difference from the baseline, with 95% CIs",
    xlabel: str = "delta (points; judge grade on its 1-10 scale)",
):
    """One row per (system, metric): the delta as a dot, its paired-bootstrap CI as a bar; 0 is no change."""
    table = comparison.reset_index(drop=True)
    fig, ax = _figure(title, height=0.35 * len(table) + 1.2)
    labels = table["system"] + "  " + table["metric"]
    for y, row in table.iterrows():
        ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=color(row["system"]), linewidth=3)
        ax.plot(row["delta"], y, "o", color="black", markersize=4)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return fig


def judge_outcomes(summary: pd.DataFrame, title: str = "Pairwise judge: wins, ties and losses vs the baseline"):
    counts = summary.set_index("system")[["wins", "ties", "losses", "unparsable"]]
    fig, ax = _figure(title, height=0.5 * len(counts) + 1.5)
    counts.plot.barh(stacked=True, ax=ax, color=[_PALETTE[2], _PALETTE[7], _PALETTE[3], _PALETTE[5]])
    ax.set_xlabel("items")
    ax.set_ylabel("")
    ax.invert_yaxis()
    return fig


def score_vs_length(examples: pd.DataFrame, score: str = "f1", title: str = "F1 vs answer length"):
    fig, ax = _figure(title)
    systems = list(examples["system"].unique())
    sns.scatterplot(
        data=examples,
        x="answer_words",
        y=score,
        hue="system",
        alpha=0.6,
        s=18,
        ax=ax,
        palette={s: color(s) for s in systems},
        style="condition",
    )
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel(f"{score} (0-1)")
    return fig


def dpo_curves(history: pd.DataFrame, title: str = "DPO: reward margin and accuracy"):
    """The implicit reward's margin (chosen minus rejected) and how often chosen wins, per logged step."""
    fig, axes = _panels(title, 2)
    splits = list(history["split"].unique())
    for ax, column, unit in ((axes[0], "reward margin", "nats x beta"), (axes[1], "reward accuracy", "share")):
        sns.lineplot(
            data=history, x="step", y=column, hue="split", marker="o", ax=ax, palette={s: color(s) for s in splits}
        )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{column} ({unit})")
    fig.tight_layout()
    return fig


def rl_rewards(history: pd.DataFrame, names: list[str], title: str = "RL: each reward per step"):
    """Each reward function's mean over the step's completions, with its standard deviation as a band."""
    fig, ax = _figure(title)
    for name, hue in zip(names, _PALETTE, strict=False):  # rewards are a run's own names: one colour each
        mean, std = history.get(f"rewards/{name}/mean"), history.get(f"rewards/{name}/std")
        if mean is None:
            continue
        ax.plot(history["step"], mean, marker="o", markersize=3, label=name, color=hue)
        if std is not None:
            ax.fill_between(history["step"], mean - std, mean + std, color=hue, alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (mean ± sd)")
    ax.legend(loc="best", fontsize="small")
    return fig


def rl_training(
    history: pd.DataFrame, title: str = "RL: KL to the reference, completion length, groups that learn nothing"
):
    """KL to the reference, the mean completion length, and three shares: the prompt groups whose completions all
    got the same reward, the completions cut at max_completion_length, and the tokens whose policy ratio was
    clipped (GRPOConfig.epsilon)."""
    fig, axes = _panels(title, 3)
    panels = (
        (axes[0], {"kl": "KL to the reference"}, "nats per token"),
        (axes[1], {"completions/mean_length": "mean length"}, "tokens"),
        (
            axes[2],
            {
                "frac_reward_zero_std": "zero reward variance",
                "completions/clipped_ratio": "cut at max length",
                "clip_ratio/region_mean": "policy ratio clipped",
            },
            "share",
        ),
    )
    for ax, columns, unit in panels:
        for column, label in columns.items():
            if column in history:
                ax.plot(history["step"], history[column], marker="o", markersize=3, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def pair_statistics(stats: pd.DataFrame, title: str = "Preference pairs"):
    """Score gaps by strategy, and chosen vs rejected length: a cloud above the diagonal is a length bias."""
    fig, axes = _panels(title, 2)
    strategies = list(stats["strategy"].unique())
    palette = {s: color(s) for s in strategies}
    sns.histplot(data=stats, x="gap", hue="strategy", bins=20, ax=axes[0], palette=palette, multiple="stack")
    axes[0].set_xlabel("score gap, chosen minus rejected (the scorer's units)")
    axes[0].set_ylabel("pairs")
    sns.scatterplot(
        data=stats, x="rejected_words", y="chosen_words", hue="strategy", ax=axes[1], palette=palette, alpha=0.7, s=20
    )
    top = max(stats["chosen_words"].max(), stats["rejected_words"].max(), 1)
    axes[1].plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
    axes[1].set_xlabel("rejected length (words)")
    axes[1].set_ylabel("chosen length (words)")
    fig.tight_layout()
    return fig


def parity(table: pd.DataFrame, min_agreement: float, title: str = "Answers identical to the evaluated model"):
    """One bar per exported output: the share of prompts it answers exactly as the evaluated model, with
    the gate the gated outputs must reach."""
    fig, ax = _figure(title, height=0.45 * len(table) + 1.2)
    shares = table["agreement"] * 100
    ax.barh(table["output"], shares, color=[color(o) for o in table["output"]])
    ax.axvline(min_agreement * 100, color="black", linestyle="--", linewidth=1, label=f"gate ({min_agreement:.0%})")
    for y, (share, row) in enumerate(zip(shares, table.itertuples(), strict=True)):
        ax.text(share + 1, y, f"{row.identical}/{row.prompts} ({row.gate})", va="center", fontsize=8)
    ax.set_xlim(0, 130)
    ax.invert_yaxis()
    ax.set_xlabel("identical greedy answers (% of prompts)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def runs_headline(scores: pd.DataFrame, title: str = "Headline metrics across runs"):
    """One panel per metric: each model's score in each run (long frame: run, model, metric, score)."""
    metrics = list(pd.unique(scores["metric"]))
    # Long run ids would squeeze the panels: the table beside the plot has them in full.
    scores = scores.assign(run=scores["run"].map(lambda run: run if len(run) <= 16 else run[:15] + "…"))
    fig, axes = _panels(title, len(metrics))
    for ax, metric in zip([axes] if len(metrics) == 1 else axes, metrics, strict=True):
        subset = scores[scores["metric"] == metric]
        models = list(pd.unique(subset["model"]))
        sns.pointplot(
            data=subset,
            x="run",
            y="score",
            hue="model",
            palette={m: color(m) for m in models},
            ax=ax,
            linestyles="",
            dodge=0.3 if len(models) > 1 else False,
            legend=ax is axes[-1] if len(metrics) > 1 else True,
        )
        ax.set_title(metric)
        ax.set_xlabel("run (oldest first)")
        ax.set_ylabel("score (0-100)")
        ax.tick_params(axis="x", rotation=30)
    sns.move_legend(axes[-1] if len(metrics) > 1 else axes, "upper left", bbox_to_anchor=(1, 1), title="model")
    fig.tight_layout()
    return fig


def gain_vs_loss(points: pd.DataFrame, title: str = "Domain gain against general loss, one point per run"):
    """Each run's final model (reports.tradeoff's rows): its F1 gain over base against its general perplexity's
    rise over base's. Up is better on the domain; right is more forgotten."""
    fig, ax = _figure(title)
    x, y = "general loss (perplexity %)", "domain gain (F1 points)"
    for point in points.to_dict("records"):
        ax.scatter(point[x], point[y], color=color(point["model"]), s=40)
        label = f"{point['run']} ({point['model']})"
        ax.annotate(label, (point[x], point[y]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return fig


def sweep_scores(points: pd.DataFrame, keys: list[str], metrics: list[str], title: str):
    """A panel per (score, swept key): each variant's mean with its 95% CI against the key's value; variants that
    agree on the other keys are joined by a line, so a trend in one key reads apart from the others."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(
        len(metrics), len(keys), figsize=(4.5 * len(keys), 3 * len(metrics)), dpi=80, squeeze=False
    )
    fig.suptitle(title)
    for row, metric in enumerate(metrics):
        subset = points[points["metric"] == metric]
        for column, key in enumerate(keys):
            ax = axes[row][column]
            values = sorted(subset[key].dropna().unique(), key=lambda v: (isinstance(v, str), v))
            others = [other for other in keys if other != key]
            groups = subset.groupby(others, dropna=False, sort=False) if others else [((), subset)]
            for group, found in groups:
                found = found.dropna(subset=[key]).sort_values(key, key=lambda c: c.map(values.index))
                x = [values.index(value) for value in found[key]]
                error = [found["mean"] - found["low"], found["high"] - found["mean"]]
                label = ", ".join(f"{o}={g}" for o, g in zip(others, group if others else (), strict=True)) or None
                ax.errorbar(x, found["mean"], yerr=error, marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(values)), [str(value) for value in values])
            ax.set_xlabel(key)
            ax.set_ylabel(f"{metric} (points)")
            if others and row == 0:  # what each line holds fixed
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def data_uri(fig) -> str:
    """The figure as an inline PNG, for pages that must work from the file system alone."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
