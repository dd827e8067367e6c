"""The sweep report: a text table, a JSON-ready dict and a PNG plot of a :class:`~envkit.sweep.stats.SweepSummary`,
and the text and dict of a :class:`~envkit.sweep.stats.Comparison`.

Pure but for the plot, which imports matplotlib (the optional extra ``envkit[plot]``) only when called: without it,
:func:`plot` raises one :class:`SweepError` with the pip line, and the text and JSON reports work as before.

Metric names come from the job's metrics.json, so they are shown escaped (no control characters reach the terminal)
and cut to a width in the table; the JSON keeps them whole. Non-finite numbers become ``null`` in the JSON (JSON has
no NaN), and the notes say why.
"""

from __future__ import annotations

import math
from pathlib import Path

from envkit.atomic import atomic_output
from envkit.errors import SweepError
from envkit.sweep.stats import CONFIDENCE, Comparison, MetricSummary, SweepSummary

MAX_PLOTTED = 24  # metrics per figure: beyond this a figure is unreadable; the rest are named on it
MAX_LISTED_RUNS = 50  # the text lists every run up to this many, then only those with a note
_NAME_WIDTH = 32
PLOT_HINT = "pip install 'envkit[plot]' (matplotlib); the text and --json reports do not need it"


def render_text(summary: SweepSummary, title: str | None = None) -> str:
    """The report as a plain-text table, one row per metric, then the runs and the notes."""
    pct = f"{CONFIDENCE:.0%}"
    header = ["metric", "n", "mean", "std", f"{pct} CI of the mean", "min", "max", "best seed", "worst seed"]
    rows = [
        [_name(m.name), str(m.n), _num(m.mean), _num(m.std), _interval(m.ci_low, m.ci_high), _num(m.min), _num(m.max),
         _seed(m.best_seed), _seed(m.worst_seed)]
        for m in summary.metrics
    ]
    lines = [title] if title else []
    lines += _table(header, rows) if rows else ["no metrics found"]
    for m in summary.metrics:
        for note in m.notes:
            lines.append(f"  {_name(m.name)}: {note}")
    counted = sum(r.counted for r in summary.runs)
    lines.append(f"runs: {len(summary.runs)} ({counted} counted)")
    listed = [r for r in summary.runs if len(summary.runs) <= MAX_LISTED_RUNS or r.note]
    lines += _table(["seed", "run", "status", "note"],
                    [[str(r.seed), _clean(r.run_id), _clean(r.status), _clean(r.note or "")] for r in listed], indent=2)
    lines += [f"note: {_clean(n)}" for n in summary.notes]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def to_dict(summary: SweepSummary, sweep_id: str | None = None, plot_path: Path | str | None = None) -> dict:
    """The report as a JSON-ready dict: every run id with its seed and status, per-metric statistics, the plot's path.

    ``json.dumps(to_dict(...), allow_nan=False)`` always works: non-finite numbers are null.
    """
    return {
        "sweep_id": sweep_id,
        "plot": None if plot_path is None else str(plot_path),
        "confidence": CONFIDENCE,
        "runs": [
            {"seed": r.seed, "run_id": r.run_id, "status": r.status, "counted": r.counted, "note": r.note}
            for r in summary.runs
        ],
        "metrics": {m.name: _metric_dict(m) for m in summary.metrics},
        "notes": list(summary.notes),
    }


def _metric_dict(m: MetricSummary) -> dict:
    return {
        "n": m.n, "mean": _finite(m.mean), "std": _finite(m.std), "min": _finite(m.min), "max": _finite(m.max),
        "ci95": None if m.ci_low is None else [_finite(m.ci_low), _finite(m.ci_high)],
        "goal": m.goal, "best_seed": m.best_seed, "worst_seed": m.worst_seed,
        "values": [{"seed": s, "run_id": r, "value": v} for s, r, v in m.values],
        "excluded": [{"seed": s, "run_id": r, "why": w} for s, r, w in m.excluded],
        "missing_seeds": list(m.missing),
        "notes": list(m.notes),
    }


