"""Checkpoint and resume with envkit.rng_state(): the resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # spawns torch processes


def test_resume_from_checkpoint_is_bit_identical(runner, tmp_path):
    checkpoint = str(tmp_path / "half.pt")
    # Two at a time (two cores): the uninterrupted run beside the first half, then the resume beside the other seed.
    full, first = runner.run_many([
        (runner.script("resume.py", "full", "-"), runner.env(51)),
        (runner.script("resume.py", "first", checkpoint), runner.env(51)),
    ])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed, other = runner.run_many([
        (runner.script("resume.py", "resume", checkpoint), runner.env(51)),
        (runner.script("resume.py", "full", "-"), runner.env(52)),
    ])
    for job in (full, other, resumed):
        assert job.returncode == 0, job.stderr[-3000:]
    assert resumed.data["weights_hex"] == full.data["weights_hex"]
    assert other.data["weights_hex"] != full.data["weights_hex"]
