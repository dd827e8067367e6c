"""What an envkit run becomes in a tracker: params, tags, metrics, artifact files, status and times.

Pure: reads the record and files of the run folder, talks to no tracker. Everything the run folder holds is checked
before it is offered for upload: recorded paths must be plain relative paths, a file must lie inside the run folder
(no link leads out of it), and its size and sha256 must still be the recorded ones. What fails a check is left out
with a note, never uploaded and never fatal: the export says what it skipped.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from envkit.manifest import ManifestEntry
from envkit.replay import DIVERGED, FAILED, IDENTICAL
from envkit.store.layout import RunLayout, output_location, output_name
from envkit.store.record import RunRecord
from envkit.tracking.config import DEFAULT_ARTIFACT_LIMIT

METRICS_FILE = "metrics.json"
METRICS_FILE_LIMIT = 16 << 20  # a metrics.json past this is not a flat map of numbers
# MLflow's own limits (mlflow/utils/validation.py): longer values are refused, so they are cut here, with a note.
PARAM_MAX = 6000
TAG_MAX = 8000
NAME_MAX = 250
_METRIC_NAME = re.compile(r"[/\w.\- :]+")  # MLflow's rule for metric names on POSIX systems
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# envkit status -> MLflow run status
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "oom": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}
VERDICTS = (IDENTICAL, DIVERGED, FAILED)

# What a sweep's parent run shows of each metric's statistics (the report has more: values, seeds, notes).
_SWEEP_STATS = ("n", "mean", "std", "min", "max", "ci95_low", "ci95_high")

TAG_RUN_ID = "envkit.run_id"
TAG_SWEEP_ID = "envkit.sweep_id"
TAG_REPLAY_OF = "envkit.replay_of"
TAG_REPLAY_PREFIX = "envkit.replay."  # + replay run id, on the original's tracker run: the verdict
TAG_PARENT = "mlflow.parentRunId"


@dataclass(frozen=True)
class ArtifactFile:
    """A file of the run folder to upload, and the folder it goes to in the tracker run (None: the top)."""

    source: Path
    folder: str | None
    mutable: bool = False  # the record changes while a run goes on: uploaded on every export


@dataclass
class RunContent:
    """Everything a tracker run holds for one envkit run (or one sweep), ready to write."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    files: list[ArtifactFile] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> text written as a file
    status: str = "RUNNING"
    start_ms: int | None = None
    end_ms: int | None = None
    notes: list[str] = field(default_factory=list)


def run_content(record: RunRecord, run_dir: Path, artifact_limit_bytes: int = DEFAULT_ARTIFACT_LIMIT) -> RunContent:
    """The params, tags, metrics and artifacts of one run.

    Args:
        record: the run's record.
        run_dir: its folder in the store (``FileStore.run_dir``).
        artifact_limit_bytes: outputs and logs larger than this stay out of the tracker (0: none uploaded). The
            record, lockfile and fingerprint are always uploaded.
    """
    content = RunContent(name=record.run_id, status=STATUS[record.status],
                         start_ms=epoch_ms(record.started or record.created), end_ms=epoch_ms(record.finished))
    content.params = _cut(params(record), PARAM_MAX, "param", content.notes)
    content.tags = _cut(tags(record), TAG_MAX, "tag", content.notes)
    metrics, notes = read_metrics(record, run_dir)
    content.metrics = metrics
    content.notes += notes
    layout = RunLayout(run_dir)
    content.files = [ArtifactFile(layout.record, None, mutable=True)]
    if layout.lock.is_file():
        content.files.append(ArtifactFile(layout.lock, None))
    content.texts["fingerprint.json"] = json.dumps(record.to_dict()["fingerprint"], indent=2, sort_keys=True) + "\n"
    files, notes = artifact_files(record, run_dir, artifact_limit_bytes)
    content.files += files
    content.notes += notes
    return content


def params(record: RunRecord) -> dict[str, str]:
    """What the run was asked to do: seed, determinism level, threads, CPU profile, script and its args."""
    values: dict[str, Any] = {"seed": record.seed, "determinism": record.determinism, "threads": record.threads,
                              "cpu_profile": record.cpu_profile, "script": record.script,
                              "args": shlex.join(record.args)}
    return {k: str(v) for k, v in values.items() if v is not None}


