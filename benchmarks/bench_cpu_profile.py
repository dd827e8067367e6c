"""Price of the portable CPU profile: the reference training and a matmul-heavy loop, portable against native, in one run.

    python benchmarks/bench_cpu_profile.py [--reps 5] [--threads 1]

The profiles are environment variables read when torch and MKL start, so each measurement is a fresh process. The
variants run interleaved, rep by rep, so that load from elsewhere hits them alike:

- native: ``profile_env("native", threads)`` (the plain torch build's choices);
- portable env: ``profile_env("portable", threads)`` without the op override, to show what the settings cost;
- portable: the same plus ``envkit.injob.portable_ops`` installed, as the bootstrap does in a portable run.

Workloads, each timed inside its process after one warm-up round:

- train: ``examples/portable_train.py``'s 30 steps (conv, GELU, LayerNorm, Adam);
- matmul: 512x512 float32 matmuls and a 3-layer MLP forward/backward (MKL sgemm);
- adam: Adam steps on 32 float32 tensors of 64k parameters (where the sqrt override sits).

It prints, per variant, the median and the best seconds per round over the processes, and the ratios to native of
both (on a shared machine the best is the steadier figure: other load only ever adds time).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envkit.cpuprofile import profile_env  # noqa: E402  (the repo first on the path, as a script)

WORKLOADS = ("train", "matmul", "adam")
VARIANTS = {"native": ("native", False), "portable env": ("portable", False), "portable": ("portable", True)}
_STEERING = re.compile(r"(ATEN_|ONEDNN_|DNNL_|MKL_|OMP_|KMP_|OPENBLAS_|ENVKIT_).*")


# --- the workloads (run inside the worker process) ---------------------------------------------------------------
def _train(torch):
    spec = importlib.util.spec_from_file_location("portable_train", REPO / "examples" / "portable_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda: module.train(seed=0, steps=30)


def _matmul(torch):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    x = torch.randn(256, 512, generator=gen)

    def round_():
        for _ in range(20):
            a.matmul(b)
        for _ in range(5):
            mlp(x).square().mean().backward()

    return round_


def _adam(torch):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(1 << 16)) for _ in range(32)]
    for param in params:
        param.grad = torch.randn(1 << 16, generator=gen)
    opt = torch.optim.Adam(params, lr=1e-3)

    def round_():
        for _ in range(5):
            opt.step()

    return round_


def worker(workload: str, inner: int) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if os.environ.get("ENVKIT_CPU_PROFILE") == "portable":
        from envkit.injob import portable_ops

        portable_ops.install(torch)
    fn = {"train": _train, "matmul": _matmul, "adam": _adam}[workload](torch)
    fn()  # warm-up: first-call costs (oneDNN JIT, allocator) are not the profile's price
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    print(f"seconds {(time.perf_counter() - start) / inner:.6f}")


# --- the driver ----------------------------------------------------------------------------------------------------
def measure(workload: str, variant: str, threads: int, inner: int) -> float:
    profile, with_ops = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if not _STEERING.fullmatch(k)}
    env.update(profile_env(profile, threads))
    if with_ops:
        env["ENVKIT_CPU_PROFILE"] = "portable"
    out = subprocess.run([sys.executable, __file__, "--worker", workload, "--inner", str(inner)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(re.search(r"^seconds (\S+)$", out, re.M).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="processes per variant and workload (interleaved)")
    parser.add_argument("--inner", type=int, default=5, help="timed rounds inside each process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.inner)
        return

    others = list(VARIANTS)[1:]
    print(f"threads={args.threads} reps={args.reps} inner={args.inner}: seconds per round (median / best of reps), "
          "ratio to native (median / best)")
    print(f"{'workload':<8} " + " ".join(f"{v:>17}" for v in VARIANTS) + "  " + " ".join(f"{v:>17}" for v in others))
    for workload in args.workloads.split(","):
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rep in range(args.reps):
            order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                times[variant].append(measure(workload, variant, args.threads, args.inner))
        med = {v: statistics.median(t) for v, t in times.items()}
        best = {v: min(t) for v, t in times.items()}
        cells = [f"{med[v]:.4f} / {best[v]:.4f}" for v in VARIANTS]
        ratios = [f"{med[v] / med['native']:.2f} / {best[v] / best['native']:.2f}" for v in others]
        print(f"{workload:<8} " + " ".join(f"{c:>17}" for c in cells) + "  " + " ".join(f"{r:>17}" for r in ratios))


if __name__ == "__main__":
    main()
