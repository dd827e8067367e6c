"""Consoles: data (tables, JSON) go to stdout, diagnostics and progress to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# No markup by default: messages carry user text (paths, "[0]" indices, package extras) that rich would parse.
out_console = Console(soft_wrap=True, highlight=False, markup=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


def print_json(data: Any) -> None:
    """Print machine-readable JSON on stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
