"""The step trace and the op trace as the bootstrap installs them from the environment `envkit run --trace` sets:
both at once (the step trace's own ops stay out of the op trace), a window of steps alone (what a pin run records),
and a bad op-trace step (a warning; the job runs on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PERTURB = REPO / "tests" / "unit" / "optrace_jobs" / "perturb.py"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_bootstrap_installs_the_traces_the_environment_asks_for(runner):
    argv = [str(runner.python), str(PERTURB), "8", "--perturb", "3"]
    both, ops_only, window, bad = runner.run_many([
        (argv, runner.env(5, ENVKIT_TRACE="1", ENVKIT_TRACE_OPS="3")),
        (argv, runner.env(5, ENVKIT_TRACE_OPS="3")),
        (argv, runner.env(5, ENVKIT_TRACE_STEPS="2-4")),
        (argv, runner.env(5, ENVKIT_TRACE_OPS="third")),
    ])
    for job in (both, ops_only, window, bad):
        assert job.returncode == 0, job.stderr[-3000:]
    assert [r["extensions"] for r in both.reports] == [["trace", "optrace"]]
    ops = lines(both.report_dir / "optrace.jsonl")
    assert ops[0]["step"] == 3 and ops[-1]["complete"] is True
    alone = lines(ops_only.report_dir / "optrace.jsonl")
    # The step trace digests the parameters inside the traced step (its hooks run there); none of its ops show.
    assert [o["op"] for o in ops[1:-1]] == [o["op"] for o in alone[1:-1]]
    assert [r["step"] for r in lines(both.report_dir / "trace.jsonl")[2:]] == list(range(9)) + [8]

    steps = lines(window.report_dir / "trace.jsonl")
    assert steps[0]["interval"] is None and steps[0]["window"] == [2, 4]
    assert [(r["step"], r.get("final", False)) for r in steps[2:]] == [(0, False), (2, False), (3, False),
                                                                       (4, False), (8, True)]
    assert not list(window.report_dir.glob("optrace*"))

    assert ("envkit: warning: optrace.install(torch) failed (ValueError: ENVKIT_TRACE_OPS='third' is not a positive "
            "integer)") in bad.stderr
    assert not list(bad.report_dir.glob("optrace*")) and bad.reports[0]["extensions"] == []
