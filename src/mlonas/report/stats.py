"""Scheme row versus base row: the difference of mean errors, its 95% CI and Welch's test.

The papers compare a multi-level scheme (LeaSE, SGL) with the plain method it is built on
by their mean errors alone. A reader of our tables should see whether a difference of a
few tenths of a point is more than seed noise, so each scheme row gets

- the difference of means, scheme minus base (percentage points of top-1 error; negative
  means the scheme's cells have the lower error),
- a 95% confidence interval of that difference from the Welch–Satterthwaite
  approximation (no equal-variance assumption: a scheme may well change the spread
  over seeds, not only the mean), and
- the two-sided p-value of Welch's t-test over seeds, from
  :func:`scipy.stats.ttest_ind` with ``equal_var=False``.

The interval is computed here from the textbook formulas and the p-value by SciPy, so
the test suite can hold the two against each other (and against SciPy's own interval).
With three seeds per side these are wide intervals and weak tests; that is the honest
statement the numbers support, and the tables print it rather than a bare mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _untested(diff: float, a: list[float], b: list[float], note: str) -> Comparison:
    """Only the difference of means is defined; ``note`` says why nothing else is."""
    nan = math.nan
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
    nan = math.nan
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        diff = _mean(a) - _mean(b) if a and b else nan
        return _untested(
            diff,
            a,
            b,
            f"needs >= {MIN_SEEDS} non-diverged seeds on both sides (have {len(a)} vs {len(b)})",
        )
    diff = _mean(a) - _mean(b)
    va, vb = _var(a) / len(a), _var(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return _untested(
            diff, a, b, "every seed has the same error on both sides: Welch's test is undefined"
        )
    se = math.sqrt(se2)
    # Welch–Satterthwaite degrees of freedom; a side with zero spread contributes 0.
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    with warnings.catch_warnings():
        # SciPy warns about "catastrophic cancellation" for nearly equal samples; the
        # numbers are still what we report, and a warning in a table job helps nobody.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False, alternative="two-sided")
    return Comparison(
        diff_mean=diff,
        ci_low=diff - half,
        ci_high=diff + half,
        t=diff / se,
        df=df,
        p_value=float(res.pvalue),
        n_scheme=len(a),
        n_base=len(b),
    )
