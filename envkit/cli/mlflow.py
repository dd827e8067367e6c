"""`envkit mlflow export RUN_ID`: a run (a replay with its verdict) in the MLflow tracker the team already uses.

Registered by ``envkit/cli/commands.py`` with ``app.add_typer(mlflow_app, name="mlflow")``. The MLflow client is
imported only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from envkit.cli._console import err_console, print_json

if TYPE_CHECKING:
    from envkit.store.filestore import FileStore
    from envkit.tracking.mlflow import ExportResult

mlflow_app = typer.Typer(name="mlflow", help="Export runs to an MLflow tracking server.", no_args_is_help=True,
                         add_completion=False, rich_markup_mode=None)


@mlflow_app.callback()
def _group() -> None:
    """Export runs to an MLflow tracking server (the tracker keeps them; envkit replays them)."""
    # A callback makes `mlflow` a group even with one command, alone (tests) or under the root app.


def _size(text: str) -> int:
    from envkit.tracking.content import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@mlflow_app.command("export")
def export_cmd(
    target: str = typer.Argument(..., metavar="RUN_ID", help="A run id from `envkit runs`."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", metavar="URI",
                                     help="The MLflow tracking server (default: $MLFLOW_TRACKING_URI)."),
    experiment: str = typer.Option(None, "--experiment", metavar="NAME",
                                   help="The MLflow experiment, made when missing (default: the project folder's "
                                        "name)."),
    artifact_limit: str = typer.Option("64M", "--artifact-limit", metavar="SIZE",
                                       help="Upload outputs and logs up to this size each (0: none; 512K, 1G)."),
    json_out: bool = typer.Option(False, "--json", help="Print where the run went as JSON."),
) -> None:
    """Export RUN_ID to MLflow: params, tags, metrics.json, record, lockfile, fingerprint and outputs.

    Exporting again updates the same MLflow run (found by its envkit.run_id tag). A replay becomes its own MLflow
    run, and its verdict a tag (envkit.replay.<id>) on the original's. The run store is never changed.
    """
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    limit = _size(artifact_limit)
    store = FileStore(store_dir())
    data = export_target(store, target, tracking_uri, experiment, limit, project=Path.cwd().name)
    if json_out:
        print_json(data)
        return
    for note in data.get("notes", []) + [n for part in ("original", "replay") for n in data.get(part, {})
                                         .get("notes", [])]:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    for part in ("original", "replay") if "replay" in data else (None,):
        row = data[part] if part else data
        how = "created" if row["created"] else "updated"
        typer.echo(f"{row['run_id']}: MLflow run {row['mlflow_run_id']} ({how}) {row['url'] or ''}".rstrip())
    if data.get("verdict"):
        typer.echo(f"verdict {data['verdict']} on the original's MLflow run")


def export_target(store: FileStore, target: str, tracking_uri: str | None, experiment: str | None,
                  artifact_limit_bytes: int, project: str | None) -> dict[str, Any]:
    """Export a run of ``store`` (a replay together with its original, when the original is in the store).

    Returns:
        What the command prints with --json: ``{run_id, mlflow_run_id, experiment_id, created, url, notes}``, or for
        a replay ``{original: {...}, replay: {...}, verdict}``.
    """
    from envkit.errors import RunNotFoundError
    from envkit.tracking.mlflow import export_replay_verdict, export_run

    # TODO(sweeps): once the store knows sweeps, a sweep id here goes to envkit.tracking.mlflow.export_sweep.
    record = store.read(target)
    run_dir = store.run_dir(record.run_id)
    if record.replay_of:
        try:
            original = store.read(record.replay_of)
        except RunNotFoundError:
            original = None  # replayed from an imported bundle whose original is elsewhere: export the replay alone
        if original is not None:
            result = export_replay_verdict(original, store.run_dir(original.run_id), record, run_dir, tracking_uri,
                                           experiment, artifact_limit_bytes, project=project)
            return {"original": _row(original.run_id, result.original), "replay": _row(record.run_id, result.replay),
                    "verdict": result.verdict}
    return _row(record.run_id, export_run(record, run_dir, tracking_uri, experiment, artifact_limit_bytes,
                                          project=project))


def export_after_run(store: FileStore, run_id: str, tracking_uri: str | None, experiment: str | None = None,
                     project: str | None = None) -> ExportResult | None:
    """For `envkit run --mlflow`: export the finished run; on tracker trouble say so once, on stderr, and go on.

    The run is recorded whatever the tracker does; the warning names the command that retries the export.
    """
    from envkit.errors import TrackerError
    from envkit.tracking.content import DEFAULT_ARTIFACT_LIMIT
    from envkit.tracking.mlflow import export_run

    record = store.read(run_id)
    try:
        result = export_run(record, store.run_dir(run_id), tracking_uri, experiment, DEFAULT_ARTIFACT_LIMIT,
                            project=project or Path.cwd().name)
    except TrackerError as exc:
        err_console.print(f"warning: the MLflow export failed: {exc.message}", highlight=False, markup=False)
        err_console.print(f"hint: {exc.hint or f'retry with `envkit mlflow export {run_id}`'}", highlight=False,
                          markup=False)
        return None
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    return result


def _row(run_id: str, result: ExportResult) -> dict[str, Any]:
    return {"run_id": run_id, **result.to_dict()}
