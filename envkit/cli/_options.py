"""Option validators shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable

import typer
from typer._click.core import Command, Context
from typer.core import TyperCommand, TyperOption


def choice(choices: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """A Typer callback that accepts one of ``choices`` (or None, for options whose default is decided later)."""
    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def optional_value_command(options: dict[str, Callable[[str], bool]]) -> type[TyperCommand]:
    """A command class whose ``options`` may stand alone or take a value: ``--mlflow`` or ``--mlflow URI``.

    ``options`` maps each such option to a test of the word after it: a word that passes is its value, anything
    else (another option, the script, nothing) leaves it alone, and it gets the value "" (so None still means
    "not given"). ``--opt=VALUE`` always works. Only words before the first positional argument are looked at when
    the command stops parsing there (``envkit run``: what follows the script is the script's).
    """

    class OptionalValueCommand(TyperCommand):
        def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
            return super().parse_args(ctx, fill_optional_values(self, ctx, args, options))

    return OptionalValueCommand


def fill_optional_values(command: Command, ctx: Context, args: list[str],
                         options: dict[str, Callable[[str], bool]]) -> list[str]:
    """``args`` with each of ``options`` standing alone written ``--opt=`` (see :func:`optional_value_command`)."""
    takes_value = {name for p in command.params if isinstance(p, TyperOption) and not p.is_flag and not p.count
                   and not any(name in options for name in p.opts)
                   for name in (*p.opts, *p.secondary_opts)}
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return out + args[i:]
        if word in options:
            if i + 1 < len(args) and options[word](args[i + 1]):
                out += [word, args[i + 1]]
                i += 2
            else:
                out.append(word + "=")
                i += 1
            continue
        out.append(word)
        i += 1
        if word in takes_value and i < len(args):
            out.append(args[i])  # an option's value, not a positional argument
            i += 1
        elif not word.startswith("-") and not ctx.allow_interspersed_args:
            return out + args[i:]
    return out


def complete_run_id(incomplete: str) -> list[str]:
    """Shell completion of a run id: ``last`` and the stored runs starting with what was typed (newest first)."""
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    try:
        ids = sorted(FileStore(store_dir()).run_ids(), reverse=True)
    except Exception:  # noqa: BLE001 - completion must never print an error into the user's shell
        return []
    return [i for i in ["last", *ids] if i.startswith(incomplete)][:200]
