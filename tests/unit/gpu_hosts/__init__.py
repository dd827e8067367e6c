"""Recorded GPU sections of host fingerprints (see README.md here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
HOSTS = ("h100x8", "h100x1", "mig", "driver550", "cpu")


def gpu_host(name: str) -> dict[str, Any]:
    """A fresh copy of one recorded host's GPU section."""
    return copy.deepcopy(json.loads((HERE / f"{name}.json").read_text()))


def use_host(monkeypatch: Any, name: str) -> dict[str, Any]:
    """Make this process's fingerprint see the recorded host's GPUs (run, replay and doctor read them through
    ``envkit.fingerprint.gpu_section``)."""
    section = gpu_host(name)
    monkeypatch.setattr("envkit.fingerprint.gpu_section", lambda: copy.deepcopy(section))
    return section
