"""How sure a test accuracy is, and whether one model really beats another on the same
test images: Wilson's interval for an accuracy, McNemar's exact test and an interval for
the difference on paired predictions, and the promotion rule built on them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval for an accuracy of ``correct`` out of ``n`` (Wilson score: sound near
    0 and 1 and for small ``n``, where the normal approximation is not)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value of McNemar's exact test: under "both models are as good", each
    image only one of them gets right is a fair coin toss for which one it is."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Two models' per-image correctness on the same test images."""

    n: int
    challenger_correct: int
    champion_correct: int
    challenger_only: int  # images only the challenger gets right
    champion_only: int

    @classmethod
    def of(cls, challenger: np.ndarray, champion: np.ndarray) -> Paired:
        challenger, champion = np.asarray(challenger, bool), np.asarray(champion, bool)
        if challenger.shape != champion.shape:
            raise ValueError(f"paired predictions differ in length: {challenger.shape} "
                             f"vs {champion.shape}")
        return cls(len(challenger), int(challenger.sum()), int(champion.sum()),
                   int((challenger & ~champion).sum()), int((champion & ~challenger).sum()))

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_correct / self.n

    @property
    def champion_accuracy(self) -> float:
        return self.champion_correct / self.n

    @property
    def difference(self) -> float:
        return (self.challenger_only - self.champion_only) / self.n

    @property
    def difference_interval(self) -> tuple[float, float]:
        """95% interval for the accuracy difference on paired data (Wald, with the
        variance of the discordant pairs)."""
        b, c, n = self.challenger_only, self.champion_only, self.n
        half = Z95 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
        return self.difference - half, self.difference + half

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.challenger_only, self.champion_only)


@dataclass(frozen=True)
class Rule:
    """When a challenger replaces the champion (params.yaml: tracking.promote_margin,
    retrain.alpha, retrain.require_significance, retrain.min_accuracy)."""

    margin: float
    alpha: float
    require_significance: bool
    min_accuracy: float

    def decide(self, challenger_accuracy: float, paired: Paired | None) -> tuple[bool, str]:
        """(promote?, the reason in a few words); ``paired`` is None without a champion."""
        if paired is None:
            if challenger_accuracy < self.min_accuracy:
                return False, (f"no champion yet, and test accuracy {challenger_accuracy:.4f} is "
                               f"below retrain.min_accuracy {self.min_accuracy:g}")
            return True, "the first champion"
        gain = paired.difference
        if gain <= 0:
            return False, (f"not better: {gain:+.4f} on the same {paired.n} test images")
        if gain < self.margin - 1e-12:
            return False, f"better by {gain:+.4f}, less than the margin {self.margin:g}"
        if self.require_significance and paired.p_value >= self.alpha:
            return False, (f"better by {gain:+.4f} but not significant: McNemar p = "
                           f"{paired.p_value:.3g} >= alpha {self.alpha:g} "
                           f"({paired.challenger_only} vs {paired.champion_only} images)")
        return True, (f"better by {gain:+.4f}" + (f", McNemar p = {paired.p_value:.3g}"
                                                 if self.require_significance else ""))
