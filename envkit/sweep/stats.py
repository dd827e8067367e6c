"""The statistics of a sweep, per metric, and the comparison of two sweeps: pure, standard library only.

Input: one :class:`RunMetrics` per run, ``(seed, run_id, status, metrics)``, where ``metrics`` is the run's
``metrics.json`` (a flat map of name to number) or None when it wrote none. Only succeeded runs count; a failed,
interrupted or unfinished run is listed with a note, and so is one without metrics. Within a counted run, a value
that is not a finite number (NaN, an infinity, a string, a nested map, a boolean) is left out of the statistics with
a note naming the seed; a metric that some counted runs lack says which.

Per metric: n, mean, sample standard deviation (n - 1), min, max, the 95 % confidence interval of the mean
(mean +- t(0.975, n - 1) * s / sqrt(n), Student's t), and the best and worst seed. "Best" is the highest value, or the
lowest for metric names that read as costs (loss, error, perplexity, time, ...; :func:`goal_of`), unless the
caller says otherwise. Means and deviations are computed exactly (the ``statistics`` module sums exactly).

:func:`compare` runs Welch's t-test per metric the two sweeps share: it does not assume equal variances, and with
seeds as the only source of variation it is the usual test. Each metric is tested on its own at alpha 0.05, with no
correction for testing several metrics (the report names the method so a reader can apply one).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from envkit.sweep.tdist import t_ppf, t_two_sided_p

CONFIDENCE = 0.95
ALPHA = 0.05
METHOD = "Welch's t-test (two-sided, alpha 0.05)"
LARGER = "larger than the seed noise"
WITHIN = "within the seed noise"
UNDECIDED = "not enough seeds to tell"
CANNOT = "cannot tell"
COUNTED_STATUS = "succeeded"
# Name parts that make a metric a cost (lower is better); everything else is a score (higher is better).
_COST_WORDS = frozenset(
    "loss err error errors mse mae rmse nll perplexity ppl wer cer fid "
    "time runtime seconds secs latency duration regret".split()
)


class RunMetrics(NamedTuple):
    """One run of a sweep as the report sees it (a plain tuple works too)."""

    seed: int
    run_id: str
    status: str
    metrics: Mapping[str, object] | None


@dataclass(frozen=True)
class RunNote:
    """A run and whether its metrics count; ``note`` says why not, or what was left out."""

    seed: int
    run_id: str
    status: str
    counted: bool
    note: str | None


@dataclass(frozen=True)
class MetricSummary:
    """The statistics of one metric over the counted runs; None where they do not exist (``notes`` say why)."""

    name: str
    goal: str  # "max" or "min": which end is the best seed
    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    ci_low: float | None
    ci_high: float | None
    best_seed: int | None
    worst_seed: int | None
    values: tuple[tuple[int, str, float], ...]  # (seed, run_id, value), in run order
    excluded: tuple[tuple[int, str, str], ...]  # (seed, run_id, why): values left out
    missing: tuple[int, ...]  # seeds of counted runs without this metric
    notes: tuple[str, ...]


@dataclass(frozen=True)
class SweepSummary:
    """Every run with its note, every metric's summary (sorted by name), and notes on the sweep as a whole."""

    runs: tuple[RunNote, ...]
    metrics: tuple[MetricSummary, ...]
    notes: tuple[str, ...]

    def metric(self, name: str) -> MetricSummary | None:
        """The summary of one metric, or None."""
        return next((m for m in self.metrics if m.name == name), None)


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two sweeps: B - A, its 95 % interval, Welch's t, df and p, and the verdict."""

    name: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None  # mean_b - mean_a
    ci_low: float | None
    ci_high: float | None
    t: float | None
    df: float | None
    p: float | None
    verdict: str
    note: str | None = None


@dataclass(frozen=True)
class Comparison:
    """The per-metric comparisons of two sweeps, and the metrics only one of them has."""

    method: str
    metrics: tuple[MetricComparison, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]


def goal_of(name: str) -> str:
    """``"min"`` for a metric whose name reads as a cost (``val_loss``, ``test/error``, ``stepTime``); else
    ``"max"``."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower())
    return "min" if _COST_WORDS.intersection(words) else "max"


def summarize(runs: Iterable[RunMetrics | tuple], goals: Mapping[str, str] | None = None) -> SweepSummary:
    """Summarize a sweep's runs per metric.

    Args:
        runs: ``(seed, run_id, status, metrics or None)`` per run, in the order to report them.
        goals: metric name -> ``"max"`` or ``"min"``, overriding :func:`goal_of` for the best/worst seed.

    Returns:
        The summary; it never raises for bad metric values (they are excluded with a note).
    """
    runs = [RunMetrics(*r) for r in runs]
    goals = goals or {}
    notes_by_run: list[RunNote] = []
    counted: list[tuple[RunMetrics, Mapping[str, object]]] = []
    for run in runs:
        if run.status != COUNTED_STATUS:
            notes_by_run.append(RunNote(run.seed, run.run_id, run.status, False, "not counted"))
        elif run.metrics is None:
            notes_by_run.append(RunNote(run.seed, run.run_id, run.status, False, "no metrics.json"))
        elif not isinstance(run.metrics, Mapping):
            note = "metrics.json is not a map of names to numbers"
            notes_by_run.append(RunNote(run.seed, run.run_id, run.status, False, note))
        else:
            # JSON keys are strings; str() only guards callers that hand in other keys.
            metrics = {str(k): v for k, v in run.metrics.items()}
            bad = sorted(k for k, v in metrics.items() if _number(v)[0] is None)
            note = f"left out: {', '.join(bad)}" if bad else None
            notes_by_run.append(RunNote(run.seed, run.run_id, run.status, True, note))
            counted.append((run, metrics))
    names = sorted({k for _, metrics in counted for k in metrics})
    metrics = tuple(_summarize_metric(name, counted, goals.get(name) or goal_of(name)) for name in names)
    notes: list[str] = []
    if not runs:
        notes.append("no runs")
    elif not names:
        notes.append(f"no metrics found: none of the {len(runs)} runs has a counted metrics.json")
    not_counted = [r for r in notes_by_run if not r.counted]
    if not_counted:
        listed = "; ".join(f"seed {r.seed} ({r.status if r.status != COUNTED_STATUS else r.note})"
                           for r in not_counted[:10])
        more = "; ..." if len(not_counted) > 10 else ""
        notes.append(f"{len(not_counted)} of {len(runs)} runs not counted: {listed}{more}")
    return SweepSummary(tuple(notes_by_run), metrics, tuple(notes))


def _number(value: object) -> tuple[float | None, str | None]:
    """(the value as a finite float, None) or (None, why it is left out)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"not a number ({type(value).__name__})"
    try:
        number = float(value)
    except OverflowError:
        return None, "too large for a float"
    if math.isnan(number):
        return None, "NaN"
    if math.isinf(number):
        return None, "infinite"
    return number, None


