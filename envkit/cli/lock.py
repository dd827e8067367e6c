"""`envkit lock SPEC`: resolve a spec into a hash-pinned lockfile for its target platform."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json


@app.command("lock")
def lock_cmd(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="The spec file (envkit.yaml)."),
    output: Path = typer.Option(None, "-o", "--output", help="Lockfile path (default lockfiles/<name>.lock.yaml)."),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON."),
) -> None:
    """Resolve SPEC for its target platform and write lockfiles/<name>.lock.yaml.

    The base image is pinned by digest (it must exist on the engine); every package, transitive ones too, is pinned
    with its version, wheel file name, URL and sha256. Resolution is for the target, not this host.
    """
    from envkit.engine import connect
    from envkit.lock.locking import lock_spec

    t0 = time.monotonic()
    result = lock_spec(connect(), spec_path, output)
    lock, path = result.lock, result.path
    seconds = time.monotonic() - t0
    if json_out:
        print_json({"lockfile": str(path), "content_sha256": lock.content_sha256, "packages": len(lock.packages),
                    "base": lock.base.digest, "seconds": round(seconds, 2)})
        return
    err_console.print(f"locked {len(lock.packages)} packages for {lock.platform.tag} / Python {lock.python} "
                      f"on base {lock.base.ref} ({lock.base.digest[:19]}) in {seconds:.1f} s")
    typer.echo(str(path))
