"""envkit.seed_everything / rng_state / set_rng_state in a plain process, and the pieces of the bootstrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.injob import bootstrap, libraries, seeds, state

PTH = Path(__file__).resolve().parents[3] / "docker" / "envkit-bootstrap.pth"

HOST_JOB = """
import json, multiprocessing as mp, random, sys
import numpy as np
import envkit

def task(i):
    return [random.random(), float(np.random.rand()), np.random.default_rng().random()]

if __name__ == "__main__":
    report = envkit.seed_everything(int(sys.argv[1]), determinism="strict")
    out = [random.random(), float(np.random.rand()), np.random.default_rng().random(), random.Random().random()]
    with mp.get_context("spawn").Pool(2) as pool:  # children without the .pth: they follow the environment
        out.append(pool.map(task, range(4)))
    print(json.dumps({"out": out, "role": report["role"], "torch": "torch" in sys.modules}))
"""


def test_seed_everything_in_a_plain_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(HOST_JOB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_")}
    procs = [subprocess.Popen([sys.executable, str(script), str(seed)], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (61, 61, 62)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stderr == ""  # no hash-seed warning outside `envkit run`: it is only in the report
        results.append(json.loads(stdout))
    a, b, c = results
    assert a == b
    assert a["out"][:4] != c["out"][:4] and a["out"][4] != c["out"][4]
    assert a["role"] == "main" and a["torch"] is False


@pytest.mark.parametrize("kwargs, bad", [
    ({"seed": -1}, "-1"), ({"seed": 2**32}, str(2**32)), ({"seed": "x"}, "'x'"),
    ({"seed": 1, "determinism": "loose"}, "'loose'"), ({"seed": 1, "threads": 0}, "0"),
])
def test_seed_everything_rejects_bad_values_with_the_value_in_the_message(kwargs, bad):
    with pytest.raises(ValueError, match=bad.replace("*", r"\*")):
        bootstrap.seed_everything(**kwargs)


def test_set_rng_state_rejects_what_rng_state_did_not_make():
    with pytest.raises(ValueError, match="envkit.rng_state"):
        bootstrap.set_rng_state({"random": None})


# The text torch raises (aten/src/ATen/Context.cpp, alertNotDeterministic), for a CUDA op this machine cannot run.
TORCH_MESSAGE = (
    "index_add_cuda_ does not have a deterministic implementation, but you set "
    "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation, or you can "
    "use the 'warn_only=True' option, if that's acceptable for your application. You can also file an issue at "
    "https://github.com/pytorch/pytorch/issues to help us prioritize adding deterministic support for this "
    "operation.")


def test_strict_error_line_names_the_op_and_suggests_warn():
    line = libraries.nondeterministic_op_line(RuntimeError(TORCH_MESSAGE))
    assert line == ("envkit: error: index_add_cuda_ has no deterministic implementation and the determinism level is "
                    "strict; rerun with `--determinism warn` to let it run with a warning")
    assert "\n" not in line


def test_strict_error_line_sees_through_workers_and_causes():
    # A DataLoader worker's error comes back as a new RuntimeError whose text holds the worker's traceback.
    wrapped = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           f"call last):\n  File \"x.py\", line 1\nRuntimeError: {TORCH_MESSAGE}\n")
    assert "index_add_cuda_ has no deterministic" in libraries.nondeterministic_op_line(wrapped)
    try:
        try:
            raise RuntimeError(TORCH_MESSAGE)
        except RuntimeError as inner:
            raise ValueError("while training") from inner
    except ValueError as outer:
        assert "index_add_cuda_" in libraries.nondeterministic_op_line(outer, in_run=False)
    assert libraries.nondeterministic_op_line(RuntimeError("CUDA out of memory")) is None


def test_derived_seeds_are_stable_64_bit_and_distinct():
    derived = {seeds.derive_seed(42, "main", kind, n) for kind in ("a", "b") for n in range(100)}
    assert len(derived) == 200 and all(0 <= s < 2**64 for s in derived)
    assert seeds.derive_seed(42, "ab") != seeds.derive_seed(42, "a", "b")
    assert seeds.derive_seed(2**70, None) == seeds.derive_seed(2**70, None)


def test_report_writer_emits_json():
    value = {"a": None, "b": [True, False, 1, 2.5, "é\"\n"], "c": {"x": "y"}, "d": (1, 2), "e": float("nan")}
    assert json.loads(state.dumps(value)) == {**value, "d": [1, 2], "e": None}


def test_pth_is_one_import_line_that_waits_for_the_seed():
    lines = PTH.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import ")  # site.py executes only lines starting with import
    assert "'ENVKIT_SEED' in os.environ and" in lines[0] and "envkit_injob.bootstrap" in lines[0]
