"""`envkit base`: make a base image ahead of a build (a build makes or pulls its base itself when it is missing)."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._progress import stage_spinner

base_app = typer.Typer(help="Make base images ahead of a build (for hosts without a registry).",
                       no_args_is_help=True)
app.add_typer(base_app, name="base")


@base_app.command("make")
def base_make(
    lockfile: Path = typer.Argument(..., metavar="LOCKFILE", help="A lockfile written by `envkit lock`."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make (or pull) the base LOCKFILE pins, as `envkit build` would: a Debian base from its pinned .debs (about a
    minute; then kept in envkit's cache), a registry base by digest."""
    import tempfile

    from envkit.engine import connect
    from envkit.image.bases import ensure_base
    from envkit.image.builder import check_platform
    from envkit.lock.model import load_lockfile
    from envkit.settings import cache_dir

    lock = load_lockfile(lockfile)
    engine = connect()
    check_platform(engine, lock)
    (cache_dir() / "tmp").mkdir(parents=True, exist_ok=True)
    with stage_spinner(enabled=not json_out and err_console.is_terminal) as step, \
            tempfile.TemporaryDirectory(prefix="base-", dir=cache_dir() / "tmp") as tmp:
        base = ensure_base(engine, lock, Path(tmp), step=step)
    if json_out:
        print_json({"image_id": base.image_id, "kind": lock.base.kind, "how": base.how, "layers": base.diff_ids})
        return
    err_console.print(f"base of {lock.name}: {lock.base.describe()} ({base.how})", highlight=False, markup=False)
    typer.echo(base.image_id)


@base_app.command("debian")
def base_debian(
    suite: str = typer.Argument("bookworm", help="Debian suite: bookworm (Python 3.11), trixie (3.13), bullseye (3.9)."),
    python: str = typer.Option("3.11", "--python", help="Python major.minor the suite must ship."),
    tag: str = typer.Option(None, "--tag", help="Image name (default envkit/base:<suite>-py<python>)."),
    compiler: bool = typer.Option(False, "--compiler", help="Add gcc and Python's headers (torch.compile with "
                                                            "triton needs them; tag ...-dev)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make a minimal Debian with python3 from today's packages, reproducibly (mmdebstrap from the exact .debs it
    resolves, dated at SOURCE_DATE_EPOCH, a config envkit writes) and load it as an image.

    The same .debs give the same image ID on every host; `envkit lock` of a spec naming envkit/base:<suite>-py<X.Y>
    pins those .debs. The installed package list is in the image (/etc/envkit/base-packages.txt) and in --json.
    """
    from envkit.engine import connect
    from envkit.image.bases import debian_base_today

    engine = connect()
    with stage_spinner(enabled=not json_out and err_console.is_terminal) as step:
        base, lock = debian_base_today(engine, suite, python, tag=tag, step=step, compiler=compiler)
    debs = lock.base.debian.debs
    if json_out:
        print_json({"image_id": base.image_id, "tag": tag or lock.base.ref, "python": lock.base.python,
                    "packages": [f"{d.name}={d.version}" for d in debs], "how": base.how})
    else:
        err_console.print(f"made {tag or lock.base.ref} (Python {lock.base.python}, {len(debs)} packages; "
                          f"{base.how})", highlight=False, markup=False)
        typer.echo(base.image_id)
