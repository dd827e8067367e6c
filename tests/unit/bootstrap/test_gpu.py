"""CUDA paths: seeding of every device, deterministic reductions in strict, the strict error for a CUDA op."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu

IDLE_TORCH = "import json, torch; print(json.dumps(torch.cuda.is_initialized()))"
NONDETERMINISTIC_CUDA = ("import torch; x = torch.zeros(8, device='cuda'); "
                         "x.put_(torch.tensor([0, 0], device='cuda'), torch.ones(2, device='cuda'))")


def test_cuda_draws_and_reductions_repeat_in_strict(runner):
    a, b, c = runner.three("cuda.py", seeds=(71, 71, 72))
    assert a.data["initialized_at_start"] is False  # seeding CUDA is queued, never forces its initialisation
    assert a.data == b.data
    assert a.data["rand"] != c.data["rand"] and len(a.data["rand"]) >= 1
    assert a.data["index_add_"] == c.data["index_add_"]  # same fixed inputs, deterministic kernels
    assert a.data["rng_state_round_trip"] is True
    main = next(r for r in a.reports if r["role"] == "main")
    assert main["libraries"]["torch.cuda"] and main["torch_cuda_version"] and main["cudnn_version"]


def test_torch_without_cuda_use_leaves_cuda_uninitialised(runner):
    (job,) = runner.run_many([([str(runner.python), "-c", IDLE_TORCH], runner.env(1))])
    assert job.returncode == 0, job.stderr
    assert job.data is False and job.reports[0]["cuda_initialized"] is False


def test_strict_error_for_a_cuda_op_is_one_line(runner):
    (job,) = runner.run_many([([str(runner.python), "-c", NONDETERMINISTIC_CUDA], runner.env(1))])
    assert job.returncode == 1
    lines = job.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no deterministic implementation" in lines[0], job.stderr
    assert "--determinism warn" in lines[0]
