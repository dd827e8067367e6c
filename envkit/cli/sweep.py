"""`envkit sweep`: one recorded run per seed, grouped under a sweep id, locally or as one Slurm job array.

``envkit sweep [OPTIONS] SCRIPT [ARGS]`` starts a sweep (the explicit form is ``envkit sweep run ...``); ``show``,
``status``, ``compare`` and ``cancel`` work on sweeps already made (envkit/cli/sweeps.py). ``_task`` is what a
Slurm array task runs on its node.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import choice
from envkit.cli.run import _gpus, _parse_env, _trace
from envkit.errors import EXIT_SWEEP_RUNS_FAILED
from envkit.settings import CPU_PROFILES, DETERMINISM_LEVELS, NETWORK_MODES

SUBCOMMANDS_HELP = ("Seed sweeps. Start one with `envkit sweep --seeds 0-9 [OPTIONS] SCRIPT [ARGS]` (the same as "
                    "`envkit sweep run ...`); then show, status, compare, cancel. `envkit sweeps` lists them.")


class _SweepGroup(TyperGroup):
    """``envkit sweep SCRIPT ...`` is ``envkit sweep run SCRIPT ...``: a first word that is no subcommand (an option
    or a script) starts a sweep."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(cls=_SweepGroup, help=SUBCOMMANDS_HELP, no_args_is_help=True, rich_markup_mode=None,
                        add_completion=False, pretty_exceptions_enable=False)
app.add_typer(sweep_app, name="sweep")


