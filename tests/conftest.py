"""Markers and skips shared by every test.

`docker` tests need a running engine, `gpu` tests an NVIDIA GPU with CUDA. Where either is missing the test is
skipped with the reason, never passed silently.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest


@functools.cache
def engine_reason() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine" for a skip reason
        return f"no Docker engine reachable ({type(exc).__name__}); start dockerd or run .ci/run"
    return None


@functools.cache
def gpu_reason() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    try:
        out = subprocess.run(
            ["python3", "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True, text=True, timeout=120,
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"cannot check CUDA through torch ({exc})"
    return None if out == "True" else "torch sees no CUDA device"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "docker" in item.keywords:
            reason = engine_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        if "gpu" in item.keywords:
            reason = gpu_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