def tags(record: RunRecord) -> dict[str, str]:
    """What the run is and ran on: ids and hashes to find and replay it, and the fingerprint's headline."""
    gpus = record.fingerprint.gpus
    devices = (gpus.get("devices") or []) if gpus.get("available") else []
    values: dict[str, Any] = {
        "mlflow.runName": record.run_id,
        TAG_RUN_ID: record.run_id,
        "envkit.status": record.status,
        "envkit.exit_code": record.exit_code,
        "envkit.image_id": record.image.id,
        "envkit.image_digest": record.image.digest,
        "envkit.image_ref": record.image.ref,
        "envkit.lock_sha256": record.lock.sha256 if record.lock else None,
        "envkit.lock_name": record.lock.name if record.lock else None,
        "envkit.code_sha256": record.code.sha256,
        "envkit.git_dirty": record.code.git_dirty,
        "mlflow.source.git.commit": record.code.git_commit,
        "mlflow.source.name": record.script,
        "envkit.host.cpu_model": record.fingerprint.host.get("cpu_model"),
        "envkit.host.cpu_vendor": record.fingerprint.host.get("cpu_vendor"),
        # Recorded absent GPUs say "none": a CPU run is a fact worth showing, not a gap.
        "envkit.gpu.names": ", ".join(str(d.get("name")) for d in devices) or ("none" if gpus else None),
        "envkit.gpu.driver": gpus.get("driver_version") if devices else None,
        TAG_REPLAY_OF: record.replay_of,
        "mlflow.note.content": _description(record),
    }
    if record.verdict and record.verdict.get("kind") in VERDICTS:
        values["envkit.verdict"] = record.verdict["kind"]
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items() if v is not None}


def replay_verdict(replay: RunRecord) -> str | None:
    """IDENTICAL, DIVERGED or FAILED for a finished replay; None while it runs."""
    kind = (replay.verdict or {}).get("kind")
    if kind in VERDICTS:
        return str(kind)
    return None if replay.status == "running" else FAILED


def read_metrics(record: RunRecord, run_dir: Path) -> tuple[dict[str, float], list[str]]:
    """The numbers of the run's ``metrics.json`` (an output, in ``$ENVKIT_OUTPUT_DIR`` or the working folder).

    Returns:
        ``{name: value}`` and notes on what was left out (not a number, a name MLflow refuses, a changed file).
    """
    entry, note = metrics_entry(record.outputs)
    if entry is None:
        return {}, [note] if note else []
    if entry.size > METRICS_FILE_LIMIT:
        return {}, [f"{entry.path} left out: {entry.size} bytes is too large for a map of metrics"]
    try:
        source = RunLayout(run_dir).output_path(entry.path)
    except ValueError:
        return {}, [f"{_shown(entry.path)} left out: not a plain relative path"]
    path, problem = checked_file(run_dir, source, entry.size, entry.sha256)
    if path is None:
        return {}, [f"{entry.path} left out: {problem}"]
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        return {}, [f"{entry.path} left out: not JSON ({exc})"]
    if not isinstance(data, dict):
        return {}, [f"{entry.path} left out: expected an object of name -> number, got {type(data).__name__}"]
    return numbers(data, entry.path)


def metrics_entry(outputs: Iterable[ManifestEntry]) -> tuple[ManifestEntry | None, str]:
    """The output that holds the run's metrics: ``$ENVKIT_OUTPUT_DIR/metrics.json``, else ``metrics.json`` in the
    working folder, else the one ``metrics.json`` nearest the top of either (``out/metrics.json``); None and a note
    when two are equally near."""
    found = [e for e in outputs if posixpath.basename(e.path) == METRICS_FILE and e.link is None]
    for preferred in (output_name(METRICS_FILE), METRICS_FILE):
        for entry in found:
            if entry.path == preferred:
                return entry, ""
    if not found:
        return None, ""
    depth = min(_depth(e.path) for e in found)
    nearest = [e for e in found if _depth(e.path) == depth]
    if len(nearest) > 1:
        return None, (f"no metrics taken: several {METRICS_FILE} outputs ({_names([e.path for e in nearest])}); "
                      f"write the run's metrics to $ENVKIT_OUTPUT_DIR/{METRICS_FILE}")
    return nearest[0], ""


def _depth(recorded: str) -> int:
    """How deep an output lies in its folder (``metrics.json``: 0, ``out/metrics.json``: 1)."""
    return recorded.removeprefix(output_name("")).count("/")