@sweep_app.command("run", context_settings={"allow_interspersed_args": False})
def sweep_run_cmd(
    script: str = typer.Argument(..., help="The Python script every seed runs, relative to the project folder."),
    args: list[str] = typer.Argument(None, help="Arguments passed to the script."),
    seeds: str = typer.Option(None, "--seeds", help="Seeds: a range 0-9, a list 1,5,9, or both 0-3,10."),
    n: int = typer.Option(None, "--n", help="N seeds derived from --base-seed (default 0), the same everywhere."),
    base_seed: int = typer.Option(None, "--base-seed", help="The seed --n derives its seeds from."),
    parallel: int = typer.Option(None, "--parallel", help="At most this many runs at once (local: also bounded "
                                                          "by cores and memory)."),
    backend: str = typer.Option("local", "--backend", callback=choice(("local", "slurm")), help="local | slurm."),
    lock: Path = typer.Option(None, "--lock", help="Lockfile to build or find the image from."),
    image: str = typer.Option(None, "--image", help="An image reference or ID (instead of --lock)."),
    determinism: str = typer.Option(None, "--determinism", callback=choice(DETERMINISM_LEVELS),
                                    help="strict | warn | seed | off (default: the project's, else strict)."),
    threads: int = typer.Option(None, "--threads", min=1, max=512, help="CPU threads per run (default 1)."),
    gpus: str = typer.Option(None, "--gpus", callback=lambda v: v if v is None else _gpus(v),
                             help="all | none | N per run."),
    cpu_profile: str = typer.Option(None, "--cpu-profile", callback=choice(CPU_PROFILES), help="native | portable."),
    mount: list[str] = typer.Option(None, "--mount", help="SRC:DST read-only data, hashed as inputs (repeatable)."),
    trace: str = typer.Option(None, "--trace", callback=lambda v: v if v is None else _trace(v),
                              help="Parameter digests every N optimizer steps; auto; off."),
    network: str = typer.Option(None, "--network", callback=choice(NETWORK_MODES), help="none (default) or bridge."),
    env: list[str] = typer.Option(None, "--env", help="KEY=VALUE for every run (repeatable)."),
    memory: str = typer.Option(None, "--memory", help="Memory limit per run, e.g. 4g (also bounds --parallel)."),
    partition: str = typer.Option(None, "--partition", help="Slurm: the partition."),
    gres: str = typer.Option(None, "--gres", help="Slurm: generic resources per task, e.g. gpu:1."),
    time_limit: str = typer.Option(None, "--time", help="Slurm: time limit per task, e.g. 01:00:00."),
    sbatch: list[str] = typer.Option(None, "--sbatch", help="Slurm: an sbatch argument passed as is, e.g. "
                                                            "--sbatch=--account=ml (repeatable)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Slurm: submit, print the sweep id and return."),
    plot: Path = typer.Option(None, "--plot", help="Write the report's plot here (default: in the sweep's folder)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run SCRIPT once per seed, each a normal recorded run, and report mean, spread and a 95% interval per metric.

    The job writes metrics.json (a flat map of names to numbers) into $ENVKIT_OUTPUT_DIR or its working folder.
    Exit code: 0 when every run succeeded, 6 when one failed (the others are kept), 130 when interrupted.
    """
    from envkit.sweep.seeds import choose_seeds
    from envkit.sweep.slurm import SlurmOptions
    from envkit.sweep.workflow import SweepRequest

    chosen = choose_seeds(seeds, n, base_seed)
    request = SweepRequest(
        run=run_request(script, args, lock, image, determinism, threads, gpus, cpu_profile, mount, trace,
                        network, env, memory),
        seeds=chosen, base_seed=(base_seed if base_seed is not None else 0) if n is not None else None,
        parallel=parallel, backend=backend, wait=not no_wait,
        slurm=SlurmOptions(partition=partition, gres=gres, time=time_limit, extra_args=tuple(sbatch or ())),
    )
    raise typer.Exit(start(request, json_out, plot))


def run_request(script: str, args: list[str] | None, lock: Path | None, image: str | None,
                determinism: str | None, threads: int | None, gpus: str | None, cpu_profile: str | None,
                mounts: list[str] | None, trace: str | None, network: str | None, env: list[str] | None,
                memory: str | None) -> Any:
    """A RunRequest from the options, the project's configuration filling what they leave out (as for `envkit run`;
    the seed is the sweep's)."""
    from envkit.run.defaults import project_config, run_settings
    from envkit.run.runner import RunRequest

    config = project_config()
    settings = run_settings(config, seed=0, lock=lock, image=image, determinism=determinism, threads=threads,
                            gpus=gpus, cpu_profile=cpu_profile, network=network, trace=trace, memory=memory,
                            mounts=list(mounts or []), env=_parse_env(env or []))
    for name, given, check in (("gpus", gpus, _gpus), ("trace", trace, _trace)):
        if given is None and config.source is not None:
            try:
                check(settings[name])
            except typer.BadParameter as exc:
                raise typer.BadParameter(f"{exc.message} (from {config.source.name})", param_hint=name) from None
    return RunRequest(script=script, args=list(args or []), project=Path.cwd(),
                      command=["envkit", *sys.argv[1:]] if sys.argv and "envkit" in Path(sys.argv[0]).name else [],
                      **settings)


def start(request: Any, json_out: bool, plot: Path | None) -> int:
    """Start a sweep with progress on stderr; the report (or, with --no-wait, the sweep id) on stdout. The exit code."""
    from envkit.engine import connect
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore
    from envkit.sweep.workflow import start_sweep

    store = FileStore(store_dir())
    progress = SeedProgress(enabled=not json_out)

    def submitted(sweep: Any) -> None:
        where = f"Slurm job array {sweep.slurm['job_id']}" if sweep.slurm else f"{sweep.parallel} at a time"
        err_console.print(f"sweep {sweep.sweep_id}: {len(sweep.seeds)} seeds, {sweep.backend} ({where})",
                          highlight=False)

    with progress:
        outcome = start_sweep(connect(), store, request, on_progress=progress.update,
                              on_submitted=None if json_out else submitted)
    for note in outcome.notes:
        err_console.print(f"note: {note}", highlight=False)
    sweep = outcome.sweep
    if not request.wait:
        if json_out:
            print_json({"sweep_id": sweep.sweep_id, "backend": sweep.backend, "status": sweep.status,
                        "slurm_job_id": (sweep.slurm or {}).get("job_id")})
        else:
            err_console.print(f"follow it with `envkit sweep status {sweep.sweep_id} --follow`", highlight=False)
            typer.echo(sweep.sweep_id)
        return 0
    from envkit.cli.sweeps import print_report

    print_report(store, sweep, json_out, plot, explicit_plot=plot is not None)
    if not json_out:
        typer.echo(sweep.sweep_id)
    return exit_code(sweep.status)


def exit_code(status: str) -> int:
    """A sweep's exit code: 0 every run succeeded, 6 one failed (the others are kept), 130 interrupted."""
    return {"succeeded": 0, "interrupted": 130, "running": 0}.get(status, EXIT_SWEEP_RUNS_FAILED)


class SeedProgress:
    """Progress on stderr: a bar over the seeds (on a terminal) and one line per seed as it finishes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._reported: set[int] = set()
        self._progress = None
        self._task = None

    def __enter__(self) -> SeedProgress:
        if self.enabled and err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=err_console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, states: list[Any]) -> None:
        if not self.enabled:
            return
        from envkit.sweep.backend import counts

        for s in states:
            if s.finished and s.index not in self._reported:
                self._reported.add(s.index)
                where = f" on {s.node}" if s.node else ""
                code = f", exit {s.exit_code}" if s.exit_code not in (None, 0) else ""
                note = f" ({s.note})" if s.note and s.state != "succeeded" else ""
                line = f"  seed {s.seed}: {s.state}{code}{where}  {s.run_id or '-'}{note}"
                (self._progress.console if self._progress else err_console).print(line, highlight=False)
        if self._progress is not None:
            summary = ", ".join(f"{v} {k}" for k, v in counts(states).items())
            if self._task is None:
                self._task = self._progress.add_task(summary, total=len(states))
            self._progress.update(self._task, completed=sum(s.finished for s in states), description=summary)


@sweep_app.command("_task", hidden=True)
def task_cmd(
    sweep_id: str = typer.Argument(...),
    index: int = typer.Argument(..., min=0),
    store_root: Path = typer.Option(..., "--store", help="The shared run store."),
) -> None:
    """Run one seed of a sweep here (what a Slurm array task runs; `python -m envkit.sweep.node` is the same)."""
    from envkit.sweep.node import exit_code as task_exit_code
    from envkit.sweep.node import run_task, stop_on_sigterm

    stop_on_sigterm()
    record, reason = run_task(store_root, sweep_id, index)
    if record is None:
        err_console.print(f"error: seed number {index} of sweep {sweep_id}: {reason}", highlight=False)
        raise typer.Exit(1)
    typer.echo(f"seed {record.seed}: run {record.run_id} {record.status}, exit {record.exit_code}")
    raise typer.Exit(task_exit_code(record))


def run_on_slurm(request: Any, options: Any, json_out: bool, tracker: Any = None) -> int:
    """`envkit run --backend slurm`: one run as a one-task Slurm array; its output, then its run id. The exit code."""
    from envkit.cli._runcmd import outcome as outcome_of
    from envkit.cli.mlflow import export_after_run
    from envkit.cli.run import summary
    from envkit.engine import connect
    from envkit.errors import SlurmError
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore
    from envkit.store.sweeps import SweepStore
    from envkit.sweep.workflow import SweepRequest, start_sweep

    store = FileStore(store_dir())
    sweep_request = SweepRequest(run=request, seeds=[request.seed], backend="slurm", slurm=options, single=True)

    def submitted(sweep: Any) -> None:
        if not json_out:
            err_console.print(f"submitted as Slurm job {sweep.slurm['job_id']} (sweep {sweep.sweep_id})",
                              highlight=False)

    outcome = start_sweep(connect(), store, sweep_request, on_submitted=submitted)
    state = outcome.states[0]
    if state.run_id is None:
        log = SweepStore(store.root).layout(outcome.sweep.sweep_id).slurm / "task-0.log"
        raise SlurmError(f"the Slurm task made no run ({state.state}: {state.note or 'no reason given'})",
                         hint=f"its log: {log}")
    record = store.read(state.run_id)
    if json_out:
        print_json({**summary(record), **outcome_of(record), "sweep_id": outcome.sweep.sweep_id,
                    "scheduler": record.scheduler}
                   | ({"mlflow": export_after_run(store, record, tracker)} if tracker else {}))
    else:
        layout = store.layout(record.run_id)
        for log, stream in ((layout.stdout_log, sys.stdout), (layout.stderr_log, sys.stderr)):
            stream.flush()
            if log.is_file():
                stream.buffer.write(log.read_bytes())
                stream.buffer.flush()
        where = (record.scheduler or {}).get("node")
        err_console.print(f"run {record.run_id}: {record.status}, exit {record.exit_code}, {len(record.outputs)} "
                          f"outputs{f', on {where}' if where else ''}", highlight=False)
        if tracker:
            export_after_run(store, record, tracker)
        typer.echo(record.run_id)
    return 130 if record.status == "interrupted" else (record.exit_code or 0)
