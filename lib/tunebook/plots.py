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
