"""Which module defines each command, in the order `envkit --help` lists them.

Importing a command module registers its commands on the app. The CLI imports only the module of the command it
runs (see :func:`envkit.cli.main`): a `envkit runs` does not pay for the imports of `envkit run`, and none pays for
all of them, except `envkit --help` and shell completion, which need every command.
"""

from __future__ import annotations

import importlib

# command name -> module under envkit.cli (sub-apps such as `base` and `mlflow` register their group)
COMMANDS: dict[str, str] = {
    "base": "base",
    "lock": "lock",
    "build": "build",
    "run": "run",
    "runs": "runs",
    "show": "runs",
    "replay": "replay",
    "diff": "diff",
    "export": "bundle",
    "import": "bundle",
    "push": "remote",
    "pull": "remote",
    "fingerprint": "fingerprint",
    "doctor": "doctor",
    "mlflow": "mlflow",
    "sweep": "sweeps",  # envkit/cli/sweeps.py imports envkit/cli/sweep.py: the group and all its subcommands
    "sweeps": "sweeps",
}


def register(name: str | None = None) -> None:
    """Import the module that defines command ``name`` (every command module when ``name`` is None or unknown, so
    that help and Click's "no such command" message see them all)."""
    modules = [COMMANDS[name]] if name in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"envkit.cli.{module}")
