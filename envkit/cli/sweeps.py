"""`envkit sweeps` (the sweeps, newest first) and `envkit sweep show | status | compare | cancel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli.sweep import SeedProgress, exit_code, sweep_app

_COLUMNS = ("SWEEP ID", "STATUS", "BACKEND", "SEEDS", "SUCCEEDED", "FAILED", "SCRIPT", "CREATED")


def _store():
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    return FileStore(store_dir())


def _resolve(store: Any, ref: str) -> str:
    """A sweep id from what the user typed: a full id, ``last``, or a unique prefix."""
    from envkit.store.sweeps import SweepStore

    return SweepStore(store.root).resolve(ref)


@app.command("sweeps")
def sweeps_cmd(
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Show at most this many sweeps (0: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the sweeps as a JSON list."),
) -> None:
    """List the sweeps, newest first (the store is ENVKIT_HOME, else .envkit in the project folder)."""
    from envkit.store.sweeps import SweepStore

    store = _store()
    records, broken = SweepStore(store.root).list()
    for name, why in broken:
        err_console.print(f"warning: skipped sweep {name}: {why}", highlight=False)
    records = records[:limit] if limit else records
    rows = [_row(s) for s in records]
    if json_out:
        print_json(rows)
        return
    if not rows:
        err_console.print(f"no sweeps in {store.root}", highlight=False)
        return
    table = [_COLUMNS] + [(r["sweep_id"], r["status"], r["backend"] + (" (run)" if r["single"] else ""),
                           str(r["seeds"]), str(r["succeeded"]), str(r["failed"]), r["script"], r["created"])
                          for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    typer.echo("".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
                       for row in table), nl=False)


def _row(sweep: Any) -> dict[str, Any]:
    states = [r.state for r in sweep.runs]
    return {"sweep_id": sweep.sweep_id, "status": sweep.status, "backend": sweep.backend, "single": sweep.single,
            "seeds": len(sweep.seeds), "succeeded": states.count("succeeded"),
            "failed": sum(s in ("failed", "oom", "lost") for s in states), "script": sweep.plan.script,
            "created": sweep.created, "slurm_job_id": (sweep.slurm or {}).get("job_id")}


@sweep_app.command("show")
def show_cmd(
    sweep_id: str = typer.Argument(..., metavar="SWEEP_ID", help="A sweep id from `envkit sweeps`, a unique prefix of "
                                                                  "one, or last."),
    plot: Path = typer.Option(None, "--plot", help="Write the plot here (default: report.png in the sweep's folder)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Make no plot."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (run ids, statistics, plot path)."),
) -> None:
    """The sweep's report: per metric n, mean, std, min, max, 95% interval of the mean, best and worst seed."""
    from envkit.errors import EnvkitError
    from envkit.store.sweeps import SweepStore
    from envkit.sweep.workflow import follow

    store = _store()
    sweep_id = _resolve(store, sweep_id)
    sweep = SweepStore(store.root).read(sweep_id)
    if sweep.status == "running":
        try:
            sweep = follow(store, sweep_id).sweep
        except EnvkitError as exc:  # Slurm unreachable: report what the store holds
            err_console.print(f"warning: cannot follow the sweep ({exc.message}); showing what the store holds",
                              highlight=False)
    print_report(store, sweep, json_out, plot, explicit_plot=plot is not None, draw=not no_plot)


def print_report(store: Any, sweep: Any, json_out: bool, plot: Path | None, explicit_plot: bool,
                 draw: bool = True) -> None:
    """The report on stdout (text or JSON); the plot written where asked, or beside the sweep when possible."""
    from envkit.store.sweeps import SweepStore
    from envkit.sweep import report
    from envkit.sweep.workflow import summarize

    summary, _ = summarize(store, sweep)
    title = (f"sweep {sweep.sweep_id}: {sweep.plan.script} {' '.join(sweep.plan.args)}".rstrip()
             + f", {len(sweep.seeds)} seeds, {sweep.backend}, {sweep.status}")
    path, plot_note = None, None
    if draw:
        unavailable = None if explicit_plot else report.plot_unavailable()
        if unavailable:
            plot_note = f"no plot: {unavailable}"
        else:
            path = report.plot(summary, plot or SweepStore(store.root).layout(sweep.sweep_id).plot, title=title)
            if path is None:
                plot_note = "no plot: no metric has a value"
    if json_out:
        data = report.to_dict(summary, sweep_id=sweep.sweep_id, plot_path=path)
        data.update(status=sweep.status, backend=sweep.backend, seeds=sweep.seeds, plot_note=plot_note,
                    slurm_job_id=(sweep.slurm or {}).get("job_id"))
        for row, run in zip(data["runs"], sweep.runs, strict=True):
            row.update(run_id=run.run_id, state=run.state, node=run.node, exit_code=run.exit_code)
        print_json(data)
        return
    typer.echo(report.render_text(summary, title=title), nl=False)
    if path is not None:
        typer.echo(f"plot: {path}")
    elif plot_note:
        err_console.print(plot_note, highlight=False)


