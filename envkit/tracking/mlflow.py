"""Runs, replays and sweeps exported to MLflow through its own client (``mlflow.tracking.MlflowClient``).

An export is idempotent: the MLflow run of an envkit run is found by its ``envkit.run_id`` tag (a sweep's parent by
``envkit.sweep_id``) and updated, never duplicated. Only what differs is written: missing params (MLflow never
changes a param once logged; a differing one is reported), changed tags and metrics, missing artifacts.

Tracker trouble is not the run's trouble: nothing here writes to the run store, and every failure of the tracker
(unreachable, bad URI, refused name, missing client) is one :class:`~envkit.errors.TrackerError` whose hint says how
to retry. MLflow's client retries HTTP for minutes by default; envkit's calls get tight bounds (:data:`HTTP_BOUNDS`)
unless the user set those variables, so an unreachable tracker costs seconds.

``mlflow`` is imported only inside the functions: importing this module costs envkit's start-up nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import TrackerError
from envkit.store.record import RunRecord
from envkit.tracking.config import (
    DEFAULT_ARTIFACT_LIMIT,
    ENV_TRACKING_URI,
    INSTALL_HINT,
    default_experiment,
    resolve_tracking_uri,
)
from envkit.tracking.content import (
    TAG_PARENT,
    TAG_REPLAY_OF,
    TAG_REPLAY_PREFIX,
    TAG_RUN_ID,
    TAG_SWEEP_ID,
    RunContent,
    replay_verdict,
    run_content,
    sweep_content,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# MLflow reads these on every request. Its defaults (7 retries with exponential backoff, 120 s timeout) make an
# unreachable tracker cost minutes; envkit's exports fail in seconds instead. A variable the user set wins.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    # set_terminated prints "View run ... at: URL" on stdout, which is envkit's data channel.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# An upload waits for the server to store the file (in S3, say) before it answers: 5 s would fail a large output on
# a slow store. Uploads come after API calls the server answered, so a hung server is already caught by then.
UPLOAD_TIMEOUT = "120"  # MLflow's own default
_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_BATCH = 100  # MLflow takes at most 100 params and tags, and 1000 values in all, per log_batch
_SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass
class ExportResult:
    """Where an export went: the MLflow run (made now or found), its experiment, and its page."""

    mlflow_run_id: str
    experiment_id: str
    created: bool
    url: str | None
    notes: list[str] = field(default_factory=list)  # what was left out or could not be changed, one line each

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReplayExportResult:
    """The replay's own MLflow run, the original's, and the verdict written on the original."""

    original: ExportResult
    replay: ExportResult
    verdict: str | None


@dataclass
class SweepExportResult:
    """The sweep's parent MLflow run and one nested run per seed."""

    parent: ExportResult
    runs: list[ExportResult]


def export_run(record: RunRecord, run_dir: Path, tracking_uri: str | None = None, experiment: str | None = None,
               artifact_limit_bytes: int = DEFAULT_ARTIFACT_LIMIT, parent_run_id: str | None = None) -> ExportResult:
    """Create or update the MLflow run of one envkit run.

    Args:
        record: the run's record. run_dir: its run folder (``FileStore.run_dir``).
        tracking_uri: the tracker; default ``$MLFLOW_TRACKING_URI``.
        experiment: the MLflow experiment (made when missing); default: the project folder's name.
        artifact_limit_bytes: outputs and logs larger than this are not uploaded (noted).
        parent_run_id: an MLflow run to nest this one under (``mlflow.parentRunId``).

    Raises:
        TrackerError: the tracker is unreachable or refused the export, or MLflow's client is not installed.
    """
    content = run_content(record, run_dir, artifact_limit_bytes)
    with _tracker(tracking_uri, record.run_id) as (client, uri):
        experiment_id = _experiment(client, experiment or default_experiment(), uri)
        return _write(client, uri, experiment_id, TAG_RUN_ID, record.run_id, content, parent_run_id)


