"""The envkit command line: one Typer app, one error boundary.

Commands live one per module (``envkit/cli/<command>.py``): each parses its options, calls the core, and renders.
They raise :class:`envkit.errors.EnvkitError`; :func:`main` is the only place that turns an error into
``error: ...`` / ``hint: ...`` on stderr and an exit code. Set ``ENVKIT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from envkit import __version__
from envkit.cli._console import err_console, printable
from envkit.errors import EnvkitError
from envkit.settings import debug_enabled

app = typer.Typer(
    name="envkit",
    help="Reproducible ML environments: lock, build, run with seeds, replay bit for bit.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"envkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version_callback,
                                 is_eager=True),
) -> None:
    """Reproducible ML environments: lock, build, run with seeds, replay bit for bit."""


def _command_name(argv: list[str]) -> str | None:
    """The command a command line asks for (its first word that is not an option), or None."""
    if os.environ.get("_ENVKIT_COMPLETE"):
        return None  # shell completion lists every command
    for word in argv:
        if not word.startswith("-"):
            return word
        if word in ("--help", "--install-completion", "--show-completion"):
            return None
    return None


def _register(argv: list[str]) -> None:
    # Only the command's own module is imported (a command module imports the app, so this happens here, not at
    # import time of envkit.cli).
    from envkit.cli.commands import register

    register(_command_name(argv))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every envkit error to one line, a hint and its exit code."""
    from typer._click import exceptions as click_exc  # typer bundles its own Click

    _register(sys.argv[1:] if argv is None else list(argv))
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="envkit")
        return rv if isinstance(rv, int) else 0
    except EnvkitError as exc:
        if debug_enabled():
            raise
        from rich.markup import escape

        # Messages quote paths and values from files others wrote: their control characters are shown escaped.
        err_console.print(f"[bold red]error:[/] {escape(printable(exc.message, keep_newlines=True))}", markup=True)
        if exc.hint:
            err_console.print(f"[bold]hint:[/] {escape(printable(exc.hint, keep_newlines=True))}", markup=True)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("error: interrupted", highlight=False)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:
        # `envkit` or `envkit <group>` alone: the help text, like --help, but exit 2 as Click does.
        exc.show(file=sys.stderr)
        return 2
    except click_exc.ClickException as exc:
        # Usage errors (unknown option, missing argument, bad value): Click's own message, exit 2.
        exc.show(file=sys.stderr)
        return exc.exit_code


def console_main() -> None:
    """Console-script entry point."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code``, without tearing the interpreter down module by module.

    That teardown costs 30 to 50 ms after a command that loaded the store, the engine client and typer, paid on every
    ``envkit run``. By now every file envkit wrote is closed (atomic writes, ``with`` blocks); what the process still
    owes is its ``atexit`` handlers (logging's, a tracker client's) and its buffered stdout and stderr, done here
    first. A thread still working (not a daemon) gets the ordinary exit, which waits for it.
    """
    import atexit
    import threading

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None or any(t.is_alive() and not t.daemon for t in threading.enumerate()
                                    if t is not threading.main_thread()):
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`envkit runs | head`): nothing more to say there
            pass
    os._exit(code)