def _summarize_metric(name: str, counted: list[tuple[RunMetrics, Mapping[str, object]]], goal: str) -> MetricSummary:
    values: list[tuple[int, str, float]] = []
    excluded: list[tuple[int, str, str]] = []
    missing: list[int] = []
    for run, metrics in counted:
        if name not in metrics:
            missing.append(run.seed)
            continue
        number, why = _number(metrics[name])
        if number is None:
            excluded.append((run.seed, run.run_id, why))
        else:
            values.append((run.seed, run.run_id, number))
    notes: list[str] = []
    if excluded:
        notes.append(f"{len(excluded)} value(s) left out: " + ", ".join(f"seed {s} ({w})" for s, _, w in excluded[:10]))
    if missing:
        notes.append(f"missing in {len(missing)} of {len(counted)} runs (seeds {', '.join(map(str, missing[:10]))}"
                     + (", ...)" if len(missing) > 10 else ")"))
    numbers = [v for _, _, v in values]
    n = len(numbers)
    if n == 0:
        notes.append("no finite value")
        return MetricSummary(name, goal, 0, None, None, None, None, None, None, None, None, (), tuple(excluded),
                             tuple(missing), tuple(notes))
    mean = float(statistics.mean(numbers))
    pick = max if goal == "max" else min
    best = pick(values, key=lambda v: v[2])[0]
    worst = (min if goal == "max" else max)(values, key=lambda v: v[2])[0]
    std = ci_low = ci_high = None
    if n == 1:
        notes.append("one value: no standard deviation or confidence interval")
    else:
        std = float(statistics.stdev(numbers))
        half = t_ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
        if std == 0.0:
            notes.append(f"all {n} values are equal: no spread over seeds")
    return MetricSummary(name, goal, n, mean, std, min(numbers), max(numbers), ci_low, ci_high, best, worst,
                         tuple(values), tuple(excluded), tuple(missing), tuple(notes))


def compare(a: SweepSummary, b: SweepSummary) -> Comparison:
    """Is each shared metric's difference between sweep A and sweep B larger than the seed noise?

    Welch's t-test per metric: t = (mean_b - mean_a) / se with se^2 = s_a^2/n_a + s_b^2/n_b, the
    Welch-Satterthwaite degrees of freedom, and the two-sided p-value from Student's t. p < 0.05 reads "larger than
    the seed noise", else "within the seed noise"; fewer than two values on either side cannot tell.
    """
    names_a = {m.name for m in a.metrics if m.n}
    names_b = {m.name for m in b.metrics if m.n}
    results = tuple(_welch(a.metric(name), b.metric(name)) for name in sorted(names_a & names_b))
    return Comparison(METHOD, results, tuple(sorted(names_a - names_b)), tuple(sorted(names_b - names_a)))


def _welch(a: MetricSummary, b: MetricSummary) -> MetricComparison:
    difference = b.mean - a.mean
    if a.n < 2 or b.n < 2:
        return MetricComparison(a.name, a.n, b.n, a.mean, b.mean, difference, None, None, None, None, None, UNDECIDED,
                                f"Welch's test needs at least 2 values per sweep (have {a.n} and {b.n})")
    va, vb = a.std * a.std / a.n, b.std * b.std / b.n  # x * x: inf on overflow, where ** raises
    se = math.sqrt(va + vb)
    if se == 0.0:
        # No spread in either sweep: the seed noise is zero, so any difference at all exceeds it.
        verdict, p = (WITHIN, 1.0) if difference == 0.0 else (LARGER, 0.0)
        t = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
        return MetricComparison(a.name, a.n, b.n, a.mean, b.mean, difference, difference, difference, t, None, p,
                                verdict, "no spread over seeds in either sweep")
    t = difference / se
    df = (va + vb) ** 2 / ((va**2 / (a.n - 1) if va else 0.0) + (vb**2 / (b.n - 1) if vb else 0.0))
    if not (math.isfinite(t) and math.isfinite(df) and df > 0):
        return MetricComparison(a.name, a.n, b.n, a.mean, b.mean, difference, None, None, None, None, None, CANNOT,
                                "the values are too large for the test in double precision")
    p = t_two_sided_p(t, df)
    half = t_ppf(0.5 + CONFIDENCE / 2, df) * se
    return MetricComparison(a.name, a.n, b.n, a.mean, b.mean, difference, difference - half, difference + half, t, df,
                            p, LARGER if p < ALPHA else WITHIN)
