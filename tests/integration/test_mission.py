"""The mission's three commands as written, on the real engine, with a second engine as the other host:

    envkit build                                   # in a project with only envkit.yaml and train.py
    envkit run --seed 42 train.py
    envkit replay REGISTRY/REPO@sha256:...         # on a host with an empty store and an empty engine

Host A is this machine's engine; host B is the `host_b` fixture's dockerd (its own data root: no images) with a store
of its own; the registry is Debian's docker-registry on 127.0.0.1. Also: a run whose code snapshot was altered in the
registry is refused on B, and both engines writing one shared store at once keep every run intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .test_registry_runs import blob_data, layer_digest

pytestmark = pytest.mark.docker

TRAIN = '''"""A small training: a line fitted by SGD to noisy points, reshuffled every epoch (standard library only)."""
import json
import random

points = [(x / 100, 3 * x / 100 + 0.5 + random.gauss(0, 0.1)) for x in range(200)]
w, b = random.random(), random.random()
for epoch in range(20):
    random.shuffle(points)
    for x, y in points:
        err = w * x + b - y
        w, b = w - 0.01 * err * x, b - 0.01 * err
print(f"w={w:.6f} b={b:.6f}")
json.dump({"w": w, "b": b}, open("model.json", "w"))
'''


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real CLI as a user runs it: no ENVKIT_HOME unless given (the store is then the project's .envkit)."""
    base = {k: v for k, v in os.environ.items() if k not in ("ENVKIT_HOME", "DOCKER_HOST")}
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, **(env or {})}, timeout=timeout)


def on_b(host_b: dict, store: Path) -> dict[str, str]:
    return {"DOCKER_HOST": host_b["DOCKER_HOST"], "ENVKIT_HOME": str(store)}


@pytest.fixture(scope="module")
def host_a_run(base_image, registry, client, tmp_path_factory):
    """On host A: a project with only envkit.yaml and train.py; `envkit build`, `envkit run --seed 42 train.py`,
    `envkit push`. Returns the project, the run id, the pushed reference and the push's JSON."""
    project = tmp_path_factory.mktemp("mission") / "project"
    project.mkdir()
    (project / "envkit.yaml").write_text(f"name: mission\npython: '3.11'\nbase: {base_image}\npackages: [six]\n")
    (project / "train.py").write_text(TRAIN + f"# {uuid.uuid4().hex}\n")  # blobs of its own in the registry

    r = cli("build", cwd=project)
    assert r.returncode == 0, r.stderr
    assert (project / "lockfiles" / "mission.lock.yaml").is_file()  # locked first, as `uv sync` makes uv.lock
    assert "locking envkit.yaml into lockfiles/mission.lock.yaml" in r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha256:")
    again = cli("build", cwd=project)  # now the one lock under lockfiles/: a cache hit, the same image
    assert again.returncode == 0 and again.stdout.strip() == image_id, again.stderr
    assert "(cache hit)" in again.stderr

    r = cli("run", "--seed", "42", "train.py", cwd=project)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip().splitlines()[-1]
    record = json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())
    assert record["image"]["id"] == image_id and record["seed"] == 42
    assert [o["path"] for o in record["outputs"]] == ["model.json"]

    repo = f"{registry}/envkit-test/mission-{uuid.uuid4().hex[:8]}"
    r = cli("push", run_id, repo, "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    assert pushed["ref"].startswith(f"{repo}@sha256:") and pushed["image_pushed"] is True
    record = json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())
    assert pushed["image"] in record["image"]["digests"]  # recorded before the run was pushed
    r = cli("push", run_id, repo, cwd=project)  # again: the registry has the image; the same artifact
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == pushed["ref"] and "already in the registry" in r.stderr
    yield {"project": project, "run_id": run_id, "ref": pushed["ref"], "repo": repo, "image_id": image_id,
           "model": (project / ".envkit" / "runs" / run_id / "work" / "model.json").read_bytes()}
    # The tag `envkit push` put on host A's image for the push: removed (the image keeps its build tag).
    client.api.remove_image(f"{repo}:image-{image_id.removeprefix('sha256:')[:12]}", noprune=True)


