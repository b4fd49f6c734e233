"""Summaries of runs over seeds: each arm's mean, standard deviation and 95% confidence
interval (Student's t), and each arm's paired differences against a baseline arm on the seeds
both have, with their 95% interval and a paired t-test. Seeds are the pairing: two arms on
one seed share the head initialisation, the batch order and the dropout stream, so their
difference holds far less seed noise than the arms' spreads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1); nan for one value
    low: float  # the 95% interval of the mean; nan for one value
    high: float


@dataclass(frozen=True)
class Paired(Summary):
    p_value: float  # two-sided paired t-test of "no difference"; nan below two pairs


def summarise(values: list[float]) -> Summary:
    """Mean, std and the t interval of the mean of ``values`` (at least one)."""
    x = np.asarray(values, dtype=np.float64)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired(arm: dict[int, float], baseline: dict[int, float]) -> Paired | None:
    """``arm - baseline`` over the seeds both have (None when they share none)."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    diffs = [arm[s] - baseline[s] for s in seeds]
    s = summarise(diffs)
    p = math.nan
    if len(seeds) >= 2:
        if s.std == 0:
            p = 0.0 if s.mean != 0 else 1.0
        else:
            p = float(stats.ttest_rel([arm[x] for x in seeds], [baseline[x] for x in seeds]).pvalue)
    return Paired(s.n, s.mean, s.std, s.low, s.high, p)


def verdict(change: Paired | None, better: str = "higher") -> str:
    """``better``/``worse`` when the interval is clear of zero, else ``cannot tell``."""
    if change is None or change.n < 2 or math.isnan(change.low):
        return "cannot tell (fewer than 2 paired seeds)"
    if change.low > 0:
        return "better" if better == "higher" else "worse"
    if change.high < 0:
        return "worse" if better == "higher" else "better"
    return "cannot tell"
