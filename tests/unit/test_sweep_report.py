"""The text table, the JSON dict and the PNG plot of a sweep summary, and of a comparison."""

import json
import math
import struct
import sys

import pytest

from envkit.errors import SweepError
from envkit.sweep.report import comparison_to_dict, plot, plot_unavailable, render_comparison_text, render_text, to_dict
from envkit.sweep.stats import compare, summarize

RUNS = [
    (0, "20261130T210000000Z-00000000", "succeeded", {"acc": 0.90, "loss": 0.30}),
    (1, "20261130T210000001Z-00000001", "succeeded", {"acc": 0.92, "loss": math.nan}),
    (2, "20261130T210000002Z-00000002", "failed", None),
    (3, "20261130T210000003Z-00000003", "succeeded", None),
    (4, "20261130T210000004Z-00000004", "succeeded", {"acc": 0.94, "loss": 0.20, "bad\x1b[2Jname": 1}),
]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_text_table_has_every_statistic_and_marks_bad_runs():
    text = render_text(summarize(RUNS), title="sweep S")
    lines = text.splitlines()
    assert lines[0] == "sweep S"
    assert lines[1].split() == ["metric", "n", "mean", "std", "95%", "CI", "of", "the", "mean", "min", "max", "best",
                                "seed", "worst", "seed"]
    acc = next(line for line in lines if line.startswith("acc "))
    assert acc.split()[:4] == ["acc", "3", "0.92", "0.02"]
    assert "loss: 1 value(s) left out: seed 1 (NaN)" in text
    assert "runs: 5 (3 counted)" in text
    runs = {line.split()[0]: line.split()[2:] for line in lines if line.startswith("  ") and line.split()[0].isdigit()}
    assert runs["2"] == ["failed", "not", "counted"]
    assert runs["3"] == ["succeeded", "no", "metrics.json"]
    assert runs["1"] == ["succeeded", "left", "out:", "loss"]
    assert "\x1b" not in text and "bad\\x1b[2Jname" in text  # a job's metric name cannot drive the terminal


def test_text_without_metrics_says_so():
    text = render_text(summarize([(0, "r0", "succeeded", None)]))
    assert text.startswith("no metrics found\n")
    assert "note: no metrics found: none of the 1 runs has a counted metrics.json" in text


def test_json_names_run_ids_and_plot_and_is_strict_json():
    s = summarize(RUNS + [(5, "r5", "succeeded", {"acc": 1e308}), (6, "r6", "succeeded", {"acc": -1e308})])
    d = to_dict(s, sweep_id="S1", plot_path="/store/sweeps/S1/plot.png")
    text = json.dumps(d, allow_nan=False)  # JSON has no NaN: the dict must not carry one
    assert d["sweep_id"] == "S1" and d["plot"] == "/store/sweeps/S1/plot.png"
    assert [r["run_id"] for r in d["runs"]] == [r[1] for r in RUNS] + ["r5", "r6"]
    assert d["runs"][2] == {"seed": 2, "run_id": RUNS[2][1], "status": "failed", "counted": False,
                            "note": "not counted"}
    acc = d["metrics"]["acc"]
    assert acc["n"] == 5 and acc["best_seed"] == 5 and acc["ci95"][0] is None  # -inf half-width: null, not NaN
    assert [v["run_id"] for v in acc["values"]] == [RUNS[0][1], RUNS[1][1], RUNS[4][1], "r5", "r6"]
    assert d["metrics"]["loss"]["excluded"] == [{"seed": 1, "run_id": RUNS[1][1], "why": "NaN"}]
    assert json.loads(text)["metrics"]["loss"]["mean"] == pytest.approx(0.25)


def test_report_mean_equals_mean_of_the_runs():
    d = to_dict(summarize(RUNS))
    per_run = [m["acc"] for _, _, status, m in RUNS if status == "succeeded" and m]
    assert d["metrics"]["acc"]["mean"] == pytest.approx(sum(per_run) / len(per_run), rel=1e-15)


def test_plot_is_a_png_with_one_panel_per_metric(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed: pip install 'envkit[plot]'")
    s = summarize(RUNS)
    out = plot(s, tmp_path / "sub" / "plot.png", title="sweep S")
    assert out == tmp_path / "sub" / "plot.png"
    width, height = png_size(out.read_bytes())
    assert (width, height) == (3 * 460, 400)  # three metrics side by side, one row, at 100 dpi
    assert [p.name for p in out.parent.iterdir()] == ["plot.png"]  # no temp file left behind
    assert plot(summarize([(0, "r0", "succeeded", None)]), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_plot_without_matplotlib_is_one_line_with_the_pip_hint(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SweepError) as err:
        plot(summarize(RUNS), tmp_path / "plot.png")
    assert "needs matplotlib" in err.value.message and "envkit[plot]" in err.value.hint
    assert "envkit[plot]" in plot_unavailable()
    assert "mean" in render_text(summarize(RUNS))  # the text report still works
    assert not (tmp_path / "plot.png").exists()


def test_comparison_text_and_json():
    a = summarize([(i, f"a{i}", "succeeded", {"acc": v, "only_a": 1}) for i, v in enumerate([0.90, 0.91, 0.89])])
    b = summarize([(i, f"b{i}", "succeeded", {"acc": v}) for i, v in enumerate([0.95, 0.96, 0.94])])
    c = compare(a, b)
    text = render_comparison_text(c, "S1", "S2")
    assert text.splitlines()[0] == "S1 vs S2: Welch's t-test (two-sided, alpha 0.05)"
    assert "larger than the seed noise" in text and "only in S1: only_a" in text
    d = comparison_to_dict(c, "S1", "S2")
    json.dumps(d, allow_nan=False)
    assert d["method"] == "Welch's t-test (two-sided, alpha 0.05)"
    assert d["metrics"]["acc"]["verdict"] == "larger than the seed noise" and d["only_in_a"] == ["only_a"]
    assert d["metrics"]["acc"]["difference"] == pytest.approx(0.05)