def export_replay_verdict(original: RunRecord, original_dir: Path, replay: RunRecord, replay_dir: Path,
                          tracking_uri: str | None = None, experiment: str | None = None,
                          artifact_limit_bytes: int = DEFAULT_ARTIFACT_LIMIT) -> ReplayExportResult:
    """Export a replay as its own MLflow run, linked to the original's, and write its verdict on the original's.

    The original's MLflow run gets the tag ``envkit.replay.<replay id>`` = IDENTICAL, DIVERGED or FAILED (made
    first when the original was never exported); the replay's run gets ``envkit.replay_of`` (the original's envkit
    run id) and ``envkit.replay_of.mlflow_run_id``. A replay still running gets no verdict yet (noted).

    Raises:
        ValueError: ``replay`` is not a replay of ``original``.
        TrackerError: as :func:`export_run`.
    """
    if replay.replay_of != original.run_id:
        raise ValueError(f"run {replay.run_id} is not a replay of {original.run_id}")
    verdict = replay_verdict(replay)
    original_content = run_content(original, original_dir, artifact_limit_bytes)
    replay_content = run_content(replay, replay_dir, artifact_limit_bytes)
    with _tracker(tracking_uri, replay.run_id) as (client, uri):
        experiment_id = _experiment(client, experiment or default_experiment(), uri)
        found = _find(client, experiment_id, TAG_RUN_ID, original.run_id)
        if found is None:
            first = _write(client, uri, experiment_id, TAG_RUN_ID, original.run_id, original_content, None)
        else:
            first = ExportResult(found.info.run_id, experiment_id, False, _url(uri, experiment_id, found.info.run_id))
        replay_content.tags[TAG_REPLAY_OF] = original.run_id
        replay_content.tags[TAG_REPLAY_OF + ".mlflow_run_id"] = first.mlflow_run_id
        second = _write(client, uri, experiment_id, TAG_RUN_ID, replay.run_id, replay_content, None)
        if verdict is None:
            second.notes.append(f"replay {replay.run_id} is still running: no verdict on {original.run_id} yet")
        else:
            client.set_tag(first.mlflow_run_id, TAG_REPLAY_PREFIX + replay.run_id, verdict)
    return ReplayExportResult(first, second, verdict)


def export_sweep(sweep_id: str, runs: Sequence[tuple[RunRecord, Path]], stats: Any,
                 tracking_uri: str | None = None, experiment: str | None = None,
                 artifact_limit_bytes: int = DEFAULT_ARTIFACT_LIMIT) -> SweepExportResult:
    """Export a sweep: a parent MLflow run (tag ``envkit.sweep_id``) with the statistics as metrics, and one nested
    run per seed (tag ``mlflow.parentRunId``).

    Args:
        sweep_id: the sweep's id (letters, digits, ``. _ : -``).
        runs: each run of the sweep as (record, run folder).
        stats: the sweep report's statistics (its summary, its JSON form, or ``{metric: {"n", "mean", "std",
            "min", "max", "ci95_low", "ci95_high": number}}``; :func:`~envkit.tracking.content.sweep_statistics`);
            each becomes the parent's metric ``<metric>.<statistic>``.
        tracking_uri, experiment, artifact_limit_bytes: as :func:`export_run`.

    Raises:
        ValueError: a malformed sweep id.
        TrackerError: as :func:`export_run`.
    """
    if not isinstance(sweep_id, str) or not _SWEEP_ID.fullmatch(sweep_id):  # it goes into a search filter
        raise ValueError(f"malformed sweep id {sweep_id!r:.80} (letters, digits and . _ : - only)")
    parent_content = sweep_content(sweep_id, [record for record, _ in runs], stats)
    contents = [(record.run_id, run_content(record, run_dir, artifact_limit_bytes)) for record, run_dir in runs]
    with _tracker(tracking_uri, sweep_id) as (client, uri):
        experiment_id = _experiment(client, experiment or default_experiment(), uri)
        parent = _write(client, uri, experiment_id, TAG_SWEEP_ID, sweep_id, parent_content, None)
        children = [_write(client, uri, experiment_id, TAG_RUN_ID, run_id, content, parent.mlflow_run_id)
                    for run_id, content in contents]
    return SweepExportResult(parent, children)


