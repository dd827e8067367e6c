"""``python -m envkit`` runs the CLI."""

from envkit.cli import run

run()
