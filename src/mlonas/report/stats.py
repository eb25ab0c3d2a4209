"""Scheme row versus base row: the difference of mean errors, its 95% CI and Welch's test.

The papers compare a multi-level scheme (LeaSE, SGL) with the plain method it is built on
by their mean errors alone. A reader of our tables should see whether a difference of a
few tenths of a point is more than seed noise, so each scheme row gets

- the difference of means, scheme minus base (percentage points of top-1 error; negative
  means the scheme's cells have the lower error),
- a 95% confidence interval of that difference from the Welch–Satterthwaite
  approximation (no equal-variance assumption: a scheme may well change the spread
  over seeds, not only the mean), and
- the two-sided p-value of Welch's t-test over seeds.

All three come from one :func:`scipy.stats.ttest_ind` call with ``equal_var=False``
(its ``confidence_interval()`` and ``df``); the test suite holds them against the
textbook formulas written out by hand.

:func:`mean_std` is the tables' mean and sample std, defined here once so that the table
and ``mlonas audit`` (which recomputes a table cell) cannot compute them two ways.

With three seeds per side these are wide intervals and weak tests; that is the honest
statement the numbers support, and the tables print it rather than a bare mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from scipy import stats

#: Fewest non-diverged seeds per side for which a sample variance (and hence the test)
#: exists.
MIN_SEEDS = 2
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """Scheme minus base. Fields are NaN where undefined; ``note`` then says why."""

    diff_mean: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p_value: float
    n_scheme: int
    n_base: int
    note: str = ""

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)


def mean(values: Sequence[float]) -> float:
    """Mean as pandas takes it (NaN for no values)."""
    return float(pd.Series(values, dtype=float).mean()) if len(values) else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1) as pandas takes it; NaN below two values, since
    the spread of one number is undefined, not zero."""
    return float(pd.Series(values, dtype=float).std(ddof=1)) if len(values) >= 2 else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The tables' mean and sample std of a column (see :func:`mean`, :func:`std`)."""
    return mean(values), std(values)


def _untested(a: list[float], b: list[float], note: str) -> Comparison:
    """Only the difference of means is defined; ``note`` says why nothing else is."""
    nan = math.nan
    diff = mean(a) - mean(b) if a and b else nan
    return Comparison(diff, nan, nan, nan, nan, nan, len(a), len(b), note)


def welch_compare(
    scheme: Sequence[float], base: Sequence[float], confidence: float = CONFIDENCE
) -> Comparison:
    """Compare two samples of per-seed errors (diverged seeds already removed).

    Needs :data:`MIN_SEEDS` values on each side; with fewer, or with no spread on
    either side (the t statistic is then 0/0 or infinite, not a test), only what is
    defined is filled in and ``note`` names the reason.
    """
    a = [float(x) for x in scheme]
    b = [float(x) for x in base]
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        return _untested(
            a,
            b,
            f"needs >= {MIN_SEEDS} non-diverged seeds on both sides (have {len(a)} vs {len(b)})",
        )
    if len(set(a)) == 1 and len(set(b)) == 1:  # both sample variances are exactly 0
        return _untested(
            a, b, "every seed has the same error on both sides: Welch's test is undefined"
        )
    with warnings.catch_warnings():
        # SciPy warns about "catastrophic cancellation" for nearly equal samples; the
        # numbers are still what we report, and a warning in a table job helps nobody.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False, alternative="two-sided")
        ci = res.confidence_interval(confidence_level=confidence)
    return Comparison(
        diff_mean=mean(a) - mean(b),
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        t=float(res.statistic),
        df=float(res.df),
        p_value=float(res.pvalue),
        n_scheme=len(a),
        n_base=len(b),
    )