# --- the client and its errors -----------------------------------------------------------------------------------
@contextmanager
def _tracker(tracking_uri: str | None, retry_id: str) -> Iterator[tuple[MlflowClient, str]]:
    """MLflow's client for ``tracking_uri``, with bounded retries and quiet logs; its failures as TrackerError."""
    uri = resolve_tracking_uri(tracking_uri)
    retry = f"fix the tracker, then retry with `envkit mlflow export {retry_id}`"
    try:
        import requests  # MLflow's HTTP client; artifact uploads can let its errors through
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackerError(f"MLflow export needs MLflow's client, which is not installed ({exc.name} is missing)",
                           hint=INSTALL_HINT) from None
    with _client_environment(uri), _quiet_logs():
        try:
            yield MlflowClient(tracking_uri=uri), uri
        except (MlflowException, requests.RequestException, OSError) as exc:
            raise tracker_error(exc, uri, retry) from exc


def tracker_error(exc: BaseException, uri: str, hint: str) -> TrackerError:
    """One line for what went wrong with the tracker at ``uri`` (MLflow's messages run to several hundred
    characters of URL and urllib3 repr)."""
    text = str(exc)
    reason = next((why for pattern, why in _UNREACHABLE if pattern in text), None)
    if reason:
        return TrackerError(f"cannot reach the MLflow tracker at {uri}: {reason}",
                            hint=f"is the tracker running there? Check --tracking-uri / {ENV_TRACKING_URI}; {hint}")
    if status := _HTTP_STATUS.search(text):
        code = int(status.group(1))
        what = {401: "asks for credentials (MLFLOW_TRACKING_USERNAME / _PASSWORD or MLFLOW_TRACKING_TOKEN)",
                403: "refused access to these credentials",
                404: "has no MLflow API there (is it an MLflow tracking server, at this path?)"}.get(code)
        if what:
            return TrackerError(f"the MLflow tracker at {uri} {what} (HTTP {code})", hint=hint)
    if "unsupported uri" in text.lower():
        return TrackerError(f"MLflow cannot use the tracking URI {uri!r}", hint=hint)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if len(first) > 200:
        first = first[:197] + "..."
    return TrackerError(f"the MLflow tracker at {uri} refused the export: {first}", hint=hint)


