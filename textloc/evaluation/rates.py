"""Rates read from pictures, with the binomial uncertainty that comes with a finite count.

A share of pictures (how often the other object appears, say) is a binomial proportion; the Wilson
score interval stays inside [0, 1] and keeps its coverage at small counts and at rates near 0 or 1,
where the plain normal interval fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.90


def wilson_interval(successes: int, count: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of successes / count at `confidence` (two-sided)."""
    if count <= 0:
        raise ValueError("a rate needs at least one picture")
    if not 0 <= successes <= count:
        raise ValueError(f"{successes} successes out of {count} pictures")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / count
    denominator = 1 + z * z / count
    centre = (p + z * z / (2 * count)) / denominator
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """How many of `count` pictures showed something, with its interval."""

    successes: int
    count: int
    confidence: float = CONFIDENCE

    @property
    def value(self) -> float:
        return self.successes / self.count

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.count, self.confidence)

    def separated_below(self, other: Rate) -> bool:
        """True when this rate's interval lies wholly below the other's (the intervals do not overlap)."""
        return self.interval[1] < other.interval[0]

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.value:.2f} [{low:.2f}, {high:.2f}]"

    def as_dict(self) -> dict[str, float | int]:
        low, high = self.interval
        return {"rate": round(self.value, 4), "low": round(low, 4), "high": round(high, 4),
                "successes": self.successes, "pictures": self.count, "confidence": self.confidence}


def pooled(rates: list[Rate]) -> Rate:
    """All pictures of several runs (seeds) counted together."""
    if not rates:
        raise ValueError("nothing to pool")
    return Rate(sum(r.successes for r in rates), sum(r.count for r in rates), rates[0].confidence)
