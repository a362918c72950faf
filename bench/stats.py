"""Small statistics for interleaved rounds: medians, spread, per-round ratios, noise verdicts.

Everything here is pure (lists of numbers in, numbers or None out) and unit-tested.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

NOISY_SPREAD = 0.25  # (max - min) / median of req/s over the rounds above this: the machine was noisy
NOISY_OTHER_CPU = 0.15  # cores of foreign CPU on the server's cores during a run above this: disturbed run


def median(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(vals) if vals else None


def spread(xs: Iterable[float | None]) -> float | None:
    """(max - min) / median: 0.10 means the rounds varied over 10% of the typical value."""
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    if len(vals) < 2:
        return None
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else None


def percentile(xs: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), as latency tools report it: a value that was observed."""
    vals = sorted(xs)
    if not vals:
        return None
    rank = max(1, math.ceil(round(q * len(vals) / 100, 9)))  # round: 99.9 * 1000 / 100 is not exactly 999
    return vals[min(rank, len(vals)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def per_round_ratios(values: Mapping[int, float | None], refs: Mapping[int, float | None]) -> list[float]:
    """{round: value} / {round: reference value}, for the rounds both have. Ratios of runs from the same
    round (minutes apart at most) cancel most of the machine's slow drift."""
    out = []
    for rnd, v in values.items():
        r = ratio(v, refs.get(rnd))
        if r is not None:
            out.append(r)
    return out


def median_ratio(values: Mapping[int, float | None], refs: Mapping[int, float | None]) -> float | None:
    return median(per_round_ratios(values, refs))


def noise_warnings(
    rps: list[float | None],
    other_cpu: list[float | None],
    *,
    max_spread: float = NOISY_SPREAD,
    max_other: float = NOISY_OTHER_CPU,
) -> list[str]:
    """Human-readable reasons to distrust a row; empty when the rounds agree."""
    out = []
    sp = spread(rps)
    if sp is not None and sp > max_spread:
        out.append(f"noisy: req/s spread {sp:.0%} over {len([x for x in rps if x is not None])} rounds")
    busy = [x for x in other_cpu if x is not None and x > max_other]
    if busy:
        out.append(f"disturbed: {len(busy)} run(s) with up to {max(busy):.2f} cores of foreign CPU")
    return out
