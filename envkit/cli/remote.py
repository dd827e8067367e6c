"""`envkit push RUN_ID REGISTRY/REPO` and `envkit pull REF`: runs through the registry the images already use."""

from __future__ import annotations

import contextlib

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import complete_run_id

MIB = 2**20
DEFAULT_MAX_OUTPUT_MB = 100


@app.command("push")
def push_cmd(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run to push: an id, a unique prefix, or last.",
                                 autocompletion=complete_run_id),
    registry_repo: str = typer.Argument(..., metavar="REGISTRY/REPO", help="Where to, e.g. 127.0.0.1:5000/team/runs."),
    max_output_mb: int = typer.Option(DEFAULT_MAX_OUTPUT_MB, "--max-output-mb", min=0,
                                      help="Outputs larger than this (MiB) stay behind, listed as not carried."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Push RUN_ID as an OCI artifact next to its image, and print REGISTRY/REPO@sha256:... .

    The artifact holds the record, code snapshot, lockfile, logs, bootstrap reports and traces, and the outputs up to
    --max-output-mb each. The image is pushed too when the registry does not hold it (its digest is then added to the
    run's record). Another host replays the run with `envkit replay REGISTRY/REPO@sha256:...`.
    """
    from envkit.cli._progress import transfer_bar
    from envkit.engine import connect
    from envkit.remote import push
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    run_id = store.resolve(run_id)  # an id, a unique prefix or `last`
    store.read(run_id)  # an unknown run is reported before the engine or the registry is asked anything
    show = not json_out and err_console.is_terminal
    with contextlib.ExitStack() as stack:
        current: list = [lambda _n, _total: None]

        def on_step(what: str, line: str) -> None:
            stack.close()  # the previous step's bar
            if not json_out:
                err_console.print(line, highlight=False)
            current[0] = stack.enter_context(transfer_bar(f"{what}", enabled=show, count_bytes=what == "run"))

        result = push(connect(), store, run_id, registry_repo, max_output_bytes=max_output_mb * MIB,
                      on_step=on_step, on_progress=lambda n, total: current[0](n, total))
    if json_out:
        print_json({"run_id": result.run_id, "ref": result.ref, "image": result.image,
                    "image_pushed": result.image_pushed, "not_carried": result.not_carried})
        return
    for entry in result.not_carried:
        err_console.print(f"not carried: {entry['path']} ({entry['size'] / MIB:.1f} MiB, over --max-output-mb "
                          f"{max_output_mb})", highlight=False)
    if result.image:
        err_console.print(f"image {result.image}" + ("" if result.image_pushed else " (already in the registry)"),
                          highlight=False)
    typer.echo(result.ref)


@app.command("pull")
def pull_cmd(
    source: str = typer.Argument(..., metavar="REF", help="REGISTRY/REPO@sha256:... (as `envkit push` printed it), "
                                                          "or a run id with --from."),
    registry_repo: str = typer.Option(None, "--from", metavar="REGISTRY/REPO", help="Find the run id there."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fetch a pushed run into this host's store, every file checked against its record, and print its run id.

    Nothing is replayed: `envkit replay` does that, and pulls the image by digest when it runs.
    """
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    pulled = fetch_run(FileStore(store_dir()), source, registry_repo, quiet=json_out)
    if json_out:
        print_json({"run_id": pulled.run_id, "already_present": pulled.already_present,
                    "not_carried": pulled.not_carried})
        return
    typer.echo(pulled.run_id)


def fetch_run(store, source: str, registry_repo: str | None, quiet: bool):
    """:func:`envkit.remote.fetch` with its progress bar and a line saying what came (pull and replay share it)."""
    from envkit.cli._progress import transfer_bar
    from envkit.remote import fetch

    with transfer_bar("run", enabled=not quiet and err_console.is_terminal) as advance:
        pulled = fetch(store, source, registry_repo=registry_repo, on_progress=advance)
    if not quiet:
        what = "already in this store" if pulled.already_present else "pulled, every file checked"
        err_console.print(f"run {pulled.run_id}: {what}", highlight=False)
        for path in pulled.not_carried:
            err_console.print(f"note: output {path} was not carried (over the pusher's size limit)", highlight=False)
    return pulled
