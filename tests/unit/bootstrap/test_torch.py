"""torch on the CPU: model init, dropout, DataLoader shuffles and worker-side draws; strict and warn levels."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest

pytestmark = pytest.mark.slow  # spawns torch processes


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_training_repeats_with_its_seed(runner, method):
    a, b, c = runner.three("loader.py", method)
    assert a.data == b.data
    for key in ("batches", "weights", "randn"):
        assert a.data[key] != c.data[key], key
    rows = [row for batch in a.data["batches"] for row in batch]
    epoch1, epoch2 = rows[:8], rows[8:]
    assert [r[0] for r in epoch1] != [r[0] for r in epoch2]  # reshuffled each epoch
    by_worker = {w: [r[2:] for r in epoch1 if r[1] == w] for w in (0.0, 1.0)}
    for draws in zip(*by_worker.values()):  # the two workers do not repeat each other's augmentation
        assert draws[0] != draws[1]
    for row in rows:
        assert len(set(row[2:])) == 4  # random, numpy, torch and default_rng are four different streams
    check_reports(a)


def check_reports(job):
    reports = {r["role"]: r for r in job.reports}
    assert {"main", "dataloader worker 0", "dataloader worker 1"} <= set(reports)
    main = reports["main"]
    assert main["libraries"]["torch"] == main["torch_version"] == version("torch")
    assert re.fullmatch("[0-9a-f]{40}", main["torch_git_version"])
    assert main["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "NEON", "SVE256", "VSX", "ZVECTOR")
    assert main["deterministic_algorithms"] is True and main["deterministic_warn_only"] is False
    assert main["cudnn_deterministic"] is True and main["cudnn_benchmark"] is False
    assert main["torch_num_threads"] == 1 and main["cuda_initialized"] is False
    worker = reports["dataloader worker 1"]
    assert worker["worker_id"] == 1 and worker["process_seed"] != main["seed"]


def test_strict_stops_a_nondeterministic_op_with_one_line_and_warn_lets_it_run(runner, tmp_path):
    # The warn run also exercises the extensions: the step trace and the portable ops get install(torch).
    hooks = {"ENVKIT_TRACE": "10", "ENVKIT_CPU_PROFILE": "portable", "MKL_CBWR": "COMPATIBLE"}
    strict, warn = runner.run_many([
        (runner.script("nondeterministic.py"), runner.env(1, determinism="strict")),
        (runner.script("nondeterministic.py"), runner.env(1, determinism="warn", **hooks)),
    ])
    assert strict.returncode == 1
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1, strict.stderr
    assert lines[0].startswith("envkit: error: put_ has no deterministic implementation")
    assert "--determinism warn" in lines[0]
    assert strict.reports[0]["errors"] == lines
    assert warn.returncode == 0 and "put_ does not have a deterministic implementation" in warn.stderr
    assert warn.reports[0]["deterministic_warn_only"] is True
    assert warn.reports[0]["extensions"] == ["trace", "portable_ops"]
