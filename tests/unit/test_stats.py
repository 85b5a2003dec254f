"""tlearn.stats: Wilson's interval, McNemar's exact test, paired differences and the
promotion rule, against values computed by hand or by scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from tlearn.stats import Paired, Rule, mcnemar_exact, wilson_interval


def test_wilson_interval_known_values():
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(267, 269)  # the digits' test split, 2 mistakes
    assert low == pytest.approx(0.9733, abs=1e-4) and high == pytest.approx(0.9980, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (6, 1), (10, 0), (12, 20), (40, 25)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_paired_counts_and_difference_interval():
    challenger = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    champion = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0, 1], bool)
    paired = Paired.of(challenger, champion)
    assert (paired.n, paired.challenger_only, paired.champion_only) == (10, 3, 1)
    assert paired.challenger_accuracy == 0.9 and paired.champion_accuracy == 0.7
    assert paired.difference == pytest.approx(0.2)
    low, high = paired.difference_interval
    assert low < 0.2 < high and high - low == pytest.approx(2 * 1.96 * np.sqrt(4 - 0.4) / 10,
                                                             rel=1e-3)
    assert paired.p_value == pytest.approx(0.625)
    with pytest.raises(ValueError, match="differ in length"):
        Paired.of(challenger, champion[:5])


RULE = Rule(margin=0.0, alpha=0.05, require_significance=True, min_accuracy=0.5)


def _pair(n: int, challenger_only: int, champion_only: int) -> Paired:
    both = n - challenger_only - champion_only
    challenger = np.array([True] * both + [True] * challenger_only + [False] * champion_only)
    champion = np.array([True] * both + [False] * challenger_only + [True] * champion_only)
    return Paired.of(challenger, champion)


def test_the_rule():
    assert RULE.decide(0.9, None) == (True, "the first champion")
    promoted, reason = RULE.decide(0.4, None)
    assert not promoted and "below retrain.min_accuracy 0.5" in reason
    # better by one image of 50: not significant (p = 1.0)
    promoted, reason = RULE.decide(1.0, _pair(50, 1, 0))
    assert not promoted and reason.startswith("better by +0.0200 but not significant")
    # better by 12 images, worse on none: p = 2 / 2**12
    promoted, reason = RULE.decide(1.0, _pair(200, 12, 0))
    assert promoted and "McNemar p = 0.000488" in reason
    assert not RULE.decide(0.9, _pair(200, 3, 5))[0]      # worse
    assert RULE.decide(0.9, _pair(200, 3, 5))[1].startswith("not better: -0.0100")
    margin = Rule(margin=0.1, alpha=0.05, require_significance=True, min_accuracy=0.5)
    assert "less than the margin 0.1" in margin.decide(1.0, _pair(200, 12, 0))[1]
    no_test = Rule(margin=0.0, alpha=0.05, require_significance=False, min_accuracy=0.5)
    assert no_test.decide(1.0, _pair(50, 1, 0)) == (True, "better by +0.0200")
