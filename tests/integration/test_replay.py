"""envkit replay on the real engine: same host, two hosts (registry and bundle), refusal, divergence, failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import EXIT_DIVERGED, EXIT_FAILED, InputChangedError, PlatformMismatchError
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker

DRAW = (
    "import json, random\n"
    "draws = [random.random() for _ in range(5)]\n"
    "json.dump({'draws': draws, 'hash': hash('envkit')}, open('draws.json', 'w'))\n"
    "print('drew', draws[0])\n"
)


def run_json(*args, **kw) -> dict:
    r = envkit(*args, **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def seeded_example(session_dir, cpu_lock, cpu_image) -> tuple[Path, str]:
    p = session_dir / "replay-project"
    p.mkdir()
    shutil.copy(ROOT / "examples" / "train.py", p / "train.py")
    out = run_json("run", "--seed", "42", "--lock", str(cpu_lock), "--json", "train.py", "--epochs", "1", cwd=p)
    return p, out["run_id"]


def test_replay_of_the_seeded_example_is_identical(seeded_example):
    project, run_id = seeded_example
    r = envkit("replay", run_id, "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"]["kind"] == "IDENTICAL" and out["verdict"]["files"] == []
    rec = json.loads((project / ".envkit" / "runs" / out["run_id"] / "record.json").read_text())
    assert rec["replay_of"] == run_id and rec["verdict"]["kind"] == "IDENTICAL"


def test_a_job_reading_urandom_diverges_naming_file_and_tensor(tmp_path, cpu_lock, cpu_image):
    (tmp_path / "noisy.py").write_text(
        "import os, torch\n"
        "torch.manual_seed(0)\n"
        "w = torch.randn(4, 4)\n"
        "w[1, 2] += os.urandom(1)[0] / 255.0 + 0.001\n"
        "torch.save({'w': w, 'b': torch.zeros(3)}, 'weights.pt')\n"
        "open('clean.txt', 'w').write('same every time')\n"
    )
    run_id = run_json("run", "--seed", "3", "--lock", str(cpu_lock), "--json", "noisy.py", cwd=tmp_path)["run_id"]
    r = envkit("replay", run_id, cwd=tmp_path)
    assert r.returncode == EXIT_DIVERGED, r.stderr
    assert "DIVERGED" in r.stdout
    assert "differs  weights.pt" in r.stdout and "clean.txt" not in r.stdout
    assert "tensor w: max |diff|" in r.stdout and "(1/16 elements)" in r.stdout
    assert "tensor b" not in r.stdout


def test_a_failing_job_replays_as_failed(tmp_path, tiny_image):
    (tmp_path / "fail.py").write_text("raise SystemExit(3)\n")
    r = envkit("run", "--seed", "1", "--image", tiny_image, "fail.py", cwd=tmp_path)
    assert r.returncode == 3
    run_id = r.stdout.strip().splitlines()[-1]
    r = envkit("replay", run_id, cwd=tmp_path)
    assert r.returncode == EXIT_FAILED and "FAILED" in r.stdout and "exited 3" in r.stdout


def test_a_changed_input_is_refused_naming_the_file(tmp_path, tiny_image):
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("a,1\n")
    (tmp_path / "read.py").write_text("print(open('/data/labels.csv').read())\n")
    run_id = run_json("run", "--seed", "1", "--image", tiny_image, "--mount", f"{data}:/data", "--json", "read.py",
                      cwd=tmp_path)["run_id"]
    (data / "labels.csv").write_text("a,2\n")
    r = envkit("replay", run_id, cwd=tmp_path)
    assert r.returncode == InputChangedError.exit_code
    assert "input /data/labels.csv changed" in r.stderr


def test_doctored_fingerprint_is_refused_then_forced(tmp_path, tiny_image):
    (tmp_path / "draw.py").write_text(DRAW)
    run_id = run_json("run", "--seed", "5", "--image", tiny_image, "--json", "draw.py", cwd=tmp_path)["run_id"]
    store = FileStore(tmp_path / ".envkit")
    rec = store.read(run_id)
    rec.fingerprint.gpus = {"available": True, "count": 1, "driver_version": "580.159.04",
                            "cuda_driver_version": "13.0",
                            "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                         "uuid": "GPU-0", "memory_bytes": 85520809984}]}
    store.write(RunRecord.from_dict(rec.to_dict()))
    r = envkit("replay", run_id, cwd=tmp_path)
    assert r.returncode == PlatformMismatchError.exit_code
    assert "gpus.devices[0].name" in r.stderr and "NVIDIA H100" in r.stderr  # the table of differing fields
    assert "--force" in r.stderr
    r = envkit("replay", run_id, "--force", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["platform_mismatch"] is True and out["verdict"]["kind"] == "IDENTICAL"


def test_two_hosts_through_a_registry(tmp_path, tiny_lock, registry, host_b):
    """Host A builds, pushes, runs and exports; host B imports and replays, pulling the image by digest."""
    repo = f"{registry}/envkit-test/tiny"
    pushed = run_json("build", str(tiny_lock), "--push", repo, "--json")
    (tmp_path / "draw.py").write_text(DRAW)
    out = run_json("run", "--seed", "11", "--lock", str(tiny_lock), "--json", "draw.py", cwd=tmp_path)
    assert pushed["repo_digest"] in out["image_digests"]
    bundle = tmp_path / "run.tar.gz"
    assert envkit("export", out["run_id"], "-o", str(bundle), cwd=tmp_path).returncode == 0
    env_b = {"DOCKER_HOST": host_b["DOCKER_HOST"], "ENVKIT_HOME": host_b["ENVKIT_HOME"]}
    elsewhere = tmp_path / "colleague"
    elsewhere.mkdir()
    assert envkit("import", str(bundle), env=env_b, cwd=elsewhere).returncode == 0
    assert host_b["client"].images.list() == [] or pushed["image_id"] not in [i.id for i in host_b["client"].images.list()]
    r = envkit("replay", out["run_id"], "--json", env=env_b, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["verdict"]["kind"] == "IDENTICAL"
    assert any("pulled by digest" in n for n in verdict["notes"])
    assert host_b["client"].images.get(pushed["image_id"]).id == pushed["image_id"]


def test_two_hosts_through_a_bundle_with_the_image(tmp_path, tiny_image, host_b):
    (tmp_path / "draw.py").write_text(DRAW)
    run_id = run_json("run", "--seed", "12", "--image", tiny_image, "--json", "draw.py", cwd=tmp_path)["run_id"]
    bundle = tmp_path / "run-with-image.tar.gz"
    r = envkit("export", run_id, "-o", str(bundle), "--with-image", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    client_b = host_b["client"]
    for img in client_b.images.list():
        client_b.images.remove(img.id, force=True)
    env_b = {"DOCKER_HOST": host_b["DOCKER_HOST"], "ENVKIT_HOME": str(tmp_path / "store-b")}
    r = envkit("import", str(bundle), env=env_b, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert client_b.images.get(tiny_image).id == tiny_image
    r = envkit("replay", run_id, "--json", env=env_b, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"]["kind"] == "IDENTICAL"


def test_a_lost_image_is_rebuilt_only_when_asked_and_is_the_recorded_one(client, tmp_path, base_image):
    """No image, no registry digest: replay says what to do; --rebuild rebuilds from the recorded lock, and since
    envkit's images are reproducible, the rebuilt image is the recorded one: the verdict says so."""
    spec = tmp_path / "lost.envkit.yaml"
    spec.write_text(f"name: lost\npython: '3.11'\nbase: {base_image}\npackages: [six]\n")
    lock = tmp_path / "lost.lock.yaml"
    assert envkit("lock", str(spec), "-o", str(lock)).returncode == 0
    (tmp_path / "draw.py").write_text(DRAW)
    run = run_json("run", "--seed", "8", "--lock", str(lock), "--json", "draw.py", cwd=tmp_path)
    client.images.remove(run["image"], force=True)
    r = envkit("replay", run["run_id"], cwd=tmp_path)
    assert r.returncode == 21, r.stderr
    assert "--rebuild" in r.stderr and "envkit export RUN --with-image" in r.stderr
    r = envkit("replay", run["run_id"], "--rebuild", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"]["kind"] == "IDENTICAL"
    assert out["verdict"]["image"] == {"recorded": run["image"], "rebuilt": run["image"], "same": True}
    assert any(f"rebuilt from the recorded lockfile: {run['image']} is the recorded image" in n for n in out["notes"])
    rec = json.loads((tmp_path / ".envkit" / "runs" / out["run_id"] / "record.json").read_text())
    assert rec["image"]["id"] == run["image"]  # the replay ran on the recorded image
    client.images.remove(run["image"], force=True)
    r = envkit("replay", run["run_id"], "--rebuild", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "IDENTICAL (on the rebuilt image, which is the recorded one)" in r.stdout
