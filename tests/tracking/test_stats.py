"""Paired differences and rank correlations: the bookkeeping every search-quality claim rests on."""

from __future__ import annotations

import math

import pytest

from tracking.stats import paired_differences, rank_correlation


def test_paired_differences_pair_by_split_and_leave_out_what_only_one_side_has():
    searched = {0: 0.85, 1: 0.80, 2: 0.90, 3: 0.70}
    uniform = {0: 0.83, 1: 0.81, 2: 0.86, 4: 0.99}  # split 3 only searched, split 4 only uniform
    d = paired_differences(searched, uniform)
    assert d["per_split"] == pytest.approx({0: 0.02, 1: -0.01, 2: 0.04})
    assert d["n"] == 3 and d["wins"] == 2
    assert d["mean"] == pytest.approx(0.05 / 3)
    assert d["std"] == pytest.approx(math.sqrt(((0.02 - 0.05 / 3) ** 2 + (-0.01 - 0.05 / 3) ** 2
                                               + (0.04 - 0.05 / 3) ** 2) / 2))
    # the std of the differences, not of either side: a split both find hard cancels out
    hard = paired_differences({0: 0.9, 1: 0.5}, {0: 0.89, 1: 0.49})
    assert hard["mean"] == pytest.approx(0.01) and hard["std"] == pytest.approx(0.0, abs=1e-12)


def test_paired_differences_skip_missing_and_non_finite_values():
    d = paired_differences({0: None, 1: float("nan"), 2: 0.5}, {0: 0.4, 1: 0.4, 2: 0.4})
    assert d["n"] == 1 and d["std"] == 0.0 and d["mean"] == pytest.approx(0.1)
    empty = paired_differences({}, {0: 0.4})
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_rank_correlation_agrees_with_its_definition():
    same = rank_correlation([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.9])
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0) and same["n"] == 4
    rev = rank_correlation([0.1, 0.2, 0.3, 0.4], [0.9, 0.7, 0.6, 0.5])
    assert rev["spearman"] == pytest.approx(-1.0) and rev["kendall"] == pytest.approx(-1.0)
    # one swapped pair of 4: Kendall (5 concordant - 1 discordant) / 6, Spearman 1 - 6*2/(4*15)
    one = rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert one["kendall"] == pytest.approx(4 / 6) and one["spearman"] == pytest.approx(0.8)


def test_rank_correlation_says_none_where_there_is_nothing_to_rank():
    assert rank_correlation([0.1, 0.2], [0.3, 0.4])["spearman"] is None          # fewer than 3 pairs
    assert rank_correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["kendall"] is None  # a constant score
    partial = rank_correlation([0.1, None, 0.3, 0.4], [0.2, 0.3, float("nan"), 0.5])
    assert partial["n"] == 2 and partial["spearman"] is None
    with pytest.raises(ValueError, match="3 scores against 2"):
        rank_correlation([0.1, 0.2, 0.3], [0.1, 0.2])
