"""Paired bootstrap, model comparison tables and the sign test, on synthetic scores with known answers."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from tunebook import stats


def test_a_small_example_checks_by_hand():
    # Per-item differences are [1, 1, 1, 0]: a resampled delta is k/4 with k ~ Binomial(4, 3/4), so
    # P(delta <= 0.25) = 13/256 (about 5%) and P(delta < 1) = 175/256: the 95% CI is [0.25, 1.0].
    delta = stats.paired_bootstrap(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]))
    assert (delta.mean_a, delta.mean_b, delta.delta, delta.n) == (0.25, 1.0, 0.75, 4)
    assert (delta.ci_low, delta.ci_high) == pytest.approx((0.25, 1.0))
    assert delta.significant and delta.resamples == 1000 and delta.confidence == 0.95
    # P(delta <= 0) = 1/256, so about 4 of 1000 resamples sit on the far side of 0.
    assert 0.002 < delta.p_value < 0.03


def test_a_constant_shift_has_a_zero_width_interval_and_the_smallest_p_value():
    baseline = np.linspace(0, 1, 50)
    delta = stats.paired_bootstrap(baseline, baseline + 0.1, resamples=999)
    assert delta.delta == pytest.approx(0.1)
    assert (delta.ci_low, delta.ci_high) == pytest.approx((0.1, 0.1))
    assert delta.p_value == pytest.approx(2 / 1000)  # the +1 correction: never 0


def test_identical_models_are_not_significant():
    scores = np.random.default_rng(1).random(100)
    delta = stats.paired_bootstrap(scores, scores)
    assert delta.delta == 0 and (delta.ci_low, delta.ci_high) == (0, 0)
    assert not delta.significant and delta.p_value == 1.0


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_close_one():
    rng = np.random.default_rng(7)
    a, b = rng.random(200), rng.random(200)
    first, again, other = (stats.paired_bootstrap(a, b, seed=seed) for seed in (0, 0, 1))
    assert first == again
    assert (other.mean_a, other.mean_b, other.delta) == (first.mean_a, first.mean_b, first.delta)
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)
    assert other.ci_low == pytest.approx(first.ci_low, abs=0.02)
    assert other.ci_high == pytest.approx(first.ci_high, abs=0.02)


def test_a_clear_shift_is_significant_and_the_interval_holds_the_observed_delta():
    rng = np.random.default_rng(3)
    a = rng.random(200)
    b = np.clip(a + 0.1 + rng.normal(0, 0.1, 200), 0, 1)
    delta = stats.paired_bootstrap(a, b)
    assert 0 < delta.ci_low < delta.delta < delta.ci_high
    assert delta.significant and delta.p_value < 0.01
    reversed_delta = stats.paired_bootstrap(b, a)  # the sign says which model is better
    assert reversed_delta.delta == pytest.approx(-delta.delta) and reversed_delta.ci_high < 0


def test_intervals_cover_a_true_zero_difference_about_as_often_as_promised():
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(100):
        a = rng.random(100)
        b = np.clip(a + rng.normal(0, 0.2, 100), -1, 2)  # unclipped in [0, 1], so the true delta is 0
        delta = stats.paired_bootstrap(a, b, resamples=1000)
        covered += delta.ci_low <= 0 <= delta.ci_high
        assert delta.ci_low <= delta.delta <= delta.ci_high
    assert covered >= 88  # 95% intervals; the percentile bootstrap runs a little narrow at n=100


def test_nan_pairs_are_dropped_and_counted():
    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    a_missing, b_missing = a.copy(), b.copy()
    a_missing[3], b_missing[10] = np.nan, np.nan
    delta = stats.paired_bootstrap(pd.Series(a_missing, index=range(100, 150)), b_missing)
    keep = np.ones(50, dtype=bool)
    keep[[3, 10]] = False
    assert delta.n == 48
    assert delta == stats.paired_bootstrap(a[keep], b[keep])


def test_unpaired_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="same items: a has 3, b has 2"):
        stats.paired_bootstrap(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        stats.paired_bootstrap(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="at least 2 pairs without NaN, got 1"):
        stats.paired_bootstrap(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_bootstrap(np.zeros(3), np.zeros(3), confidence=95)


def long_scores(rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    """Three models on the same n items in two conditions; `tuned` is `base` plus 0.05 on every item."""
    frames = []
    for condition in ("closed_book", "rag"):
        base_f1, base_em = rng.random(n), rng.integers(0, 2, n).astype(float)
        scores = {
            "base": (base_f1, base_em),
            "tuned": (base_f1 + 0.05, base_em),
            "noisy": (rng.random(n), rng.integers(0, 2, n).astype(float)),
        }
        for model, (f1, em) in scores.items():
            frames.append(
                pd.DataFrame(
                    {"model": model, "id": [f"q{i:03d}" for i in range(n)], "condition": condition, "f1": f1, "em": em}
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_compare_gives_a_row_per_model_metric_and_group():
    scores = long_scores(np.random.default_rng(0))
    table = stats.compare(scores, "base", ["f1", "em"], by=["condition"])
    assert list(table.columns) == [
        "model",
        "baseline",
        "metric",
        "condition",
        "mean_baseline",
        "mean_model",
        "delta",
        "ci_low",
        "ci_high",
        "significant",
        "p_value",
        "n",
    ]
    assert len(table) == 2 * 2 * 2 and set(table["model"]) == {"tuned", "noisy"}
    assert (table["baseline"] == "base").all() and (table["n"] == 60).all()
    row = table.query("model == 'noisy' and metric == 'em' and condition == 'rag'").iloc[0]
    rag = scores[scores["condition"] == "rag"]
    expected = stats.paired_bootstrap(
        rag.loc[rag["model"] == "base", "em"].to_numpy(), rag.loc[rag["model"] == "noisy", "em"].to_numpy()
    )
    assert (row["delta"], row["ci_low"], row["ci_high"], row["p_value"]) == pytest.approx(
        (expected.delta, expected.ci_low, expected.ci_high, expected.p_value)
    )


def test_compare_pairs_items_by_id_whatever_the_row_order():
    scores = long_scores(np.random.default_rng(0))
    table = stats.compare(scores, "base", ["f1", "em"], by=["condition"])
    shuffled = scores.sample(frac=1, random_state=4).reset_index(drop=True)
    again = stats.compare(shuffled, "base", ["f1", "em"], by=["condition"])
    keys = ["model", "metric", "condition"]
    pd.testing.assert_frame_equal(
        again.sort_values(keys, ignore_index=True), table.sort_values(keys, ignore_index=True)
    )
    # Shuffling one model's rows in place (the models' order stays) changes nothing either.
    tuned = scores["model"] == "tuned"
    one_shuffled = scores.copy()
    one_shuffled.loc[tuned] = scores[tuned].sample(frac=1, random_state=5).to_numpy()
    assert not one_shuffled.equals(scores)
    pd.testing.assert_frame_equal(stats.compare(one_shuffled, "base", ["f1", "em"], by=["condition"]), table)
    # Only pairing by id explains a zero-width interval: tuned is base + 0.05 on every item.
    tuned_f1 = table.query("model == 'tuned' and metric == 'f1'")
    assert np.allclose(tuned_f1[["delta", "ci_low", "ci_high"]], 0.05)
    assert tuned_f1["significant"].all()


def test_compare_joins_on_shared_ids_and_scales():
    scores = long_scores(np.random.default_rng(0), n=20).query("condition == 'rag'")
    scores = scores[~((scores["model"] == "tuned") & scores["id"].isin(["q000", "q001"]))]
    table = stats.compare(scores, "base", ["f1"], scale=100)
    assert list(table.columns[:3]) == ["model", "baseline", "metric"] and "condition" not in table
    tuned = table[table["model"] == "tuned"].iloc[0]
    assert tuned["n"] == 18
    shared = scores[scores["model"] == "base"]
    assert tuned["mean_baseline"] == pytest.approx(100 * shared.loc[~shared["id"].isin(["q000", "q001"]), "f1"].mean())
    assert (tuned["delta"], tuned["ci_low"], tuned["ci_high"]) == pytest.approx((5.0, 5.0, 5.0))
    assert 0 <= tuned["p_value"] <= 1  # p-values are not scaled


def test_compare_refuses_what_it_cannot_pair():
    scores = long_scores(np.random.default_rng(0), n=5)
    with pytest.raises(ValueError, match="baseline 'gpt' not among the models"):
        stats.compare(scores, "gpt", ["f1"])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['bleu'\]"):
        stats.compare(scores, "base", ["bleu"])
    with pytest.raises(ValueError, match="more than one row for"):
        stats.compare(scores, "base", ["f1"])  # each id appears once per condition, twice in all
    lonely = scores[(scores["model"] != "noisy") | (scores["id"] == "q000")]
    with pytest.raises(ValueError, match="'noisy' vs 'base' on 'f1' in {'condition': 'closed_book'}: .* got 1"):
        stats.compare(lonely, "base", ["f1"], by=["condition"])


def test_compare_skips_models_absent_from_a_group():
    scores = long_scores(np.random.default_rng(0), n=10)
    scores = scores[(scores["model"] != "noisy") | (scores["condition"] == "rag")]
    table = stats.compare(scores, "base", ["f1"], by=["condition"])
    assert sorted(zip(table["model"], table["condition"], strict=True)) == [
        ("noisy", "rag"),
        ("tuned", "closed_book"),
        ("tuned", "rag"),
    ]


def test_sign_test_known_values():
    assert stats.sign_test(9, 1) == pytest.approx(22 / 1024)  # 2 * P(X <= 1), X ~ Binomial(10, 1/2)
    assert stats.sign_test(1, 9) == pytest.approx(22 / 1024)
    assert stats.sign_test(5, 5) == 1.0
    assert math.isnan(stats.sign_test(0, 0))
    with pytest.raises(ValueError, match="counts"):
        stats.sign_test(-1, 3)


def test_format_ci_for_tables():
    delta = stats.paired_bootstrap(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]))
    assert stats.format_ci(delta, digits=2) == "+0.75 [+0.25, +1.00]"
    row = pd.Series({"delta": -3.21, "ci_low": -5.44, "ci_high": 1.06})
    assert stats.format_ci(row) == "-3.2 [-5.4, +1.1]"
    assert stats.format_ci(dataclasses.replace(delta, delta=3.2, ci_low=1.1, ci_high=5.4)) == "+3.2 [+1.1, +5.4]"


def test_mean_ci_brackets_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    few, many = rng.normal(50, 10, 20), rng.normal(50, 10, 2000)
    for values in (few, many):
        mean, low, high = stats.mean_ci(values)
        assert low < mean < high and mean == pytest.approx(values.mean())
    assert np.ptp(stats.mean_ci(many)[1:]) < np.ptp(stats.mean_ci(few)[1:]) / 5
    assert stats.mean_ci([3.0, np.nan]) == (3.0, 3.0, 3.0)  # one score: no interval to draw


def test_best_probability_is_sure_of_a_clear_winner_and_split_between_twins():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    scores = pd.DataFrame({"a": base, "twin": base.copy(), "worse": base - 0.3})
    shares = stats.best_probability(scores)
    assert shares["worse"] == 0 and shares["a"] == shares["twin"] == pytest.approx(0.5)
    assert stats.best_probability(scores, maximize=False)["worse"] == 1
    noisy = pd.DataFrame({"a": rng.uniform(0, 1, 10), "b": rng.uniform(0, 1, 10)})
    shares = stats.best_probability(noisy)
    assert shares.sum() == pytest.approx(1) and 0.05 < shares.max() < 0.95  # ten items do not settle it
