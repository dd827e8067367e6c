"""`envkit mlflow export RUN_ID|SWEEP_ID`, and the exports that `envkit run --mlflow` and `envkit replay` make when
they are done.

Importing this module is cheap (Typer and the tracking configuration): MLflow's client is imported only when an
export runs, so `envkit run` without ``--mlflow`` never pays the seconds it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.settings import debug_enabled
from envkit.sizes import parse_size
from envkit.tracking.config import MLFLOW_OPTION_HELP, Tracking, preflight, tracking  # noqa: F401

if TYPE_CHECKING:
    from pathlib import Path

    from envkit.replay import ReplayResult
    from envkit.store.filestore import FileStore
    from envkit.store.record import RunRecord
    from envkit.tracking.mlflow import ExportResult

mlflow_app = typer.Typer(name="mlflow", help="Export runs to an MLflow tracking server.", no_args_is_help=True,
                         add_completion=False, rich_markup_mode=None)
app.add_typer(mlflow_app, name="mlflow")



@mlflow_app.callback()
def _group() -> None:
    """Export runs to an MLflow tracking server (the tracker keeps them; envkit replays them)."""
    # A callback makes `mlflow` a group even with one command.


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@mlflow_app.command("export")
def export_cmd(
    target: str = typer.Argument(..., metavar="RUN_ID|SWEEP_ID", help="A run id from `envkit runs`, or a sweep's id."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", metavar="URI",
                                     help="The MLflow tracking server (default: $MLFLOW_TRACKING_URI, then the "
                                          "project's mlflow setting)."),
    experiment: str = typer.Option(None, "--experiment", metavar="NAME",
                                   help="The MLflow experiment, made when missing (default: the project's setting, "
                                        "else the project folder's name)."),
    artifact_limit: str = typer.Option(None, "--artifact-limit", metavar="SIZE",
                                       help="Upload outputs and logs up to this size each (0: none; 512K, 1G; "
                                            "default 64M)."),
    json_out: bool = typer.Option(False, "--json", help="Print where the run went as JSON."),
) -> None:
    """Export RUN_ID to MLflow: params, tags, metrics.json, record, lockfile, fingerprint and outputs.

    Exporting again updates the same MLflow run (found by its envkit.run_id tag). A replay becomes its own MLflow
    run, and its verdict a tag (envkit.replay.<id>) on the original's. The run store is never changed.
    """
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    settings = tracking(tracking_uri, experiment, _size(artifact_limit))
    data = export_target(FileStore(store_dir()), target, settings)
    if json_out:
        print_json(data)
        return
    rows = [data[k] for k in ("original", "replay", "parent") if k in data] + data.get("runs", []) or [data]
    for row in rows:
        for note in row["notes"]:
            err_console.print(f"note: {note}", highlight=False, markup=False)
    for row in rows:
        how = "created" if row["created"] else "updated"
        name = row.get("run_id") or row["sweep_id"]
        typer.echo(f"{name}: MLflow run {row['mlflow_run_id']} ({how}) {row['url'] or ''}".rstrip())
    if data.get("verdict"):
        typer.echo(f"verdict {data['verdict']} on the original's MLflow run")


def export_target(store: FileStore, target: str, settings: Tracking) -> dict[str, Any]:
    """Export a run of ``store`` (a replay together with its original, when the original is in the store), or a
    sweep.

    Returns:
        What the command prints with --json: ``{run_id, mlflow_run_id, experiment_id, created, url, notes}``; for a
        replay ``{original: {...}, replay: {...}, verdict}``; for a sweep ``{parent: {...}, runs: [{...}]}``.
    """
    from envkit.errors import InvalidRunIdError, RunNotFoundError
    from envkit.tracking.mlflow import export_replay_verdict, export_run

    try:
        record = store.read(target)
    except (InvalidRunIdError, RunNotFoundError):
        return export_sweep_target(store, target, settings)
    run_dir = store.run_dir(record.run_id)
    if record.replay_of:
        try:
            original = store.read(record.replay_of)
        except RunNotFoundError:
            original = None  # replayed from an imported bundle whose original is elsewhere: export the replay alone
        if original is not None:
            result = export_replay_verdict(original, store.run_dir(original.run_id), record, run_dir,
                                           settings.tracking_uri, settings.experiment, settings.artifact_limit)
            return {"original": _row(original.run_id, result.original), "replay": _row(record.run_id, result.replay),
                    "verdict": result.verdict}
    return _row(record.run_id, export_run(record, run_dir, settings.tracking_uri, settings.experiment,
                                          settings.artifact_limit))


def export_sweep_target(store: FileStore, sweep_id: str, settings: Tracking) -> dict[str, Any]:
    """Export the sweep ``sweep_id`` (see :func:`sweep_rows`), read by :func:`envkit.sweep.workflow.load_sweep`.

    Raises:
        RunNotFoundError: neither a run nor a sweep of this store has that id.
    """
    from envkit.errors import RunNotFoundError, SweepError, SweepNotFoundError
    from envkit.sweep.workflow import load_sweep

    try:
        _, runs, stats = load_sweep(store, sweep_id)
    except (SweepError, SweepNotFoundError):
        shown = sweep_id if len(sweep_id) <= 60 else sweep_id[:57] + "..."
        raise RunNotFoundError(f"no run or sweep {shown!r} in this store",
                               hint="list them with `envkit runs` and `envkit sweeps`") from None
    return sweep_rows(sweep_id, runs, stats, settings)


def sweep_rows(sweep_id: str, runs: list[tuple[RunRecord, Path]], stats: Any, settings: Tracking) -> dict[str, Any]:
    """Export a sweep: a parent MLflow run with the report's statistics, one nested run per seed.

    Returns:
        What the command prints with --json: ``{parent: {sweep_id, mlflow_run_id, ...}, runs: [{run_id, ...}]}``.
    """
    from envkit.tracking.mlflow import export_sweep

    result = export_sweep(sweep_id, runs, stats, settings.tracking_uri, settings.experiment, settings.artifact_limit)
    return {"parent": {"sweep_id": sweep_id, **result.parent.to_dict()},
            "runs": [_row(record.run_id, row) for (record, _), row in zip(runs, result.runs, strict=True)]}


# --- after `envkit run --mlflow` and `envkit replay` ----------------------------------------------------------------
def mlflow_settings(uri: str | None, auto: bool = False) -> Tracking | None:
    """The tracker a run or replay exports to, checked before the job starts; None when no export is due.

    Args:
        uri: the ``--mlflow`` value: None when not given, "" for ``--mlflow`` alone (the configured URI).
        auto: export without ``--mlflow`` too when a URI is configured (``$MLFLOW_TRACKING_URI`` or the project's
            setting), as replays do; a tracker that cannot be used is then one warning, not an error.

    Raises:
        TrackerError: ``--mlflow`` given, but no URI, a URI that is not a server's, or no MLflow client.
        ProjectConfigError: the project's configuration is malformed.
    """
    from envkit.errors import TrackerError

    if uri is None and not auto:
        return None  # not even the project's configuration is read
    settings = tracking(uri or None)
    if uri is None and settings.tracking_uri is None:
        return None
    try:
        preflight(settings)
    except TrackerError as exc:
        if uri is not None:
            raise
        err_console.print(f"warning: no MLflow export ({exc.message}; from {settings.source})", highlight=False,
                          markup=False)
        return None
    return settings


def export_after_run(store: FileStore, record: RunRecord, settings: Tracking) -> dict[str, Any] | None:
    """For `envkit run --mlflow`: export the recorded run; on any trouble say so once, on stderr, and go on.

    Returns:
        ``{run_id, mlflow_run_id, experiment_id, created, url, notes}``, or None when the export failed.
    """
    from envkit.tracking.mlflow import export_run

    def export() -> dict[str, Any]:
        return _row(record.run_id, export_run(record, store.run_dir(record.run_id), settings.tracking_uri,
                                              settings.experiment, settings.artifact_limit))

    return _after(record.run_id, export, lambda data: f"exported to MLflow: {_page(data)}")


def export_after_replay(store: FileStore, result: ReplayResult, settings: Tracking) -> dict[str, Any] | None:
    """For `envkit replay`: the replay as its own MLflow run, linked to the original's, and its verdict on the
    original's; on any trouble say so once, and go on.

    Returns:
        ``{original: {...}, replay: {...}, verdict}``, or None when the export failed.
    """
    from envkit.tracking.mlflow import export_replay_verdict

    original, replay = result.original, result.record

    def export() -> dict[str, Any]:
        done = export_replay_verdict(original, store.run_dir(original.run_id), replay, store.run_dir(replay.run_id),
                                     settings.tracking_uri, settings.experiment, settings.artifact_limit)
        return {"original": _row(original.run_id, done.original), "replay": _row(replay.run_id, done.replay),
                "verdict": done.verdict}

    def said(data: dict[str, Any]) -> str:
        verdict = f"verdict {data['verdict']} on" if data["verdict"] else "no verdict yet on"
        return f"exported to MLflow: {verdict} {_page(data['original'])}; the replay: {_page(data['replay'])}"

    return _after(replay.run_id, export, said)


def _after(run_id: str, export: Callable[[], dict[str, Any]], said: Callable[[dict[str, Any]], str]
           ) -> dict[str, Any] | None:
    """Run ``export`` and show its notes and pages; whatever goes wrong is one warning with the command that retries
    it, never an error: the run is recorded and the exit code stays the job's (or the verdict's)."""
    from envkit.errors import EnvkitError

    try:
        data = export()
    except EnvkitError as exc:
        why = exc.message
    except KeyboardInterrupt:
        why = "interrupted"
    except Exception as exc:  # a tracker client's surprise must not fail a run that is recorded
        if debug_enabled():
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    else:
        for row in [data[k] for k in ("original", "replay") if k in data] or [data]:
            for note in row["notes"]:
                err_console.print(f"note: {note}", highlight=False, markup=False)
        err_console.print(said(data), highlight=False, markup=False)
        return data
    err_console.print(f"warning: the MLflow export failed ({why}); the run is recorded; retry with "
                      f"`envkit mlflow export {run_id}`", highlight=False, markup=False)
    return None


def _page(row: dict[str, Any]) -> str:
    return row["url"] or f"MLflow run {row['mlflow_run_id']}"


def _row(run_id: str, result: ExportResult) -> dict[str, Any]:
    return {"run_id": run_id, **result.to_dict()}
