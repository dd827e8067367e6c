"""Two CPU ranks under torchrun (gloo): each rank's process and DataLoader worker is seeded, rank-aware."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # spawns torch processes


def test_two_rank_training_repeats_and_workers_differ_per_rank(runner):
    specs = []
    for seed in (41, 41, 42):
        argv = [str(runner.python), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                runner.script("ddp.py")[1], "."]  # each job writes rank<N>.json into its own working folder
        specs.append((argv, runner.env(seed)))
    jobs = runner.run_many(specs, timeout=300)
    ranks = []
    for job in jobs:
        assert job.returncode == 0, job.stderr[-3000:]
        work = job.report_dir.parent
        ranks.append([json.loads((work / f"rank{r}.json").read_text()) for r in (0, 1)])
    (a0, a1), (b0, b1), (c0, c1) = ranks
    assert (a0, a1) == (b0, b1)
    assert a0["final"] != c0["final"]
    assert a0["initial"] == a1["initial"] and a0["final"] == a1["final"]  # every rank seeded alike, DDP in step
    # Both ranks' workers start from one shared base seed (torch broadcasts it); envkit mixes the rank in.
    draws0 = [row[1:] for batch in a0["batches"] for row in batch]
    draws1 = [row[1:] for batch in a1["batches"] for row in batch]
    assert not set(map(tuple, draws0)) & set(map(tuple, draws1))
    roles = jobs[0].roles()
    assert {"rank 0", "rank 1", "dataloader worker 0 of rank 0", "dataloader worker 0 of rank 1"} <= set(roles)
