"""`envkit doctor`: checks the engine, GPU runtime, store and tools, and says what to fix."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import out_console, print_json


@app.command("doctor")
def doctor_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    lock: list[Path] = typer.Option(None, "--lock", help="Check the NVIDIA driver against this lockfile's CUDA "
                                                         "(repeatable; default: the project's lockfiles)."),
) -> None:
    """Check that this host can lock, build, run and replay; exit 26 if a required check fails.

    On a GPU host: the GPUs NVML sees, a container with --gpus all running nvidia-smi -L (what a job needs), and
    the driver's CUDA version against each CUDA lock (at least the lock's CUDA major).
    """
    from envkit.doctor import run_checks
    from envkit.errors import HealthCheckError
    from envkit.settings import cache_dir, store_dir

    checks = run_checks(store_dir(), cache_dir(), list(lock) if lock else None)
    if json_out:
        print_json([c.__dict__ for c in checks])
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            out_console.print(f"{mark}  {c.name:16} {c.detail}", highlight=False)
            if not c.ok and c.fix:
                out_console.print(f"      {'':16} fix: {c.fix}", highlight=False)
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        raise HealthCheckError(f"{', '.join(failed)} not ready", hint="apply the fixes listed above")
