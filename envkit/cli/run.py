"""`envkit run`: an unmodified script (or any command) in its image, seeded, recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import choice
from envkit.cli._runcmd import configured_request, outcome, run_command
from envkit.settings import (
    CPU_PROFILES,
    DEFAULT_DETERMINISM,
    DEFAULT_THREADS,
    DEFAULT_TRACE,
    DETERMINISM_LEVELS,
    IPC_MODES,
    NETWORK_MODES,
)
from envkit.tracking.config import MLFLOW_OPTION_HELP, looks_like_tracking_uri

SEED_MAX = 2**32 - 1


def _gpus(value: str) -> str:
    from envkit.run.gpus import parse_gpus

    try:
        return parse_gpus(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _trace(value: str) -> str:
    from envkit.run.tracing import parse_trace

    try:
        return str(parse_trace(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("run", context_settings={"allow_interspersed_args": False},
             cls=run_command({"--mlflow": looks_like_tracking_uri}))
def run_cmd(
    script: str = typer.Argument(..., metavar="SCRIPT.py | -- COMMAND",
                                 help="The Python script to run, relative to the project folder; or, after --, any "
                                      "command on the image's PATH (python -m pkg.train, torchrun ..., bash x.sh)."),
    args: list[str] = typer.Argument(None, help="Arguments passed to the script or command."),
    seed: int = typer.Option(None, "--seed", min=0, max=SEED_MAX,
                             help="The run's seed (0 to 2**32-1); default: the project configuration's seed."),
    lock: Path = typer.Option(None, "--lock", help="Lockfile to build or find the image from."),
    image: str = typer.Option(None, "--image", help="An image reference or ID to run in (instead of --lock)."),
    determinism: str = typer.Option(DEFAULT_DETERMINISM, "--determinism", callback=choice(DETERMINISM_LEVELS),
                                    help="strict | warn | seed | off."),
    threads: int = typer.Option(DEFAULT_THREADS, "--threads", min=1, max=512,
                                help="Fixed CPU thread count (torch, OpenMP, MKL); recorded with the run."),
    gpus: str = typer.Option("none", "--gpus", callback=_gpus,
                             help="all | none | N (devices 0..N-1) | device=0,2 (indices or UUIDs); NVIDIA container "
                                  "toolkit."),
    cpu_profile: str = typer.Option(None, "--cpu-profile", callback=choice(CPU_PROFILES),
                                    help="native, or portable (bit-identical across CPU models); default: the "
                                         "--image's own profile, else native."),
    mount: list[str] = typer.Option(None, "--mount", help="SRC:DST, read-only data hashed as inputs (repeatable)."),
    inputs: list[str] = typer.Option(None, "--input", metavar="RUN:PATH[:DEST]",
                                     help="An earlier run's output (checked against its record, mounted read-only at "
                                          "DEST, default /work/PATH) as an input; recorded as lineage (repeatable)."),
    trace: str = typer.Option(DEFAULT_TRACE, "--trace", callback=_trace,
                              help="Parameter digests every N optimizer steps; auto keeps the cost under 2%; off. "
                                   "Add ops:STEP (e.g. auto,ops:5) for a digest of every ATen op of one step; "
                                   "ops alone: the divergent step found last for this script."),
    network: str = typer.Option("none", "--network", callback=choice(NETWORK_MODES),
                                help="Container network: none (default, hermetic) or bridge."),
    env: list[str] = typer.Option(None, "--env", help="KEY=VALUE for the job (repeatable); secrets are redacted in "
                                                       "the record."),
    memory: str = typer.Option(None, "--memory", help="Memory limit, e.g. 4g; a job killed for memory is marked oom."),
    shm_size: str = typer.Option(None, "--shm-size", help="/dev/shm size, e.g. 16g (default: half the job's memory, "
                                                          "as Linux gives it; Docker's 64m kills DataLoaders)."),
    ipc: str = typer.Option(None, "--ipc", callback=choice(IPC_MODES), help="IPC namespace: private (default), "
                                                                            "shareable or host."),
    env_file: Path = typer.Option(None, "--env-file", help="KEY=VALUE lines for the job (as docker's --env-file); "
                                                           "secrets are redacted in the record; --env wins."),
    user: str = typer.Option(None, "--user", help="UID[:GID] to run the job as (default: you; an unprivileged uid "
                                                  "when envkit runs as root)."),
    json_out: bool = typer.Option(False, "--json", help="Print a record summary as JSON at the end."),
    mlflow: str = typer.Option(None, "--mlflow", metavar="[URI]", help=MLFLOW_OPTION_HELP),
    backend: str = typer.Option("local", "--backend", callback=choice(("local", "slurm")),
                                help="local, or slurm: one Slurm job on a node sharing the store (docs/sweeps.md)."),
    partition: str = typer.Option(None, "--partition", help="Slurm: the partition."),
    gres: str = typer.Option(None, "--gres", help="Slurm: generic resources, e.g. gpu:1."),
    time_limit: str = typer.Option(None, "--time", help="Slurm: the time limit, e.g. 01:00:00."),
    sbatch: list[str] = typer.Option(None, "--sbatch", help="Slurm: an sbatch argument as is (repeatable)."),
) -> None:
    """Run SCRIPT (or, after --, any COMMAND) in the lock's image with every Python process seeded; record the
    run; print its id last.

    The project folder (the current directory, minus .gitignore'd and .envkitignore'd files) is snapshotted and
    mounted as the job's writable working copy; files the job creates or changes there are its outputs. Options not
    given come from [tool.envkit] in pyproject.toml or envkit.toml. The exit code is the job's; envkit's own
    failures exit 125 (126: the command cannot be invoked, 127: not in the image).
    """
    from envkit.cli._progress import LiveProgress
    from envkit.cli.mlflow import export_after_run, mlflow_settings
    from envkit.engine import connect
    from envkit.run.executor import Sink
    from envkit.run.runner import RunRequest, run
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    request = RunRequest(
        script=script, args=list(args or []), seed=seed, lock=lock, image=image, determinism=determinism,
        threads=threads, gpus=gpus, cpu_profile=cpu_profile, mounts=list(mount or []), trace=trace, network=network,
        env=_parse_env(env or []), memory=memory, project=Path.cwd(), shm_size=shm_size, ipc=ipc, env_file=env_file,
        user=user,
        command=["envkit", *sys.argv[1:]] if sys.argv and "envkit" in Path(sys.argv[0]).name else [],
    )
    request = configured_request(request, list(inputs or []), {"gpus": _gpus, "trace": _trace})
    tracker = mlflow_settings(mlflow)  # a bad --mlflow is refused before the job, not after it
    if backend == "slurm":
        from envkit.cli.sweep import run_on_slurm
        from envkit.sweep.slurm import SlurmOptions

        options = SlurmOptions(partition=partition, gres=gres, time=time_limit, extra_args=tuple(sbatch or ()))
        raise typer.Exit(run_on_slurm(request, options, json_out, tracker))
    store = FileStore(store_dir())
    progress = LiveProgress(enabled=not json_out and err_console.is_terminal)

    def on_started(rid: str) -> None:
        progress.pause()  # the job's own output comes next
        if not json_out:
            err_console.print(f"run {rid} started", highlight=False)

    try:
        record = run(connect(), store, request, sink=Sink(None, None) if json_out else None, on_started=on_started,
                     on_warning=lambda line: err_console.print(f"warning: {line}", highlight=False),
                     progress=progress)
    finally:
        progress.pause()
    # The export comes after the record's final write; its trouble is a warning, never the exit code.
    if json_out:
        print_json({**summary(record), **outcome(record)}
                   | ({"mlflow": export_after_run(store, record, tracker)} if tracker else {}))
    else:
        err_console.print(f"run {record.run_id}: {record.status}, exit {record.exit_code}, "
                          f"{len(record.outputs)} outputs, {record.timings.run_s:.1f} s", highlight=False)
        if tracker:
            export_after_run(store, record, tracker)
        typer.echo(record.run_id)
    code = 130 if record.status == "interrupted" else (record.exit_code or 0)
    raise typer.Exit(code)


def _parse_env(items: list[str]) -> dict[str, str]:
    import re

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        if key.startswith("ENVKIT_") or key in ("PYTHONHASHSEED", "NVIDIA_VISIBLE_DEVICES"):
            raise typer.BadParameter(f"{key} is set by envkit from the run's options"
                                     + (" (choose GPUs with --gpus)" if key == "NVIDIA_VISIBLE_DEVICES" else ""),
                                     param_hint="--env")
        out[key] = value
    return out


def summary(record) -> dict:
    return {
        "run_id": record.run_id, "status": record.status, "exit_code": record.exit_code, "seed": record.seed,
        "determinism": record.determinism, "threads": record.threads, "cpu_profile": record.cpu_profile,
        "image": record.image.id, "image_digests": record.image.digests, "code_sha256": record.code.sha256,
        "outputs": [e.to_dict() for e in record.outputs], "timings": record.timings.__dict__,
        "replay_of": record.replay_of, "gpus": record.gpus, "shm_size": record.shm_size, "ipc": record.ipc,
    }