def numbers(values: Mapping[str, Any], where: str) -> tuple[dict[str, float], list[str]]:
    """The entries of ``values`` that MLflow takes as metrics, and a note per kind of entry left out."""
    metrics: dict[str, float] = {}
    not_numbers, bad_names = [], []
    for name, value in values.items():
        if not metric_name_ok(name):
            bad_names.append(name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)
        else:
            not_numbers.append(name)
    notes = []
    if not_numbers:
        notes.append(f"{where}: left out {len(not_numbers)} value(s) that are not numbers: {_names(not_numbers)}")
    if bad_names:
        notes.append(f"{where}: left out {len(bad_names)} name(s) MLflow refuses (letters, digits, _ - . : / and "
                     f"spaces only, no path tricks, at most {NAME_MAX} characters): {_names(bad_names)}")
    return metrics, notes


def metric_name_ok(name: str) -> bool:
    """Whether MLflow accepts ``name`` as a metric name (its rules, checked here so one bad name fails alone)."""
    norm = posixpath.normpath(name)
    return (0 < len(name) <= NAME_MAX and _METRIC_NAME.fullmatch(name) is not None and norm == name
            and not norm.startswith(("..", "/")) and norm != ".")


def artifact_files(record: RunRecord, run_dir: Path, limit: int) -> tuple[list[ArtifactFile], list[str]]:
    """The logs and outputs of a run that go to the tracker: checked, and at most ``limit`` bytes each.

    An output goes to the tracker folder named after the run folder's folder it lies in (``RunLayout``): one
    recorded as ``$ENVKIT_OUTPUT_DIR/x`` to ``output/x``, any other output ``p`` (in the working copy) to ``work/p``.
    """
    layout = RunLayout(run_dir)
    files: list[ArtifactFile] = []
    notes: list[str] = []
    too_large: list[str] = []
    # (name in notes, file, artifact folder, recorded size, recorded sha256)
    candidates: list[tuple[str, Path, str | None, int | None, str | None]] = [
        (path.name, path, None, None, None) for path in (layout.stdout_log, layout.stderr_log)]
    for entry in record.outputs:
        if entry.link is not None:
            notes.append(f"output {entry.path} left out: a symbolic link (to {entry.link})")
            continue
        try:
            rel, folder = output_location(entry.path)
        except ValueError:
            notes.append(f"{_shown(entry.path)} left out: not a plain relative path")
            continue
        if _CONTROL.search(rel):
            notes.append(f"{_shown(entry.path)} left out: a control character in its name (MLflow refuses those)")
            continue
        candidates.append((entry.path, layout.output_path(entry.path), posixpath.dirname(f"{folder}/{rel}"),
                           entry.size, entry.sha256))
    for name, source, folder, size, sha256 in candidates:
        if size is not None and size > limit:
            too_large.append(name)
            continue
        path, problem = checked_file(run_dir, source, size, sha256, limit=limit)
        if path is None:
            if problem == "too large":
                too_large.append(name)
            elif problem != "missing" or sha256 is not None:  # a run without a log is no news; a lost output is
                notes.append(f"{name} left out: {problem}")
            continue
        files.append(ArtifactFile(path, folder))
    if too_large:
        notes.append(f"left out {len(too_large)} file(s) over the artifact limit of {limit} bytes (--artifact-limit "
                     f"raises it): {_names(too_large)}")
    return files, notes