@sweep_app.command("status")
def status_cmd(
    sweep_id: str = typer.Argument(..., metavar="SWEEP_ID"),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Wait with progress until every seed is finished."),
    json_out: bool = typer.Option(False, "--json", help="Print every seed's state as JSON."),
) -> None:
    """Where each seed of a sweep stands (a Slurm sweep: asks Slurm). Exit 6 once finished with a failed seed."""
    from envkit.sweep.workflow import follow

    store = _store()
    sweep_id = _resolve(store, sweep_id)
    try:
        with SeedProgress(enabled=follow_ and not json_out) as progress:
            outcome = follow(store, sweep_id, on_progress=progress.update, wait=follow_)
    except KeyboardInterrupt:
        err_console.print(f"stopped following; the sweep goes on (`envkit sweep cancel {sweep_id}` stops it)",
                          highlight=False)
        raise typer.Exit(130) from None
    sweep = outcome.sweep
    if json_out:
        print_json({"sweep_id": sweep.sweep_id, "status": sweep.status, "backend": sweep.backend,
                    "slurm_job_id": (sweep.slurm or {}).get("job_id"),
                    "runs": [s.__dict__ for s in outcome.states]})
    else:
        from envkit.sweep.backend import counts

        job = f", Slurm job {sweep.slurm['job_id']}" if sweep.slurm else ""
        summary = ", ".join(f"{v} {k}" for k, v in counts(outcome.states).items())
        lines = [f"sweep {sweep.sweep_id}: {sweep.status} ({summary}){job}"]
        table = [("SEED", "STATE", "RUN ID", "EXIT", "NODE", "NOTE")] + [
            (str(s.seed), s.state, s.run_id or "-", "-" if s.exit_code is None else str(s.exit_code), s.node or "-",
             s.note or "") for s in outcome.states]
        widths = [max(len(r[i]) for r in table) for i in range(6)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
        typer.echo("\n".join(lines))
    raise typer.Exit(exit_code(sweep.status))


@sweep_app.command("compare")
def compare_cmd(
    sweep_a: str = typer.Argument(..., metavar="SWEEP_A"),
    sweep_b: str = typer.Argument(..., metavar="SWEEP_B"),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Per shared metric: is the difference between two sweeps larger than the seed noise? (Welch's t-test)"""
    from envkit.sweep import report
    from envkit.sweep.workflow import compare_sweeps

    store = _store()
    sweep_a, sweep_b = _resolve(store, sweep_a), _resolve(store, sweep_b)
    comparison = compare_sweeps(store, sweep_a, sweep_b)
    if json_out:
        print_json(report.comparison_to_dict(comparison, sweep_a, sweep_b))
    else:
        typer.echo(report.render_comparison_text(comparison, "A", "B"), nl=False)
        typer.echo(f"A = {sweep_a}\nB = {sweep_b}")


@sweep_app.command("cancel")
def cancel_cmd(
    sweep_id: str = typer.Argument(..., metavar="SWEEP_ID"),
    json_out: bool = typer.Option(False, "--json", help="Print every seed's state as JSON."),
) -> None:
    """Cancel a Slurm sweep (scancel): pending seeds never start, running ones are recorded interrupted."""
    from envkit.sweep.workflow import cancel_sweep

    store = _store()
    sweep_id = _resolve(store, sweep_id)
    outcome = cancel_sweep(store, sweep_id)
    for note in outcome.notes:
        err_console.print(f"note: {note}", highlight=False)
    if json_out:
        print_json({"sweep_id": sweep_id, "status": outcome.sweep.status, "runs": [s.__dict__ for s in outcome.states]})
    else:
        typer.echo(f"sweep {sweep_id}: {outcome.sweep.status}")
