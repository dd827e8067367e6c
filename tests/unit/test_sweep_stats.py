"""Per-metric statistics and Welch's comparison, against reference values from scipy 1.17.1 where they exist."""

import math
import statistics

import pytest

from envkit.sweep.stats import CANNOT, LARGER, METHOD, UNDECIDED, WITHIN, RunMetrics, compare, goal_of, summarize

A = [0.912, 0.905, 0.921, 0.899, 0.915, 0.908, 0.917, 0.902]
B = [0.931, 0.925, 0.940, 0.919, 0.936, 0.928]
C = [0.910, 0.918, 0.903, 0.913, 0.907]


def sweep(values, name="acc", status="succeeded"):
    return summarize([RunMetrics(seed, f"run{seed}", status, {name: v}) for seed, v in enumerate(values)])


def test_mean_std_ci_best_and_worst():
    m = sweep(A).metric("acc")
    assert m.n == 8
    assert m.mean == pytest.approx(statistics.fmean(A), rel=1e-15)
    assert m.std == pytest.approx(0.007679983258910331, rel=1e-12)  # numpy std(ddof=1)
    # scipy.stats.t.interval(0.95, 7, loc=mean, scale=sem)
    assert (m.ci_low, m.ci_high) == pytest.approx((0.903454373317785, 0.916295626682215), rel=1e-12)
    assert (m.min, m.max) == (0.899, 0.921)
    assert (m.best_seed, m.worst_seed) == (2, 3)
    assert [v for _, _, v in m.values] == A and m.notes == ()


def test_lower_is_better_for_costs():
    m = sweep([0.3, 0.1, 0.2], name="val_loss").metric("val_loss")
    assert m.goal == "min" and (m.best_seed, m.worst_seed) == (1, 0)
    goals = summarize([(0, "r0", "succeeded", {"acc": 1}), (1, "r1", "succeeded", {"acc": 2})], goals={"acc": "min"})
    assert goals.metric("acc").best_seed == 0


@pytest.mark.parametrize("name, goal", [("val_loss", "min"), ("test/error", "min"), ("stepTime", "min"),
                                        ("perplexity", "min"), ("accuracy", "max"), ("f1", "max"),
                                        ("glossary_size", "max"), ("bleu", "max")])
def test_goal_from_the_name(name, goal):
    assert goal_of(name) == goal


def test_one_value_has_no_spread_and_says_so():
    m = sweep([0.5]).metric("acc")
    assert (m.n, m.mean, m.std, m.ci_low, m.ci_high) == (1, 0.5, None, None, None)
    assert any("one value" in n for n in m.notes)


def test_constant_values():
    m = sweep([2.0, 2.0, 2.0]).metric("acc")
    assert (m.mean, m.std, m.ci_low, m.ci_high) == (2.0, 0.0, 2.0, 2.0)
    assert any("all 3 values are equal" in n for n in m.notes)


def test_non_finite_and_non_numbers_are_left_out_with_a_note():
    runs = [(0, "r0", "succeeded", {"acc": 1.0}), (1, "r1", "succeeded", {"acc": math.nan}),
            (2, "r2", "succeeded", {"acc": math.inf}), (3, "r3", "succeeded", {"acc": "0.9"}),
            (4, "r4", "succeeded", {"acc": True}), (5, "r5", "succeeded", {"acc": {"x": 1}}),
            (6, "r6", "succeeded", {"acc": 3}), (7, "r7", "succeeded", {"acc": 10**400})]
    s = summarize(runs)
    m = s.metric("acc")
    assert m.n == 2 and m.mean == 2.0
    assert [(seed, why) for seed, _, why in m.excluded] == [
        (1, "NaN"), (2, "infinite"), (3, "not a number (str)"), (4, "not a number (bool)"),
        (5, "not a number (dict)"), (7, "too large for a float")]
    assert s.runs[1].counted and s.runs[1].note == "left out: acc"


def test_failed_runs_and_runs_without_metrics_are_marked_not_fatal():
    runs = [(0, "r0", "succeeded", {"acc": 1.0}), (1, "r1", "failed", {"acc": 100.0}),
            (2, "r2", "succeeded", None), (3, "r3", "interrupted", None), (4, "r4", "succeeded", [1, 2]),
            (5, "r5", "succeeded", {"acc": 3.0})]
    s = summarize(runs)
    assert s.metric("acc").mean == 2.0  # the failed run's metrics do not count
    assert [(r.seed, r.counted, r.note) for r in s.runs] == [
        (0, True, None), (1, False, "not counted"), (2, False, "no metrics.json"), (3, False, "not counted"),
        (4, False, "metrics.json is not a map of names to numbers"), (5, True, None)]
    assert s.notes == ("4 of 6 runs not counted: seed 1 (failed); seed 2 (no metrics.json); seed 3 (interrupted); "
                       "seed 4 (metrics.json is not a map of names to numbers)",)


