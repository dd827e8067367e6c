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

    The base is pinned by content: envkit/base:<suite>-py<X.Y> by the exact .debs of a minimal Debian with Python
    (resolved now with mmdebstrap; no engine needed), a registry image by its manifest digest. Every package,
    transitive ones too, is pinned with its version, wheel file name and sha256, with a public URL as a hint (never a
    local path or a password). Resolution is for the target, not this host. Record the image IDs the lock builds with
    `envkit build LOCKFILE --pin`.
    """
    from envkit.lock.locking import lock_spec
    from envkit.image.render import describe_base

    t0 = time.monotonic()
    say = None if json_out else (lambda s: err_console.print(s, highlight=False, markup=False))
    result = lock_spec(None, spec_path, output, on_step=say or (lambda _s: None))
    lock, path = result.lock, result.path
    seconds = time.monotonic() - t0
    if json_out:
        print_json({"lockfile": str(path), "content_sha256": lock.content_sha256, "packages": len(lock.packages),
                    "base": {"kind": lock.base.kind, "ref": lock.base.ref, "digest": lock.base.digest,
                             "debs": len(lock.base.debian.debs) if lock.base.debian else None},
                    "images": lock.images, "notes": result.notes, "seconds": round(seconds, 2)})
        return
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    err_console.print(f"locked {len(lock.packages)} packages for {lock.platform.tag} / Python {lock.python} on the "
                      f"base {lock.base.ref}: {describe_base(lock)} ({seconds:.1f} s)", highlight=False, markup=False)
    typer.echo(str(path))
