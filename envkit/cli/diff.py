"""`envkit diff RUN_A RUN_B`: where two runs part, and what differs between them."""

from __future__ import annotations

import typer

from envkit.cli import app
from envkit.cli._console import print_json
from envkit.cli._options import complete_run_id


@app.command("diff")
def diff_cmd(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="A run id from `envkit runs`, a unique prefix, or last.",
                               autocompletion=complete_run_id),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="Another run id, e.g. a replay of RUN_A.",
                               autocompletion=complete_run_id),
    show_all: bool = typer.Option(False, "--all", help="Also list differences that do not change numerics."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole comparison as JSON."),
) -> None:
    """Compare two runs: the first optimizer step and the parameters whose digests differ (from the step traces of
    runs made with --trace), the outputs that differ, and every difference between the records that could explain
    it (seed, determinism, threads, CPU profile, image, lock, code, inputs, command, environment, host), those that
    change numerics first.

    Exits 0 whatever the verdict; `--json` has it in "verdict" (identical, diverged, written-differently,
    outputs-differ).
    """
    from envkit.diff import diff_runs, render_diff
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    a, b = store.read(store.resolve(run_a)), store.read(store.resolve(run_b))
    result = diff_runs(a, b, store.run_dir(a.run_id), store.run_dir(b.run_id))
    if json_out:
        print_json(result.to_dict())
    else:
        typer.echo(render_diff(result, show_all=show_all), nl=False)
