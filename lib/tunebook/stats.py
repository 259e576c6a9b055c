"""Is model B really better than model A? Paired bootstrap CIs on per-example scores, and a sign test.

Every delta is `mean(model) - mean(baseline)`: positive means the model beats the baseline.
Both models are scored on the same test items, so the items are resampled together (a paired
bootstrap): the item-to-item variation that both models share cancels out of the difference,
which gives much narrower and more honest intervals than two independent bootstraps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Delta:
    """`delta = mean_b - mean_a` (a is the baseline) with its percentile bootstrap CI over n paired items."""

    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    n: int
    resamples: int
    confidence: float
    significant: bool
    p_value: float


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return b.mean(axis=axis) - a.mean(axis=axis)


def paired_bootstrap(
    a: np.ndarray | pd.Series,
    b: np.ndarray | pd.Series,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Delta:
    """Bootstrap `mean(b) - mean(a)` over items scored by both a (baseline) and b, paired by position.

    Pairs where either score is NaN are dropped; `n` counts the pairs used. The CI is the percentile
    interval of `resamples` resampled deltas, drawn from `np.random.default_rng(seed)`, so a seed always
    gives the same interval. `significant` means the CI excludes 0. `p_value` is two-sided: twice the
    share of resampled deltas on the far side of 0 (ties with 0 count on both sides), with the usual +1
    correction so that R resamples never claim p < 2/(R+1), clipped to 1. It is the p-value that
    inverts the percentile interval, so it agrees with `significant` up to resampling noise.
    """
    a_values = np.asarray(a, dtype=float)
    b_values = np.asarray(b, dtype=float)
    if a_values.ndim != 1 or b_values.ndim != 1:
        raise ValueError(f"paired scores must be 1-D, got shapes {a_values.shape} and {b_values.shape}")
    if len(a_values) != len(b_values):
        raise ValueError(f"paired scores need the same items: a has {len(a_values)}, b has {len(b_values)}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    both = ~(np.isnan(a_values) | np.isnan(b_values))
    a_values, b_values = a_values[both], b_values[both]
    if len(a_values) < 2:
        raise ValueError(f"paired bootstrap needs at least 2 pairs without NaN, got {len(a_values)}")

    result = stats.bootstrap(
        (a_values, b_values),
        _mean_difference,
        n_resamples=resamples,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    deltas = result.bootstrap_distribution
    far_side = min(np.count_nonzero(deltas <= 0), np.count_nonzero(deltas >= 0))
    ci_low, ci_high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Delta(
        mean_a=float(a_values.mean()),
        mean_b=float(b_values.mean()),
        delta=float(_mean_difference(a_values, b_values)),
        ci_low=ci_low,
        ci_high=ci_high,
        n=len(a_values),
        resamples=resamples,
        confidence=confidence,
        significant=bool(ci_low > 0 or ci_high < 0),
        p_value=min(1.0, 2 * (far_side + 1) / (resamples + 1)),
    )


def compare(
    scores: pd.DataFrame,
    baseline: str,
    metrics: Sequence[str],
    by: Sequence[str] = (),
    resamples: int = 1000,
    seed: int = 0,
    scale: float = 1.0,
) -> pd.DataFrame:
    """One row per (model other than baseline, metric, group of `by`): the paired bootstrap delta.

    `scores` is long: one row per model and item, with columns `model`, `id`, the metrics and `by`.
    Items pair on `id` within each group, and models not scored in a group get no row for it.
    `scale` multiplies means, deltas and CIs (100 reports a [0, 1] metric in points).
    Rows follow the models' order of first appearance. Every comparison uses the same seed, and the
    statistics depend only on the scores, not on the order of the rows.
    """
    required = ["model", "id", *metrics, *by]
    missing = [column for column in required if column not in scores.columns]
    if missing:
        raise ValueError(f"scores lack column(s) {missing}; they have {list(scores.columns)}")
    if baseline not in set(scores["model"]):
        raise ValueError(f"baseline {baseline!r} not among the models {sorted(set(scores['model']))}")
    repeated = scores.duplicated(["model", "id", *by])
    if repeated.any():
        first = scores.loc[repeated, ["model", "id", *by]].iloc[0].to_dict()
        raise ValueError(f"scores hold more than one row for {first}, so items cannot be paired")

    others = [model for model in pd.unique(scores["model"]) if model != baseline]
    groups = scores.groupby(list(by), sort=True) if by else [((), scores)]
    rows = []
    for key, group in groups:
        group_values = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        reference = group[group["model"] == baseline]
        for model in others:
            candidate = group[group["model"] == model]
            if candidate.empty:
                continue
            # Sorting by id makes the resampled items independent of the input's row order.
            paired = reference.merge(candidate, on="id", suffixes=("_baseline", "_model")).sort_values("id")
            for metric in metrics:
                try:
                    delta = paired_bootstrap(paired[f"{metric}_baseline"], paired[f"{metric}_model"], resamples, seed)
                except ValueError as error:
                    where = f"{model!r} vs {baseline!r} on {metric!r}" + (f" in {group_values}" if by else "")
                    raise ValueError(f"{where}: {error}") from error
                rows.append(
                    {
                        "model": model,
                        "baseline": baseline,
                        "metric": metric,
                        **group_values,
                        "mean_baseline": delta.mean_a * scale,
                        "mean_model": delta.mean_b * scale,
                        "delta": delta.delta * scale,
                        "ci_low": delta.ci_low * scale,
                        "ci_high": delta.ci_high * scale,
                        "significant": delta.significant,
                        "p_value": delta.p_value,
                        "n": delta.n,
                    }
                )
    columns = ["model", "baseline", "metric", *by, "mean_baseline", "mean_model", "delta", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=[*columns, "significant", "p_value", "n"])


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of wins against losses (ties left out); NaN with no decisions."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be counts, got {wins} and {losses}")
    if wins + losses == 0:
        return float("nan")
    return float(stats.binomtest(wins, wins + losses, p=0.5).pvalue)


def format_ci(delta_row: Delta | Mapping | pd.Series, digits: int = 1) -> str:
    """A delta and its CI for a table, e.g. "+3.2 [+1.1, +5.4]"."""
    values = asdict(delta_row) if isinstance(delta_row, Delta) else delta_row
    return f"{values['delta']:+.{digits}f} [{values['ci_low']:+.{digits}f}, {values['ci_high']:+.{digits}f}]"


def mean_ci(values: np.ndarray | pd.Series, resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple:
    """The mean of per-item scores with its percentile bootstrap CI over items: (mean, low, high); NaNs dropped,
    and with fewer than 2 scores the interval is the mean itself."""
    scores = np.asarray(values, dtype=float)
    scores = scores[~np.isnan(scores)]
    if len(scores) < 2:
        mean = float(scores.mean()) if len(scores) else float("nan")
        return mean, mean, mean
    result = stats.bootstrap(
        (scores,),
        np.mean,
        n_resamples=resamples,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(scores.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def best_probability(scores: pd.DataFrame, resamples: int = 1000, seed: int = 0, maximize: bool = True) -> pd.Series:
    """How sure we are of the best: `scores` has one column per candidate and one row per item they all answered;
    the test items are resampled together, and each candidate's share of resamples in which its mean is the best
    (ties split) is returned. A candidate best on the full set in 55% of resamples is hardly known to be best."""
    values = scores.to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    # How often each item is drawn in each resample: resamples x items, whatever the number of candidates.
    counts = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=resamples)
    means = counts @ values / len(values)  # resamples x candidates
    best = means.max(axis=1, keepdims=True) if maximize else means.min(axis=1, keepdims=True)
    winners = means == best
    return pd.Series((winners / winners.sum(axis=1, keepdims=True)).mean(axis=0), index=scores.columns)