def test_host_b_replays_the_pushed_run_identical(host_a_run, host_b, tmp_path):
    client_b = host_b["client"]
    assert host_a_run["image_id"] not in {i.id for i in client_b.images.list()}  # B's engine has never seen it
    store_b = tmp_path / "store-b"
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    r = cli("replay", host_a_run["ref"], cwd=elsewhere, env=on_b(host_b, store_b))
    assert r.returncode == 0, r.stderr
    run_id = host_a_run["run_id"]
    # After the job's own output, streamed; the verdict's line, then what it compared.
    assert any(line.startswith("replay ") and line.endswith(f"of {run_id}: IDENTICAL")
               for line in r.stdout.splitlines()), r.stdout
    assert f"run {run_id}: pulled, every file checked" in r.stderr
    assert f"image pulled by digest {host_a_run['repo']}@sha256:" in r.stderr
    assert client_b.images.get(host_a_run["image_id"]).id == host_a_run["image_id"]  # B's engine pulled it
    origin = json.loads((store_b / "runs" / run_id / "origin.json").read_text())
    assert origin["registry"] == host_a_run["ref"]  # marked as imported, like a bundle's run
    listing = json.loads(cli("runs", "--json", cwd=elsewhere, env=on_b(host_b, store_b)).stdout)
    replay_id = next(row["run_id"] for row in listing if row["replay_of"] == run_id)
    assert (store_b / "runs" / replay_id / "work" / "model.json").read_bytes() == host_a_run["model"]

    again = cli("replay", run_id, "--from", host_a_run["repo"], "--json", cwd=elsewhere, env=on_b(host_b, store_b))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["verdict"]["kind"] == "IDENTICAL"


def test_pull_fetches_without_replaying(host_a_run, host_b, tmp_path):
    store = tmp_path / "store-pull"
    r = cli("pull", host_a_run["run_id"], "--from", host_a_run["repo"], "--json", cwd=tmp_path,
            env=on_b(host_b, store))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"run_id": host_a_run["run_id"], "already_present": False, "not_carried": []}
    assert [p.name for p in (store / "runs").iterdir()] == [host_a_run["run_id"]]  # no replay ran
    r = cli("pull", host_a_run["ref"], cwd=tmp_path, env=on_b(host_b, store))
    assert r.returncode == 0 and r.stdout.strip() == host_a_run["run_id"]
    assert "already in this store" in r.stderr


def test_a_run_whose_code_was_altered_in_the_registry_is_refused(host_a_run, host_b, session_dir, tmp_path):
    blob = blob_data(session_dir, layer_digest(host_a_run["ref"], "code/train.py"))
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b"0.01 * err", b"0.02 * err"))
    try:
        store_b = tmp_path / "store-b"
        r = cli("replay", host_a_run["ref"], cwd=tmp_path, env=on_b(host_b, store_b))
    finally:
        blob.write_bytes(original)
    assert r.returncode == 42, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-2] == "error: code/train.py does not match its sha256 in the manifest (altered in the registry)"
    assert lines[-1].startswith("hint: do not use this artifact")
    assert not (store_b / "runs").exists() or [p.name for p in (store_b / "runs").iterdir()] == []


def test_two_engines_share_one_store(host_a_run, host_b, tmp_path):
    """ENVKIT_HOME on a filesystem both hosts see: runs from both engines at the same time, every one intact, and
    either host replays the other's run from the shared store with no push."""
    image_id = host_a_run["image_id"]
    digest_ref = f"{host_a_run['repo']}@" + json.loads(
        (host_a_run["project"] / ".envkit" / "runs" / host_a_run["run_id"] / "record.json").read_text()
    )["image"]["digests"][0].split("@", 1)[1]
    repo, _, digest = digest_ref.partition("@")
    host_b["client"].api.pull(repo, tag=digest)  # B's engine gets the image the way replay would
    assert host_b["client"].images.get(image_id).id == image_id
    shared = tmp_path / "shared-store"
    project = host_a_run["project"]
    env_a = {"ENVKIT_HOME": str(shared)}
    env_b = on_b(host_b, shared)

    def job(i: int) -> subprocess.CompletedProcess:
        return cli("run", "--seed", str(i), "--image", image_id, "train.py", cwd=project,
                   env=env_a if i % 2 else env_b)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, range(4)))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    ids = [r.stdout.strip().splitlines()[-1] for r in results]
    assert len(set(ids)) == 4
    listing = cli("runs", "--json", cwd=project, env=env_b)
    rows = json.loads(listing.stdout)
    assert sorted(row["run_id"] for row in rows) == sorted(ids) and {row["status"] for row in rows} == {"succeeded"}
    for line in (shared / "index.jsonl").read_bytes().splitlines():
        assert len(line.split(b"\t")) == 4 and json.loads(line.split(b"\t")[3])["run_id"]
    on_a = ids[1]  # run by host A's engine; replayed by host B's
    r = cli("replay", on_a, cwd=project, env=env_b)
    assert r.returncode == 0, r.stderr
    assert any(line.endswith(f"of {on_a}: IDENTICAL") for line in r.stdout.splitlines()), r.stdout
