"""`envkit base`: make a base image from Debian's packages (no registry needed)."""

from __future__ import annotations

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._progress import stage_spinner

base_app = typer.Typer(help="Make base images for air-gapped hosts.", no_args_is_help=True)
app.add_typer(base_app, name="base")


@base_app.command("debian")
def base_debian(
    suite: str = typer.Argument("bookworm", help="Debian suite: bookworm (Python 3.11), trixie (3.13), bullseye (3.9)."),
    python: str = typer.Option("3.11", "--python", help="Python major.minor the suite must ship."),
    tag: str = typer.Option(None, "--tag", help="Image name (default envkit/base:<suite>-py<python>)."),
    mirror: str = typer.Option(None, "--mirror", help="Debian mirror URL (default: debootstrap's)."),
    compiler: bool = typer.Option(False, "--compiler", help="Add gcc and Python's headers (torch.compile with "
                                                            "triton needs them; tag ...-dev)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """debootstrap a minimal Debian with python3 and import it as a Docker image.

    The installed package list is recorded in the image (/etc/envkit/base-packages.txt) and printed with --json.
    """
    from envkit.engine import connect
    from envkit.image.base import make_base

    engine = connect()
    with stage_spinner(enabled=not json_out) as step:
        result = make_base(engine, suite, python, tag=tag, mirror=mirror, step=step, compiler=compiler)
    if json_out:
        print_json({"image_id": result.image_id, "tag": result.tag, "python": result.python,
                    "packages": result.packages, "seconds": round(result.seconds, 1)})
    else:
        err_console.print(f"made {result.tag} (Python {result.python}, {len(result.packages)} packages) "
                          f"in {result.seconds:.0f} s")
        typer.echo(result.image_id)
