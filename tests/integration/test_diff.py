"""Step traces and envkit diff on the real engine: a training poisoned at one step from os.urandom replays DIVERGED,
and replay and diff name that step and that parameter; another seed parts at initialisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import EXIT_DIVERGED

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker

JOB = ROOT / "tests" / "unit" / "trace_jobs" / "train.py"


@pytest.fixture(scope="module")
def project(session_dir, cpu_lock, cpu_image) -> Path:
    p = session_dir / "diff-project"
    p.mkdir()
    shutil.copy(JOB, p / "train.py")
    return p


def run_id(project: Path, lock: Path, seed: int) -> str:
    """`envkit run --trace 1` of 20 steps, poisoned at step 7."""
    r = envkit("run", "--seed", str(seed), "--lock", str(lock), "--trace", "1", "--json", "train.py", "20",
               "--poison", "7", cwd=project)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["run_id"]


def test_a_step_poisoned_from_urandom_is_named_by_replay_and_diff(project, cpu_lock):
    original = run_id(project, cpu_lock, 5)
    trace = project / ".envkit" / "runs" / original / "meta" / "trace.jsonl"
    header = json.loads(trace.read_text().splitlines()[0])
    assert header["envkit_trace"] == 1 and header["interval"] == 1

    r = envkit("replay", original, "--json", cwd=project)
    assert r.returncode == EXIT_DIVERGED, r.stderr
    out = json.loads(r.stdout)
    verdict = out["verdict"]
    assert verdict["kind"] == "DIVERGED" and [f["path"] for f in verdict["files"]] == ["model.pt"]
    assert verdict["divergence"]["step"] == 7 and verdict["divergence"]["params"] == ["head.weight"]

    r = envkit("diff", original, out["run_id"], cwd=project)
    assert r.returncode == 0, r.stderr
    assert "(B replays A)" in r.stdout
    assert "Training diverged at step 7 (parameters: head.weight)." in r.stdout
    assert "outputs: 1 of 2 differ" in r.stdout and "model.pt" in r.stdout


def test_another_seed_parts_at_initialisation_and_the_seed_is_named(project, cpu_lock):
    a, b = run_id(project, cpu_lock, 5), run_id(project, cpu_lock, 6)
    r = envkit("diff", a, b, "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["verdict"] == "diverged"
    d = data["trace"]["divergence"]
    assert d["at_initialisation"] is True and d["step"] == 0
    assert d["params"] == ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    numerics = [(x["kind"], x["name"]) for x in data["differences"] if x["changes_numerics"]]
    assert ("seed", "seed") in numerics and ("environment", "PYTHONHASHSEED") in numerics
