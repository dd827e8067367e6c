"""A run's metrics: the job's ``metrics.json``, a flat map of name to number, read once when the run ends.

Where the job writes it: ``$ENVKIT_OUTPUT_DIR/metrics.json`` (first choice) or ``metrics.json`` in its working
folder. Only a file the job itself wrote counts (it must be among the run's outputs): a ``metrics.json`` that is
part of the project's code and that the job left alone would report someone else's numbers.

Reading never fails a run. A file that is not JSON, not an object, too large, or a link gives no metrics and a note;
within a good file, a value that is not a finite number (a string, a boolean, a nested object, NaN, an infinity) is
left out with a note naming it. The record then holds ``metrics`` (name -> float) or None when there was no file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from envkit.manifest import ManifestEntry
from envkit.store.layout import RunLayout, output_name

METRICS_FILE = "metrics.json"
MAX_BYTES = 1 << 20  # a flat map of numbers; anything larger is not a metrics file
MAX_METRICS = 10_000
MAX_NAME = 200
_LISTED = 5  # names quoted in a note, then "..."


def metrics_paths() -> tuple[str, str]:
    """Where a job's metrics file is looked for, as recorded output paths, in order."""
    return output_name(METRICS_FILE), METRICS_FILE


def read_metrics(layout: RunLayout, outputs: Iterable[ManifestEntry]) -> tuple[dict[str, float] | None, list[str]]:
    """The run's metrics and notes on what was left out.

    Args:
        layout: the run's folder.
        outputs: the run's recorded outputs (only a metrics file among them is read).

    Returns:
        ``(metrics or None, notes)``; None when the job wrote no usable metrics file (the notes say why, unless it
        wrote none at all).
    """
    by_path = {e.path: e for e in outputs}
    found = [by_path[p] for p in metrics_paths() if p in by_path]
    if not found:
        return None, []
    entry = found[0]
    notes = [f"metrics: {found[1].path} ignored, {entry.path} is read"] if len(found) > 1 else []
    where = f"metrics: {entry.path}"
    if entry.link is not None:
        return None, [*notes, f"{where} is a link; not read"]
    if entry.size > MAX_BYTES:
        return None, [*notes, f"{where} is {entry.size} bytes, more than {MAX_BYTES}; not read"]
    try:
        data = json.loads(Path(layout.output_path(entry.path)).read_bytes())
    except (OSError, ValueError) as exc:
        return None, [*notes, f"{where} is not readable JSON ({type(exc).__name__}: {str(exc)[:120]})"]
    metrics, more = parse_metrics(data)
    return metrics, [*notes, *(f"{where}: {n}" for n in more)]


def parse_metrics(data: object) -> tuple[dict[str, float] | None, list[str]]:
    """A decoded metrics file as ``(name -> float, notes)``; None when it is not an object of names."""
    if not isinstance(data, dict):
        return None, [f"not an object of names to numbers (a JSON {type(data).__name__})"]
    metrics: dict[str, float] = {}
    left_out: dict[str, list[str]] = {}
    for name, value in data.items():
        why = _bad_name(name) or _bad_value(value)
        if why is None and len(metrics) >= MAX_METRICS:
            why = f"more than {MAX_METRICS} metrics"
        if why is not None:
            left_out.setdefault(why, []).append(name)
            continue
        metrics[name] = float(value)
    notes = []
    for why, names in left_out.items():
        shown = ", ".join(repr(n[:40]) for n in names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
        notes.append(f"{len(names)} value(s) left out, {why}: {shown}")
    return metrics, notes


def _bad_name(name: str) -> str | None:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        return f"names must be 1 to {MAX_NAME} printable characters"
    return None


def _bad_value(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a number"
    try:
        number = float(value)
    except OverflowError:
        return "too large for a float"
    return None if math.isfinite(number) else "not finite (NaN or infinity)"
