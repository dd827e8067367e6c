"""benchmarks/gpu/check.sh runs unattended: here in --cpu mode with the CPU image (the GPU-only steps skip with their
reason), so the script a GPU host will run is exercised on every CI run, not dead code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_the_check_script_in_cpu_mode(tmp_path: Path, cpu_image: str):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", "python3")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), "--cpu", "--image", cpu_image,
                           "--out", str(out)], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"fingerprint": "ok", "determinism": "ok", "cost": "ok", "engine": "ok", "image": "ok",
                      "tests": "skipped", "run-gpu": "skipped", "run-none": "ok", "compile": "skipped"}
    cost = next(s for s in summary["steps"] if s["step"] == "cost")
    assert cost["figures"]["ratio_strict_over_off"] > 0 and cost["figures"]["device_name"] == "cpu"
    text = (out / "summary.txt").read_text()
    assert all(line.startswith("[cpu]") for line in text.splitlines()[1:])  # the device's name with every figure
    assert json.loads((out / "gpu-fingerprint.json").read_text())["gpus"]["available"] is False
