"""The Python API on the real engine: a notebook runs a job and replays it, with no subprocess and no parsing."""

from __future__ import annotations

import json

import pytest

import envkit
from envkit.errors import RunNotFoundError

pytestmark = pytest.mark.docker

DRAW = (
    "import json, random\n"
    "json.dump({'draws': [random.random() for _ in range(3)]}, open('draws.json', 'w'))\n"
)


def test_the_python_api_runs_a_job_and_replays_it_identical(tmp_path, tiny_image, monkeypatch):
    monkeypatch.delenv("ENVKIT_HOME", raising=False)
    (tmp_path / "draw.py").write_text(DRAW)
    run = envkit.run("draw.py", seed=3, image=tiny_image, project=tmp_path)
    assert run.ok and run.exit_code == 0
    assert [o.path for o in run.outputs] == ["draws.json"]
    assert json.loads((run.folder / "work" / "draws.json").read_text())["draws"]
    replay = envkit.replay(run.id, project=tmp_path)
    assert replay.verdict == "IDENTICAL" and replay.of == run.id and replay.details.files == []
    assert [r.run_id for r in envkit.runs(project=tmp_path)] == [replay.id, run.id]
    assert envkit.show(run.id, project=tmp_path).seed == 3
    with pytest.raises(RunNotFoundError):
        envkit.show("20200101T000000000Z-00000000", project=tmp_path)