# (text in MLflow's or requests' message, what it means), most precise first: "Max retries exceeded" wraps the rest.
_UNREACHABLE = [
    ("Connection refused", "connection refused"),
    ("Name or service not known", "unknown host name"),
    ("Temporary failure in name resolution", "host name cannot be resolved now"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("timed out", "timed out"),
    ("Connection reset by peer", "connection reset"),
    ("Connection aborted", "connection aborted"),
    ("Remote end closed connection", "the server closed the connection"),
    ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
    ("SSL", "the TLS handshake failed (https:// to a plain http:// server?)"),
    ("Max retries exceeded", "no answer"),
]
_HTTP_STATUS = re.compile(r"error code (\d{3}) != 200")


@contextmanager
def _client_environment(uri: str) -> Iterator[None]:
    """HTTP_BOUNDS (where the user set none) and MLFLOW_TRACKING_URI = ``uri`` while envkit's calls run.

    The URI too: MLflow clients before 3.0 upload proxied artifacts (``mlflow-artifacts:``) to the process-wide
    tracking URI rather than the client's own.
    """
    saved = {name: os.environ.get(name) for name in (*HTTP_BOUNDS, ENV_TRACKING_URI)}
    global _timeout_is_ours
    _timeout_is_ours = _TIMEOUT not in os.environ
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)
    os.environ[ENV_TRACKING_URI] = uri
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _quiet_logs() -> Iterator[None]:
    # urllib3 logs each retry as a WARNING, which Python's last-resort handler prints to stderr; the error says it.
    loggers = [logging.getLogger(n) for n in ("urllib3.connectionpool", "urllib3.util.retry", "mlflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --- writing one run ---------------------------------------------------------------------------------------------
def _experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of the experiment ``name``, made when missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            # Its kind makes MLflow's UI open it in the model-training view, not the GenAI one.
            return str(client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"}))
        except MlflowException as exc:
            experiment = client.get_experiment_by_name(name)  # made meanwhile by another export
            if experiment is None:
                raise TrackerError(f"the MLflow tracker at {uri} refused to make the experiment {name!r}: "
                                   f"{str(exc).splitlines()[0][:200]}", hint="pass another --experiment NAME") from exc
    if experiment.lifecycle_stage != "active":
        raise TrackerError(f"the MLflow experiment {name!r} is deleted",
                           hint=f"restore it (mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                                "or pass another --experiment NAME")
    return str(experiment.experiment_id)


def _find(client: MlflowClient, experiment_id: str, tag: str, value: str) -> Run | None:
    """The (oldest) active MLflow run whose ``tag`` is ``value`` (ids are validated: nothing to quote)."""
    from mlflow.entities import ViewType

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=2,
                              order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _write(client: MlflowClient, uri: str, experiment_id: str, key_tag: str, key: str, content: RunContent,
           parent_run_id: str | None) -> ExportResult:
    """Create or update the MLflow run tagged ``key_tag`` = ``key`` so that it holds ``content``."""
    from mlflow.entities import Metric, Param, RunTag

    tags = dict(content.tags)
    if parent_run_id:
        tags[TAG_PARENT] = parent_run_id
    run = _find(client, experiment_id, key_tag, key)
    created = run is None
    if run is None:
        run = client.create_run(experiment_id, start_time=content.start_ms, tags=tags, run_name=content.name)
    run_id = run.info.run_id
    result = ExportResult(run_id, experiment_id, created, _url(uri, experiment_id, run_id), list(content.notes))
    have = run.data
    params = [Param(k, v) for k, v in content.params.items() if k not in have.params]
    result.notes += [f"param {k} stays {have.params[k]!r} in MLflow (the record says {v!r}; MLflow never changes a "
                     f"logged param)" for k, v in content.params.items() if have.params.get(k, v) != v]
    new_tags = [RunTag(k, v) for k, v in tags.items() if have.tags.get(k) != v]
    stamp = content.end_ms or content.start_ms or 0
    metrics = [Metric(k, v, stamp, 0) for k, v in content.metrics.items() if not _same(have.metrics.get(k), v)]
    for i in range(0, len(params), _BATCH):
        client.log_batch(run_id, params=params[i:i + _BATCH])
    for i in range(0, len(new_tags), _BATCH):
        client.log_batch(run_id, tags=new_tags[i:i + _BATCH])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    _upload(client, run_id, content, fresh=created)
    end = content.end_ms if content.status != "RUNNING" else None
    if run.info.status != content.status or (end is not None and run.info.end_time != end):
        if content.status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=content.status, end_time=end)
    return result


def _same(logged: float | None, value: float) -> bool:
    # NaN is a value a job may report (a diverged loss); it must not be logged again on every export.
    return logged == value or (logged is not None and math.isnan(logged) and math.isnan(value))


_timeout_is_ours = False  # HTTP_BOUNDS' timeout is in force (the user set none): uploads get UPLOAD_TIMEOUT


@contextmanager
def _patient() -> Iterator[None]:
    """UPLOAD_TIMEOUT instead of HTTP_BOUNDS' timeout, unless the user set one (MLflow reads it per request)."""
    if not _timeout_is_ours:
        yield
        return
    os.environ[_TIMEOUT] = UPLOAD_TIMEOUT
    try:
        yield
    finally:
        os.environ[_TIMEOUT] = HTTP_BOUNDS[_TIMEOUT]


def _upload(client: MlflowClient, run_id: str, content: RunContent, fresh: bool) -> None:
    """Upload the artifacts the MLflow run lacks. An artifact of the same path and size is the same file: outputs,
    logs and the lockfile never change after a run, and outputs are checked against the record before upload; the
    record itself (small, and rewritten while a run goes on) is uploaded every time."""
    listed: dict[str | None, dict[str, int | None]] = {}

    def present(folder: str | None) -> dict[str, int | None]:
        if fresh:
            return {}
        if folder not in listed:
            listed[folder] = {info.path: info.file_size for info in client.list_artifacts(run_id, folder)}
        return listed[folder]

    for f in content.files:
        path = f"{f.folder}/{f.source.name}" if f.folder else f.source.name
        if f.mutable or present(f.folder).get(path) != f.source.stat().st_size:
            with _patient():
                client.log_artifact(run_id, str(f.source), f.folder)
    for path, text in content.texts.items():
        folder = path.rpartition("/")[0] or None
        if present(folder).get(path) != len(text.encode()):
            client.log_text(run_id, text, path)


def _url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in MLflow's UI (served by HTTP trackers only)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
