"""Pushing and pulling a run through docker-registry against plain `curl` moving the same blobs, in one run.

    python benchmarks/bench_registry_runs.py [--output-mb 100] [--code-files 100] [--repeat 3]

The run folder: a project of --code-files small files, a log, a lock, and one output of --output-mb MB. A private
docker-registry on 127.0.0.1 (the Debian package) receives each push in a fresh repository, so every blob travels.
Contenders, best of --repeat each:
  push  envkit (hashes the files the record does not vouch for, then HEAD, POST, PUT per blob, four at a time; the
        manifest) against curl: one POST and one streamed PUT (-T) per blob, one at a time, and one PUT of the same
        manifest; its digests are given for free
  pull  envkit (the manifest's digest checked, every blob hashed while it streams; for the whole run, every file
        checked against the record and installed in an empty store) against curl: one GET per blob, nothing checked
Two cases: the output's blob alone (push_artifact / pull_artifact against one curl each way), and the whole run
(push_run / pull_run), where curl's process per request weighs on the small files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from envkit.manifest import ManifestEntry, manifest
from envkit.run.snapshot import snapshot
from envkit.store.filestore import FileStore
from envkit.store.oci import pull_artifact, push_artifact
from envkit.store.record import CodeInfo, RunRecord
from envkit.store.registry import pull_run, push_run, run_contents


def best(fn: Callable[[int], object], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return min(times)


def start_registry(root: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("docker-registry")
    if exe is None:
        sys.exit("docker-registry is not installed (apt-get install docker-registry)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([exe, "serve", str(root / "registry.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("docker-registry did not start")


def make_run(root: Path, output_mb: int, code_files: int) -> tuple[FileStore, RunRecord]:
    project = root / "project"
    for i in range(code_files):
        path = project / f"pkg{i % 10}" / f"mod{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"X = {i}\n" + "# padding\n" * 200)
    store = FileStore(root / "store")
    run_id = store.create_run()
    run = store.run_dir(run_id)
    code = snapshot(project, run / "work")
    shutil.copytree(run / "work", run / "code")
    (run / "output").mkdir()
    block = os.urandom(1 << 20)
    with open(run / "output" / "model.bin", "wb") as f:
        for _ in range(output_mb):
            f.write(block)
    (run / "stdout.log").write_text("epoch 1 loss 0.5\n" * 1000)
    (run / "lock.yaml").write_text("version: 1\n")
    outputs = [ManifestEntry("$ENVKIT_OUTPUT_DIR/" + e.path, e.size, e.sha256)
               for e in manifest(run / "output").entries]
    record = RunRecord(run_id=run_id, status="succeeded", script="pkg0/mod0000.py", seed=1,
                       code=CodeInfo(sha256=code.sha256, files=code.entries), outputs=outputs)
    store.write(record)
    return store, record


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", "-f", *args], check=True, capture_output=True, text=True).stdout


def curl_push(registry: str, repo: str, blobs: list[tuple[Path, str]], manifest_body: bytes, tmp: Path) -> None:
    for path, digest in blobs:
        headers = curl("-X", "POST", "-D", "-", "-o", "/dev/null", f"http://{registry}/v2/{repo}/blobs/uploads/")
        location = next(line.split(":", 1)[1].strip() for line in headers.splitlines()
                        if line.lower().startswith("location:"))
        curl("-X", "PUT", "-T", str(path), "-H", "Content-Type: application/octet-stream",
             f"{location}&digest={digest}")
    (tmp / "manifest.json").write_bytes(manifest_body)
    curl("-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary",
         f"@{tmp / 'manifest.json'}", f"http://{registry}/v2/{repo}/manifests/latest")


def curl_pull(registry: str, repo: str, digests: list[str], out: Path) -> None:
    out.mkdir()
    for digest in digests:
        curl("-o", str(out / digest[7:]), f"http://{registry}/v2/{repo}/blobs/{digest}")


def fetch_artifact(registry: str, ref: str, root: Path) -> tuple[bytes, list[tuple[Path, str]], list[str]]:
    """The manifest of a pushed artifact and its config blob, for curl to push the same thing again."""
    repo, digest = ref.split("/", 1)[1].split("@")
    body = curl(f"http://{registry}/v2/{repo}/manifests/{digest}", "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json").encode()
    manifest = json.loads(body)
    config = root / f"config-{digest[7:19]}.json"
    curl("-o", str(config), f"http://{registry}/v2/{repo}/blobs/{manifest['config']['digest']}")
    return body, [(config, manifest["config"]["digest"])], [x["digest"] for x in manifest["layers"]]


def measure(registry: str, root: Path, n: int, case: tuple, digest_of: dict[Path, str], repeat: int) -> tuple:
    """(label, MiB, envkit push, curl push, envkit pull, curl pull) of one case, each pushed to fresh repositories."""
    label, files, push, pull = case
    refs: list[str] = []
    t_push = best(lambda i: refs.append(push(f"{registry}/bench/envkit{n}-{i}")), repeat)
    body, config, digests = fetch_artifact(registry, refs[0], root)
    blobs = [(p, digest_of[p]) for _, p in files] + config
    t_curl_push = best(lambda i: curl_push(registry, f"bench/curl{n}-{i}", blobs, body, root), repeat)
    repo = refs[0].split("/", 1)[1].split("@")[0]
    t_pull = best(lambda i: pull(refs[0], i), repeat)
    t_curl_pull = best(lambda i: curl_pull(registry, repo, digests, root / f"curl{n}-{i}"), repeat)
    return label, sum(p.stat().st_size for _, p in files) / 2**20, t_push, t_curl_push, t_pull, t_curl_pull


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-mb", type=int, default=100)
    ap.add_argument("--code-files", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        root = Path(tmp)
        proc, registry = start_registry(root)
        try:
            store, record = make_run(root, a.output_mb, a.code_files)
            run = store.run_dir(record.run_id)
            limit = (a.output_mb + 1) << 20
            contents = run_contents(run, record, limit)
            digest_of = {p: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for _, p in contents.files}
            big = run / "output" / "model.bin"
            cases = [
                (f"one {a.output_mb} MiB blob", [("output/model.bin", big)],
                 lambda repo: push_artifact(repo, [("output/model.bin", big)]),
                 lambda ref, i: pull_artifact(ref, root / f"art{i}", 2**40, 10)),
                (f"whole run ({len(contents.files)} files)", contents.files,
                 lambda repo: push_run(run, record, repo, max_output_bytes=limit)[0],
                 lambda ref, i: pull_run(FileStore(root / f"store{i}"), ref)),
            ]
            rows = [measure(registry, root, n, case, digest_of, a.repeat) for n, case in enumerate(cases)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"docker-registry on 127.0.0.1, {os.cpu_count()} cores; best of {a.repeat}; curl: one process per request")
    print(f"{'':26} {'envkit':>17} {'curl':>17} {'envkit/curl':>12}")
    for label, mb, *times in rows:
        for what, ours, theirs in (("push", times[0], times[1]), ("pull", times[2], times[3])):
            print(f"{label + ' ' + what:26} {ours:6.2f} s {mb / ours:4.0f} MB/s {theirs:6.2f} s "
                  f"{mb / theirs:4.0f} MB/s {ours / theirs:11.2f}x")


if __name__ == "__main__":
    main()