def checked_file(run_dir: Path, path: Path, size: int | None = None, sha256: str | None = None,
                 limit: int | None = None) -> tuple[Path | None, str]:
    """``path`` resolved, when it is a regular file inside the run folder (no link leads out of it), no larger than
    ``limit`` and, when given, of the recorded size and sha256; else None and why not.

    Args:
        run_dir: the run folder. path: a file of it (from ``RunLayout``).
        size: the recorded size. sha256: the recorded hash. limit: the largest size taken.
    """
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, RuntimeError) as exc:  # a link loop, a folder we may not read
        return None, f"unreadable ({exc})"
    if not real.is_relative_to(run_dir.resolve()) or not real.is_file():
        return None, "not a regular file inside the run folder"
    actual = real.stat().st_size
    if limit is not None and actual > limit:
        return None, "too large"
    if size is not None and actual != size:
        return None, f"changed since the run ({actual} bytes, {size} recorded)"
    if sha256 is not None:
        with open(real, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != sha256:
                return None, "changed since the run (sha256 differs from the record)"
    return real, ""


def sweep_content(sweep_id: str, records: Iterable[RunRecord], stats: Any) -> RunContent:
    """The parent run of a sweep: what its runs share as params, their seeds, and the statistics as metrics.

    Args:
        sweep_id: the sweep's id.
        records: the sweep's runs (one per seed).
        stats: the sweep's statistics, in a form :func:`sweep_statistics` reads; each number becomes the metric
            ``<metric>.<statistic>``.
    """
    records = list(records)
    content = RunContent(name=sweep_id, tags={"mlflow.runName": sweep_id, TAG_SWEEP_ID: sweep_id,
                                              "envkit.sweep.runs": str(len(records))})
    shared: dict[str, str] = {}
    for i, record in enumerate(records):
        p = params(record)
        p.pop("seed", None)
        shared = p if i == 0 else {k: v for k, v in shared.items() if p.get(k) == v}
    seeds = [str(r.seed) for r in records if r.seed is not None]
    content.params = _cut({**shared, "seeds": ",".join(seeds)}, PARAM_MAX, "param", content.notes)
    flat = {f"{metric}.{stat}": value for metric, by_stat in sweep_statistics(stats).items()
            for stat, value in by_stat.items()}
    content.metrics, notes = numbers(flat, f"sweep {sweep_id} statistics")
    content.notes += notes
    statuses = {r.status for r in records}
    for status in ("running", "failed", "oom", "interrupted", "succeeded"):  # the worst one names the sweep
        if status in statuses:
            content.status = STATUS[status]
            break
    starts = [m for r in records if (m := epoch_ms(r.started or r.created)) is not None]
    ends = [m for r in records if (m := epoch_ms(r.finished)) is not None]
    content.start_ms = min(starts, default=None)
    content.end_ms = max(ends, default=None) if "running" not in statuses else None
    return content


def sweep_statistics(stats: Any) -> dict[str, dict[str, Any]]:
    """``{metric: {statistic: value}}`` from a sweep's statistics: the sweep report's summary (an object whose
    ``metrics`` are summaries with ``name, n, mean, std, min, max, ci_low, ci_high``), its JSON form (``{"metrics":
    {name: {"n", "mean", ..., "ci95": [low, high]}}}``), or such a mapping of metrics itself. Statistics that do not
    exist (None: the deviation of one value) are left out.
    """
    if hasattr(stats, "metrics") and not isinstance(stats, Mapping):
        stats = {m.name: {"n": m.n, "mean": m.mean, "std": m.std, "min": m.min, "max": m.max,
                          "ci95_low": m.ci_low, "ci95_high": m.ci_high} for m in stats.metrics}
    elif isinstance(stats, Mapping) and isinstance(stats.get("metrics"), Mapping):
        stats = stats["metrics"]
    out: dict[str, dict[str, Any]] = {}
    for metric, by_stat in (stats or {}).items():
        if not isinstance(by_stat, Mapping):
            continue
        row = {}
        for stat, value in by_stat.items():
            if stat == "ci95" and isinstance(value, (list, tuple)) and len(value) == 2:
                row["ci95_low"], row["ci95_high"] = value
            elif stat in _SWEEP_STATS:
                row[stat] = value
        out[str(metric)] = {k: v for k, v in row.items() if v is not None}
    return out


def epoch_ms(stamp: str | None) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 time from a record (None when absent or unreadable)."""
    if not stamp:
        return None
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _description(record: RunRecord) -> str:
    """The run page's description (MLflow shows ``mlflow.note.content`` as Markdown)."""
    lines = [f"envkit run `{record.run_id}`: {record.status}"
             + (f", seed {record.seed}" if record.seed is not None else "") + "."]
    if record.replay_of:
        lines.append(f"Replay of `{record.replay_of}`"
                     + (f": **{record.verdict['kind']}**." if record.verdict and 'kind' in record.verdict else "."))
    lines.append(f"Replay it bit for bit: `envkit replay {record.run_id}`.")
    return "\n\n".join(lines)


def _cut(values: dict[str, str], limit: int, kind: str, notes: list[str]) -> dict[str, str]:
    for key, value in values.items():
        if len(value) > limit:
            values[key] = value[: limit - 3] + "..."
            notes.append(f"{kind} {key} cut to MLflow's limit of {limit} characters")
    return values


def _shown(path: str) -> str:
    """A recorded path for a note: as it is, or quoted when it holds control characters (a note is one line)."""
    text = repr(path) if _CONTROL.search(path) else path
    return text if len(text) <= 200 else text[:197] + "..."


def _names(names: list[str], shown: int = 5) -> str:
    text = ", ".join(_shown(n) if isinstance(n, str) else repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")
