"""The exact step and the first op, on the real engine.

A training that perturbs one module's output from os.urandom at one step, traced with `--trace auto`'s sparse
records: the replay's verdict names that exact step (both jobs rerun with every step of the bracket traced), and
`envkit diff --pin` names the module and the op, with the elements that differ.

A native-profile run against the same job on an emulated Intel Haswell (examples/emulate_cpu.py runs it under
`qemu-x86_64-static -cpu Haswell` in the same image, with the same code, environment and seed): `envkit diff` names
the first op that differs, and `--pin` (a second pass on each CPU) counts its differing elements.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import EXIT_DIVERGED

from .conftest import ROOT, envkit

pytestmark = [pytest.mark.docker, pytest.mark.slow]
QEMU = shutil.which("qemu-x86_64-static")
PERTURB = ROOT / "tests" / "unit" / "optrace_jobs" / "perturb.py"
PERTURB_LINE = next(n for n, line in enumerate(PERTURB.read_text().splitlines(), 1) if "# PERTURB" in line)
STEPS, K = 60, 37


@pytest.fixture(scope="module")
def project(session_dir, cpu_lock, cpu_image) -> Path:
    p = session_dir / "pin-project"
    p.mkdir()
    for source in (PERTURB, ROOT / "examples" / "portable_train.py", ROOT / "examples" / "emulate_cpu.py"):
        shutil.copy(source, p / source.name)
    return p


def run(project: Path, lock: Path, *args: str) -> str:
    r = envkit("run", "--seed", "3", "--lock", str(lock), "--json", *args, cwd=project, timeout=1800)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["run_id"]


def record(project: Path, run_id: str) -> dict:
    return json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())


def test_the_replay_names_the_perturbed_step_and_diff_pin_names_the_module_and_op(project, cpu_lock):
    original = run(project, cpu_lock, "perturb.py", str(STEPS), "--perturb", str(K))
    steps = [json.loads(line).get("step") for line in
             (project / ".envkit" / "runs" / original / "meta" / "trace.jsonl").read_text().splitlines()[2:]]
    assert record(project, original)["trace"] == "auto" and len(steps) < STEPS // 2, steps  # sparse records

    r = envkit("replay", original, "--json", cwd=project, timeout=1800)
    assert r.returncode == EXIT_DIVERGED, r.stderr
    replayed = json.loads(r.stdout)
    d = replayed["verdict"]["divergence"]
    assert (d["step"], d["last_equal"]) == (K, K - 1), d
    assert d["params"][:2] == ["encoder.0.linear.weight", "encoder.0.linear.bias"]
    if K - 1 not in steps or K not in steps:  # the recorded steps bracketed it: the replay pinned it
        first, last = d["recorded"]["last_equal"], d["recorded"]["step"]
        assert first < K - 1 and last >= K and d["pin"]["outcome"] == "pinned"
        pins = [record(project, run_id) for run_id in d["pin"]["runs"]]
        assert [p["replay_of"] for p in pins] == [original, replayed["run_id"]]
        assert {p["trace"] for p in pins} == {f"off,steps:{first}-{last}"}
        assert all(p["pin_for"] == [original, replayed["run_id"]] for p in pins)

    r = envkit("diff", "--pin", original, replayed["run_id"], cwd=project, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert f"Training diverged at step {K} (parameters: encoder.0.linear.weight," in r.stdout
    assert (f"  first differing op: #" in r.stdout and f" aten::add.Tensor in encoder.1 (perturb.py:{PERTURB_LINE}), "
            "float32[16, 16]: 256/256 elements differ, max |diff| ") in r.stdout, r.stdout
    assert "its inputs differ: argument 1 (" in r.stdout  # the Python number drawn from os.urandom
    print(r.stdout)
    data = json.loads(envkit("diff", original, replayed["run_id"], "--json", cwd=project).stdout)  # no rerun now
    op = data["ops"]["divergence"]
    assert (op["op"], op["module"], data["ops"]["step"]) == ("aten::add.Tensor", "encoder.1", K)
    assert data["divergence"]["step"] == K and data["hints"] == []


@pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64-static (apt-get install qemu-user-static)")
def test_a_native_run_and_its_emulated_haswell_counterpart_part_at_a_named_op(project, cpu_lock):
    common = ("--cpu-profile", "native", "--trace", "ops:1")
    native = run(project, cpu_lock, *common, "portable_train.py", "w.pt", "--steps", "1")
    emulated = run(project, cpu_lock, *common, "--mount", f"{QEMU}:/opt/qemu/qemu-x86_64-static",
                   "emulate_cpu.py", "Haswell", "portable_train.py", "w.pt", "--steps", "1")
    capability = [record(project, i)["bootstrap"][0]["cpu_capability"] for i in (native, emulated)]
    assert capability[1] == "AVX2", capability
    has_avx512 = any(f.startswith("avx512") for f in record(project, native)["fingerprint"]["host"]["cpu_flags"])

    data = json.loads(envkit("diff", native, emulated, "--json", cwd=project).stdout)
    op = data["ops"]["divergence"] if data["ops"] else None
    if op is None:
        assert not has_avx512, "a CPU with AVX-512 and the emulated Haswell computed step 1 alike"
        pytest.skip(f"this CPU has no AVX-512 (ATen capability {capability[0]}): its kernels are the Haswell's, and "
                    "the two runs agree op for op")
    assert op["kind"] == "output" and op["at"].startswith("/work/portable_train.py:")
    if has_avx512:  # oneDNN's AVX-512 and AVX2 convolutions add the bias at different points (docs/divergence.md)
        assert (op["index_a"], op["op"], op["module"]) == (0, "aten::convolution", "features.0")

    r = envkit("diff", "--pin", native, emulated, cwd=project, timeout=1800)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "first differing op: " in x)
    assert f"#{op['index_a']} {op['op']} in {op['module']} (portable_train.py:" in line and " elements differ" in line
    assert "  its inputs are equal in both runs: the op itself computed differently" in r.stdout
    assert "fingerprint  container.job.cpu_capability: " in r.stdout
    print(r.stdout)
