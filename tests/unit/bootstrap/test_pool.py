"""Process pools: map over a function that draws random numbers repeats, whichever worker runs which task."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_map_repeats_whatever_the_worker_assignment(runner, method):
    # One worker runs every task in the first run, three share them in the second: same results all the same.
    specs = [(runner.script("pool.py", method, str(processes)), runner.env(seed))
             for processes, seed in ((1, 21), (3, 21), (3, 22))]
    one, three, other = runner.run_many(specs)
    for job in (one, three, other):
        assert job.returncode == 0, job.stderr[-3000:]
    assert one.data == three.data
    assert one.data["first"] != other.data["first"]
    first = one.data["first"]
    assert len({row[1] for row in first}) == len(first)  # each task draws its own numbers
    assert all(row[1] != row[2] for row in first)  # random and numpy are not one stream
    assert one.data["first"] != one.data["second"]  # a second map is a new job with new draws
    assert one.data["executor"] != other.data["executor"]
    assert len({row[1] for row in one.data["executor"]}) == len(first)
    # A worker still starting when the pool is torn down never gets to write one, so only "some".
    assert any(r["role"] == "pool worker" for r in three.reports)