def test_no_metrics_at_all():
    s = summarize([(0, "r0", "succeeded", None), (1, "r1", "succeeded", {})])
    assert s.metrics == ()
    assert "no metrics found: none of the 2 runs has a counted metrics.json" in s.notes
    assert summarize([]).notes == ("no runs",)


def test_metric_in_some_runs_only():
    s = summarize([(0, "r0", "succeeded", {"acc": 1.0, "f1": 0.5}), (1, "r1", "succeeded", {"acc": 2.0}),
                   (2, "r2", "succeeded", {"acc": 3.0, "f1": 0.7})])
    f1 = s.metric("f1")
    assert f1.n == 2 and f1.missing == (1,)
    assert "missing in 1 of 3 runs (seeds 1)" in f1.notes
    assert [m.name for m in s.metrics] == ["acc", "f1"]


@pytest.mark.parametrize("a, b, t, p, df, ci", [
    # scipy.stats.ttest_ind(b, a, equal_var=False) and its confidence_interval(0.95)
    (A, B, 4.850048103254628, 0.0005095784469433953, 11.008612609968, (0.010901968961145652, 0.02901469770552117)),
    (A, C, 0.08713178107619489, 0.9322081974184733, 10.486623928200826,
     (-0.00793393795050581, 0.00858393795050585)),
    (B, [1, 2, 3.5], 1.7024787402500574, 0.23077105515609875, 2.000072463551703,
     (-1.8888911950726701, 4.362557861739337)),
])
def test_welch_matches_scipy(a, b, t, p, df, ci):
    c = compare(sweep(a), sweep(b))
    assert c.method == METHOD
    (m,) = c.metrics
    assert m.t == pytest.approx(t, rel=1e-10)
    assert m.df == pytest.approx(df, rel=1e-10)
    assert m.p == pytest.approx(p, rel=1e-9)
    assert (m.ci_low, m.ci_high) == pytest.approx(ci, rel=1e-9)
    assert m.difference == pytest.approx(statistics.fmean(b) - statistics.fmean(a))
    assert m.verdict == (LARGER if p < 0.05 else WITHIN)


def test_compare_edge_cases():
    one = compare(sweep([1.0]), sweep([1.0, 2.0])).metrics[0]
    assert one.verdict == UNDECIDED and one.p is None and "at least 2 values" in one.note
    same = compare(sweep([2.0, 2.0]), sweep([2.0, 2.0, 2.0])).metrics[0]
    assert (same.verdict, same.p, same.t) == (WITHIN, 1.0, 0.0)
    apart = compare(sweep([2.0, 2.0]), sweep([3.0, 3.0])).metrics[0]
    assert (apart.verdict, apart.p, apart.t) == (LARGER, 0.0, math.inf)
    huge = compare(sweep([1e308, -1e308]), sweep([1e308, -1e308])).metrics[0]
    assert huge.verdict == CANNOT


def test_compare_names_metrics_only_one_sweep_has():
    a = summarize([(0, "a0", "succeeded", {"acc": 1, "x": 1}), (1, "a1", "succeeded", {"acc": 2, "x": 2})])
    b = summarize([(0, "b0", "succeeded", {"acc": 1, "y": 1}), (1, "b1", "succeeded", {"acc": 2, "y": 2})])
    c = compare(a, b)
    assert [m.name for m in c.metrics] == ["acc"] and c.metrics[0].verdict == WITHIN
    assert (c.only_in_a, c.only_in_b) == (("x",), ("y",))


def test_same_job_vs_a_real_difference():
    # Two sweeps of one noisy job, then the same job shifted by a few seed-standard-deviations.
    import random

    rng = random.Random(7)
    base = [rng.gauss(0.9, 0.01) for _ in range(10)]
    again = [rng.gauss(0.9, 0.01) for _ in range(10)]
    better = [v + 0.03 for v in again]
    assert compare(sweep(base), sweep(again)).metrics[0].verdict == WITHIN
    assert compare(sweep(base), sweep(better)).metrics[0].verdict == LARGER
