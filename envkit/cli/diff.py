"""`envkit diff RUN_A RUN_B`: where two runs part, and what differs between them."""

from __future__ import annotations

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import complete_run_id


@app.command("diff")
def diff_cmd(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="A run id from `envkit runs`, a unique prefix, or last.",
                               autocompletion=complete_run_id),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="Another run id, e.g. a replay of RUN_A.",
                               autocompletion=complete_run_id),
    pin: bool = typer.Option(False, "--pin", help="Rerun both jobs, tracing more each time, to name the exact step "
                                                  "and the first op that differs, with its element counts."),
    show_all: bool = typer.Option(False, "--all", help="Also list differences that do not change numerics."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole comparison as JSON."),
) -> None:
    """Compare two runs: the first optimizer step and the parameters whose digests differ (from the step traces of
    runs made with --trace), the first op that differs (from op traces: --trace ops:STEP, or the reruns of --pin),
    the outputs that differ, and every difference between the records that could explain it (seed, determinism,
    threads, CPU profile, image, lock, code, inputs, command, environment, host), those that change numerics first.

    Steps count optimizer steps: step 0 is the parameters before the first optimizer step, step k after the k-th.
    Without --pin nothing is rerun: what earlier reruns of the pair found (a replay's, an earlier --pin's) is shown.
    With --pin, both jobs run again on this host, each on its own recorded image, code, inputs and seed, as new runs
    marked as pin runs: with every step of the recorded bracket traced (when it is wider than one step), then with
    every op of the divergent step traced, then saving that op's inputs and outputs.

    Exits 0 whatever the verdict; `--json` has it in "verdict" (identical, diverged, written-differently,
    outputs-differ).
    """
    from envkit.diff import diff_runs, render_diff
    from envkit.pin import find
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    a, b = store.read(store.resolve(run_a)), store.read(store.resolve(run_b))
    engine = None
    if pin:
        from envkit.engine import connect

        engine = connect()
    progress = None if json_out else (lambda msg: err_console.print(msg, highlight=False))
    found = find(engine, store, a, b, rerun=pin, progress=progress)
    result = diff_runs(a, b, store.run_dir(a.run_id), store.run_dir(b.run_id), pinned=found.pinned, ops=found.ops,
                       notes=found.notes, hints=found.hints)
    if json_out:
        print_json(result.to_dict())
    else:
        typer.echo(render_diff(result, show_all=show_all), nl=False)
