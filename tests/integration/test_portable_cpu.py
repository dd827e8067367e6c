"""The portable CPU profile, proven on a second CPU: the reference training natively and on an emulated Intel Haswell.

``qemu-x86_64-static -cpu Haswell`` runs this host's own Python as an Intel CPU with AVX2 and no AVX-512, so the two
runs share every file and differ only in the processor. Under the native profile the weights must differ (else the
emulator would prove nothing); under the portable profile, with the environment of
:func:`envkit.cpuprofile.profile_env` and the ops of ``envkit.injob.portable_ops`` installed as the bootstrap installs
them, they must be the same bits, for one thread and for two.

For now the jobs run with the host's Python and environment variables; in CI the same happens inside the image.

The emulator is a CPU of its own, not a perfect Haswell: QEMU 7.2 computes ``rcpps``/``rsqrtps`` exactly (real CPUs
give 12-bit approximations, each family its own) and gets oneDNN's JIT LSTM kernel wrong (0.19 off a float64
reference, where the host is within 4e-8). The reference training uses neither; a difference here is worth checking
against an exact reference before blaming a library.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.cpuprofile import THREAD_ENV_VARS, profile_env

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "portable_train.py"
QEMU = shutil.which("qemu-x86_64-static")
EMULATED_CPU = "Haswell"
NATIVE_TIMEOUT_S = 120
EMULATED_TIMEOUT_S = 420  # about 25 s here with one thread; a slow shared runner gets ample room

# What the bootstrap does for a portable run (ENVKIT_CPU_PROFILE=portable): install the portable ops once torch is
# imported, then run the unmodified script.
WRAPPER = """\
import os, runpy, sys
import torch
if os.environ.get("ENVKIT_CPU_PROFILE") == "portable":
    from envkit.injob import portable_ops
    portable_ops.install(torch)
print("capability", torch.backends.cpu.get_cpu_capability(), flush=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Variables that steer kernels or threads: cleared so that only the profile's settings are in effect.
_STEERING = re.compile(r"(ATEN_|ONEDNN_|DNNL_|MKL_|OMP_|KMP_|GOMP_|OPENBLAS_|ENVKIT_).*")

needs_qemu = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs qemu-x86_64-static on an x86_64 host (apt-get install qemu-user-static)",
)


def _train(tmp_path: Path, profile: str, threads: int, emulated: bool) -> tuple[str, str, Path]:
    """(weights sha256, ATen capability in effect, weights file) of one reference training."""
    out = tmp_path / f"{profile}-t{threads}-{'emulated' if emulated else 'native'}.pt"
    env = {k: v for k, v in os.environ.items() if not _STEERING.fullmatch(k)}
    env.update(profile_env(profile, threads))
    env["ENVKIT_CPU_PROFILE"] = profile
    cmd = [sys.executable, "-c", WRAPPER, str(TRAIN), str(out)]
    if emulated:
        cmd = [QEMU, "-cpu", EMULATED_CPU, *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=EMULATED_TIMEOUT_S if emulated else NATIVE_TIMEOUT_S)
    assert proc.returncode == 0, f"training failed ({' '.join(cmd[:4])} ...):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    digest = re.search(r"^sha256 ([0-9a-f]{64})$", proc.stdout, re.M)
    capability = re.search(r"^capability (\S+)$", proc.stdout, re.M)
    assert digest and capability, f"unexpected output:\n{proc.stdout}"
    return digest.group(1), capability.group(1), out


def _differing_tensors(a: Path, b: Path) -> list[str]:
    import torch

    sa, sb = torch.load(a), torch.load(b)
    return [name for name in sa if not torch.equal(sa[name].view(torch.uint8), sb[name].view(torch.uint8))]


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("threads", [1, 2])
def test_portable_profile_gives_the_same_bits_on_another_cpu(tmp_path: Path, threads: int) -> None:
    here, here_cap, here_file = _train(tmp_path, "portable", threads, emulated=False)
    there, there_cap, there_file = _train(tmp_path, "portable", threads, emulated=True)
    assert here_cap == there_cap == "AVX2", "the portable profile pins ATen to AVX2 kernels"
    assert here == there, (
        f"portable profile, {threads} thread(s): weights differ between this CPU and the emulated {EMULATED_CPU} "
        f"in {_differing_tensors(here_file, there_file)}")


@pytest.mark.slow
@needs_qemu
def test_native_profile_gives_other_bits_on_another_cpu(tmp_path: Path) -> None:
    # Without this the portable test could pass because the emulator computes like the host.
    here, here_cap, _ = _train(tmp_path, "native", 1, emulated=False)
    there, there_cap, _ = _train(tmp_path, "native", 1, emulated=True)
    assert here != there, (
        f"native profile: this CPU ({here_cap}) and the emulated {EMULATED_CPU} ({there_cap}) gave the same "
        "weights, so the emulator does not stand for another CPU here")


@pytest.mark.slow  # a million samples per dtype through torch
def test_portable_sqrt_is_correctly_rounded() -> None:
    # What makes Adam portable: the override's sqrt is the IEEE square root, checked against numpy's (hardware
    # sqrtps/sqrtpd) on a million random float32 and float64 bit patterns, subnormals and the special values included.
    pytest.importorskip("numpy")
    code = """
import numpy as np, torch
from envkit.injob import portable_ops
portable_ops.install(torch)
g = torch.Generator().manual_seed(5)
bad = 0
for bits, fdt, idt in ((31, torch.float32, np.int32), (63, torch.float64, np.int64)):
    i = torch.randint(0, 2**bits - 1, (1 << 20,), generator=g, dtype=torch.int64)
    x = (i.to(torch.int32) if fdt == torch.float32 else i).view(fdt)
    x = torch.cat([x, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1.0], dtype=fdt)])
    with np.errstate(invalid="ignore"):
        want = np.sqrt(x.numpy())
    for got in (torch.sqrt(x), x.pow(0.5), torch._foreach_sqrt([x])[0]):
        g_, w_ = got.numpy(), want
        same = (g_.view(idt) == w_.view(idt)) | (np.isnan(g_) & np.isnan(w_))
        bad += int((~same).sum())
print("mismatches", bad)
"""
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mismatches 0" in proc.stdout, proc.stdout


def test_profiles_pin_one_thread_count_everywhere() -> None:
    env = profile_env("portable", 3)
    assert {env[name] for name in THREAD_ENV_VARS} == {"3"}
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "ATEN_CPU_CAPABILITY" not in profile_env("native", 3)