def render_comparison_text(comparison: Comparison, name_a: str = "A", name_b: str = "B") -> str:
    """Two sweeps side by side, one row per shared metric, with the verdict and the method named."""
    header = ["metric", f"n {name_a}", f"n {name_b}", f"mean {name_a}", f"mean {name_b}", f"{name_b} - {name_a}",
              "95% CI of the difference", "t", "df", "p", "verdict"]
    rows = [
        [_name(c.name), str(c.n_a), str(c.n_b), _num(c.mean_a), _num(c.mean_b), _num(c.difference),
         _interval(c.ci_low, c.ci_high), _num(c.t, 3), _num(c.df, 3), _num(c.p, 3), c.verdict]
        for c in comparison.metrics
    ]
    lines = [f"{_clean(name_a)} vs {_clean(name_b)}: {comparison.method}"]
    lines += _table(header, rows) if rows else ["no shared metric to compare"]
    lines += [f"  {_name(c.name)}: {c.note}" for c in comparison.metrics if c.note]
    if comparison.only_in_a:
        lines.append(f"only in {_clean(name_a)}: {', '.join(map(_name, comparison.only_in_a))}")
    if comparison.only_in_b:
        lines.append(f"only in {_clean(name_b)}: {', '.join(map(_name, comparison.only_in_b))}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def comparison_to_dict(comparison: Comparison, sweep_a: str | None = None, sweep_b: str | None = None) -> dict:
    """The comparison as a JSON-ready dict (non-finite numbers are null; t is +-inf only with zero spread)."""
    return {
        "sweep_a": sweep_a, "sweep_b": sweep_b, "method": comparison.method,
        "metrics": {
            c.name: {"n_a": c.n_a, "n_b": c.n_b, "mean_a": _finite(c.mean_a), "mean_b": _finite(c.mean_b),
                     "difference": _finite(c.difference),
                     "ci95": None if c.ci_low is None else [_finite(c.ci_low), _finite(c.ci_high)],
                     "t": _finite(c.t), "df": _finite(c.df), "p": c.p, "verdict": c.verdict, "note": c.note}
            for c in comparison.metrics
        },
        "only_in_a": list(comparison.only_in_a), "only_in_b": list(comparison.only_in_b),
    }


def plot(summary: SweepSummary, path: Path | str, title: str | None = None) -> Path | None:
    """Write a PNG: one panel per metric, each seed's value, the mean and the 95 % interval of the mean.

    Returns:
        The path written, or None when no metric has a value (nothing to plot; the report says so).

    Raises:
        SweepError: matplotlib is not installed (with the pip line), or the file cannot be written.
    """
    metrics = [m for m in summary.metrics if m.n]
    if not metrics:
        return None
    figure_class = _figure_class()
    shown, left_out = metrics[:MAX_PLOTTED], metrics[MAX_PLOTTED:]
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = figure_class(figsize=(4.6 * ncols, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, m in zip(axes.flat, shown, strict=False):
        _panel(ax, m)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    heading = title or "sweep"
    if left_out:
        heading += f"\n({len(left_out)} more metrics not drawn: {', '.join(_name(m.name) for m in left_out[:5])}"
        heading += ", ...)" if len(left_out) > 5 else ")"
    fig.suptitle(heading)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target, durable=False) as fh:
            # No "Software" key: the same report gives the same bytes whatever matplotlib wrote it.
            fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    except OSError as exc:
        raise SweepError(f"cannot write the plot {target}: {exc.strerror or exc}") from exc
    return target


def plot_unavailable() -> str | None:
    """None when :func:`plot` can run, else the one line that says why not."""
    try:
        _figure_class()
    except SweepError as exc:
        return f"{exc.message}; {exc.hint}"
    return None


def _figure_class():
    try:
        from matplotlib.figure import Figure  # a Figure without pyplot: no GUI backend, no global state
    except ImportError as exc:
        raise SweepError(f"the plot needs matplotlib, which is not installed ({exc.name})", hint=PLOT_HINT) from exc
    return Figure


def _panel(ax, m: MetricSummary) -> None:
    xs = list(range(len(m.values)))
    ys = [v for _, _, v in m.values]
    if m.ci_low is not None and math.isfinite(m.ci_low) and math.isfinite(m.ci_high):
        ax.axhspan(m.ci_low, m.ci_high, color="tab:blue", alpha=0.15, label=f"{CONFIDENCE:.0%} CI of the mean")
    ax.axhline(m.mean, color="tab:blue", linewidth=1.5, label=f"mean {m.mean:.4g}")
    ax.plot(xs, ys, "o", color="tab:orange", label="one seed")
    best = next(i for i, (seed, _, _) in enumerate(m.values) if seed == m.best_seed)
    ax.plot([best], [ys[best]], "*", color="tab:green", markersize=12, label=f"best (seed {m.best_seed})")
    if len(xs) <= 30:
        ax.set_xticks(xs, [str(seed) for seed, _, _ in m.values], rotation=90 if len(xs) > 12 else 0)
        ax.set_xlabel("seed")
    else:  # too many to name: the JSON report maps each position to its seed and run
        ax.set_xlabel("run, in sweep order")
    std = "" if m.std is None else f", std {m.std:.3g}"
    ax.set_title(f"{_name(m.name)} (n={m.n}{std})", fontsize=10)
    ax.margins(x=0.08)
    ax.legend(fontsize=7, loc="best")


def _table(header: list[str], rows: list[list[str]], indent: int = 0) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    pad = " " * indent
    return [pad + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in (header, *rows)]


def _clean(text: str) -> str:
    """Text from a job or a record, safe on a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _name(name: str) -> str:
    name = _clean(name)
    return name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 3] + "..."


def _num(x: float | None, digits: int = 6) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def _interval(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None else f"[{_num(lo)}, {_num(hi)}]"


def _seed(seed: int | None) -> str:
    return "-" if seed is None else str(seed)


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None
