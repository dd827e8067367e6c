"""What `envkit run` adds to a plain Typer command: ``-- COMMAND``, the project configuration, and exit codes
that cannot be taken for the job's.

- ``envkit run [OPTIONS] SCRIPT.py [ARGS]`` runs ``python SCRIPT.py ARGS``; ``envkit run [OPTIONS] -- COMMAND
  [ARGS]`` runs any command on the image's PATH. Click drops the ``--``, so :class:`RunCommand` notes whether it
  ended the options (:func:`command_mode`).
- Options not given on the command line come from the project configuration (:func:`configured_request`), found
  upward from the current folder, then from envkit's defaults.
- ``envkit run`` exits with the job's exit code, so its own failures exit as ``docker run``'s do: 125 (envkit
  failed: a usage error, or an envkit error whose own code is on its error line and in ``--json``), 126 (the command
  cannot be invoked) and 127 (the command is not in the image). See docs/realjobs.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import typer
from typer._click.core import ParameterSource
from typer._click.exceptions import ClickException
from typer._click.globals import get_current_context
from typer.core import TyperCommand

from envkit.cli._console import print_json
from envkit.cli._options import fill_optional_values
from envkit.errors import (
    EXIT_CANNOT_INVOKE,
    EXIT_COMMAND_NOT_FOUND,
    EXIT_RUN_FAILED,
    EnvkitError,
    JobError,
    ScriptNotFoundError,
)

COMMAND_MODE = "envkit.run.command"  # ctx.meta key: the positional arguments came after `--`
CONFIGURABLE = ("seed", "lock", "image", "determinism", "threads", "gpus", "cpu_profile", "network", "trace", "memory")


class RunCommand(TyperCommand):
    """The `run` command: notes a ``--`` that ends the options, and maps envkit's own failures to 125-127."""

    optional_values: ClassVar[dict[str, Callable[[str], bool]]] = {}  # options that may stand alone (run_command)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = fill_optional_values(self, ctx, args, self.optional_values) if self.optional_values else args
        ctx.meta[COMMAND_MODE] = _dashdash_ends_options(self, ctx, args)
        try:
            return super().parse_args(ctx, args)
        except ClickException as exc:
            exc.exit_code = EXIT_RUN_FAILED  # a usage error must not read as the job's exit code 2
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as exc:  # BadParameter raised while the options are combined
            exc.exit_code = EXIT_RUN_FAILED
            raise
        except EnvkitError as exc:
            own = exc.exit_code
            exc.exit_code = launch_exit_code(exc)
            if ctx.params.get("json_out"):
                print_json({"failed_by": "envkit", "exit_code": exc.exit_code, "run_id": getattr(exc, "run_id", None),
                            "error": {"type": type(exc).__name__, "code": own, "message": exc.message,
                                      "hint": exc.hint}})
            raise


def run_command(optional_values: dict[str, Callable[[str], bool]]) -> type[RunCommand]:
    """:class:`RunCommand` whose ``optional_values`` options may stand alone or take a value (``--mlflow`` or
    ``--mlflow URI``: :func:`envkit.cli._options.optional_value_command`)."""
    return type("RunCommand", (RunCommand,), {"optional_values": dict(optional_values)})


def _dashdash_ends_options(command: TyperCommand, ctx: Any, args: list[str]) -> bool:
    """Whether a ``--`` in ``args`` ends the options (rather than being a value or a script's argument): the
    tokens before it, parsed alone, hold no positional argument."""
    if "--" not in args:
        return False
    before = list(args[: args.index("--")])
    try:
        opts, _rest, _order = command.make_parser(ctx).parse_args(args=before)
    except ClickException:
        return False  # `--env --`: the `--` is an option's value
    return opts.get("script") is None


def launch_exit_code(exc: EnvkitError) -> int:
    """125, or docker's 126 / 127 when the engine could not invoke the command / found no such command."""
    if isinstance(exc, JobError):
        low = exc.message.lower()
        if "executable file not found" in low or "no such file or directory" in low:
            return EXIT_COMMAND_NOT_FOUND
        if "permission denied" in low:
            return EXIT_CANNOT_INVOKE
    return EXIT_RUN_FAILED


def command_mode() -> bool:
    """Whether this `envkit run` was given ``-- COMMAND`` (not a script)."""
    return bool(get_current_context().meta.get(COMMAND_MODE))


def configured_request(request: Any, inputs: list[str], validators: dict[str, Callable[[Any], Any]]) -> Any:
    """``request`` (a RunRequest built from the command line) completed: ``-- COMMAND`` as its argv, ``--input``,
    and every option not given on the command line from the project configuration or envkit's default.

    Args:
        validators: the command's own option callbacks (``gpus``, ``trace``), applied to configured values too.

    Raises:
        typer.BadParameter: no seed anywhere, or a configured value its option refuses. ProjectConfigError.
    """
    from envkit.run.defaults import project_config, run_settings

    ctx = get_current_context()
    given = {name: getattr(request, name) if ctx.get_parameter_source(name) in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) else None for name in CONFIGURABLE}
    config = project_config()
    settings = run_settings(config, **given, mounts=list(request.mounts), env=dict(request.env))
    for name, check in validators.items():
        if given.get(name) is None and config.source is not None:
            try:
                check(settings[name])
            except typer.BadParameter as exc:
                raise typer.BadParameter(f"{exc.message} (from {config.source.name})", param_hint=name) from None
    if settings["seed"] is None:
        raise typer.BadParameter("no seed: give --seed N, or set seed = N in [tool.envkit] (pyproject.toml) or "
                                 "envkit.toml", param_hint="--seed")
    changes: dict[str, Any] = {**settings, "inputs": list(inputs)}
    if command_mode():
        changes.update(argv=[request.script, *request.args], script="", args=[])
    elif request.script == "":
        raise ScriptNotFoundError("no script given", hint="envkit run SCRIPT.py [ARGS], or envkit run -- COMMAND")
    return dataclasses.replace(request, **changes)


def outcome(record: Any) -> dict[str, Any]:
    """What `--json` adds to a run's summary: who failed (``job``; null when it succeeded), the command, world size,
    processes and upstream runs."""
    failed = record.status != "succeeded" or record.exit_code not in (0, None)
    return {"failed_by": "job" if failed else None, "argv": list(record.argv), "world_size": record.world_size,
            "processes": record.processes, "upstream": [dataclasses.asdict(u) for u in record.upstream]}
