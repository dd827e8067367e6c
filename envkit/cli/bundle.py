"""`envkit export` and `envkit import`: move a run (and optionally its image) to another host."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import complete_run_id


@app.command("export")
def export_cmd(
    run_id: str = typer.Argument(..., help="The run to export: an id, a unique prefix, or last.",
                                 autocompletion=complete_run_id),
    output: Path = typer.Option(..., "-o", "--output", help="The bundle to write (e.g. run.tar.gz)."),
    with_image: bool = typer.Option(False, "--with-image", help="Include the image (docker save): no registry needed."),
    json_out: bool = typer.Option(False, "--json", help="Print the bundle's manifest as JSON."),
) -> None:
    """Write RUN_ID's record, code snapshot, lockfile, logs and outputs (and image) into one bundle."""
    from envkit.settings import store_dir
    from envkit.store.bundle import export_run
    from envkit.store.filestore import FileStore

    engine = None
    if with_image:
        from envkit.engine import connect

        engine = connect()
    store = FileStore(store_dir())
    run_id = store.resolve(run_id)
    manifest = export_run(store, run_id, output, engine=engine, with_image=with_image)
    if json_out:
        print_json({"bundle": str(output), **manifest})
        return
    size = output.stat().st_size
    err_console.print(f"exported run {run_id}: {len(manifest['files'])} files"
                      f"{' and its image' if with_image else ''}, {size / 1e6:.1f} MB", highlight=False)
    typer.echo(str(output))


@app.command("import")
def import_cmd(
    bundle: Path = typer.Argument(..., help="A bundle written by `envkit export`."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check a bundle (paths, links, every hash) and add its run (and image) to this host's store."""
    from envkit.settings import store_dir
    from envkit.store.bundle import bundle_has_image, import_bundle
    from envkit.store.filestore import FileStore

    engine = None
    if bundle.is_file() and bundle_has_image(bundle):
        from envkit.engine import connect

        engine = connect()
    result = import_bundle(FileStore(store_dir()), bundle, engine=engine)
    if json_out:
        print_json(result.__dict__)
        return
    what = "already present" if result.already_present else "imported"
    err_console.print(f"run {result.run_id} {what}" + (f"; image {result.image_loaded[:19]} loaded"
                                                        if result.image_loaded else ""), highlight=False)
    typer.echo(result.run_id)
