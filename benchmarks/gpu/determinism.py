"""Strict mode on a device: index_add_ and scatter_add_ identical run to run, and nondeterministic ops refused.

    python benchmarks/gpu/determinism.py [--device cuda|cpu] [--repeats 3]

Each repeat is a fresh process (``--one LEVEL``), as runs are: the reductions' inputs come from a fixed generator,
so only the kernels can make two processes differ (with atomics, float sums land in another order). Prints one JSON
object: per level (strict, off) whether every repeat gave the same bytes, and whether strict refused ``put_`` and
``histc`` (CUDA) with envkit's one-line error. ``off`` differing is expected on a GPU (that is what
strict is for); on the CPU both agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

N = 1 << 22
BINS = 64


def one(level: str, device: str) -> dict:
    """Run the reductions in this process at a determinism level; their bytes as hex digests."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts, as images set it
    import hashlib

    import torch

    import envkit

    envkit.seed_everything(1234, determinism=level)
    gen = torch.Generator(device=device).manual_seed(1234)
    src = torch.randn(N, device=device, generator=gen)
    index = torch.randint(0, BINS, (N,), device=device, generator=gen)
    out = {}
    for name, fn in (("index_add_", lambda: torch.zeros(BINS, device=device).index_add_(0, index, src)),
                     ("scatter_add_", lambda: torch.zeros(BINS, device=device).scatter_add_(0, index, src))):
        out[name] = hashlib.sha256(fn().cpu().numpy().tobytes()).hexdigest()[:16]
    return out


def refused(device: str) -> dict:
    """Whether strict stops each nondeterministic op with envkit's one line (a subprocess each: the error ends it)."""
    ops = {"put_": "torch.zeros(8, device=D).put_(torch.tensor([0, 0], device=D), torch.ones(2, device=D))"}
    if device == "cuda":  # torch has no deterministic CUDA histc (its CPU one is deterministic)
        ops["histc"] = "torch.histc(torch.rand(1000, device=D), bins=10)"
    out = {}
    for name, expr in ops.items():
        code = (f"import torch, envkit; envkit.seed_everything(1, determinism='strict'); D = {device!r}; "
                f"torch.cuda.synchronize() if D == 'cuda' else None; {expr}; "
                f"torch.cuda.synchronize() if D == 'cuda' else None")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        err = proc.stderr.strip().splitlines()
        out[name] = {"refused": proc.returncode != 0 and any("deterministic" in line for line in err),
                     "last_line": err[-1][:200] if err else ""}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=("strict", "off"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.device)))
        return 0
    result: dict = {"device": args.device}
    for level in ("strict", "off"):
        runs = []
        for _ in range(args.repeats):
            proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", level],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                result[level] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            result[level] = {op: {"identical": len({r[op] for r in runs}) == 1, "digests": [r[op] for r in runs]}
                             for op in runs[0]}
    result["strict_refuses"] = refused(args.device)
    strict = result.get("strict", {})
    result["ok"] = (all(v.get("identical") for v in strict.values() if isinstance(v, dict)) and "error" not in strict
                    and all(v["refused"] for v in result["strict_refuses"].values()))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
