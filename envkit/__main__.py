"""``python -m envkit`` runs the CLI."""

from envkit.cli import console_main

console_main()
