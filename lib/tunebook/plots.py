"""Seaborn helpers with one colour per model name across every report."""

from __future__ import annotations

import zlib

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

_PALETTE = sns.color_palette("colorblind", 10)
_FIXED = {
    "base": _PALETTE[7],
    "sft": _PALETTE[0],
    "dpo": _PALETTE[2],
    "train": _PALETTE[0],
    "eval": _PALETTE[1],
}


def color(name: str):
    """The same name always gets the same colour, in every report and every run."""
    return _FIXED.get(name, _PALETTE[zlib.crc32(name.encode()) % len(_PALETTE)])


def _figure(title: str, width: float = 7, height: float = 3.5):
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(width, height), dpi=80)
    ax.set_title(title)
    return fig, ax


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


def metric_bars(summary: pd.DataFrame, metrics: list[str], title: str = "Test-split metrics"):
    long = summary.melt(id_vars="model", value_vars=metrics, var_name="metric", value_name="score")
    fig, ax = _figure(title)
    sns.barplot(data=long, x="metric", y="score", hue="model", palette={m: color(m) for m in summary["model"]}, ax=ax)
    ax.set_ylabel("score (0-100)")
    ax.set_xlabel("")
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
                column + 0.5, row + 0.5, label[:10], ha="center", va="center", fontsize=7, family="monospace",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": _PALETTE[2] if trained[index] else "#eeeeee",
                      "edgecolor": "none"},
            )  # fmt: skip
    ax.text(0, len(rows) + 0.2, "green: trained (assistant answer and its end of turn); grey: context only",
            fontsize=8, va="top")  # fmt: skip
    return fig
