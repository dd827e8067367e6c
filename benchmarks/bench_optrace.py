"""Op-trace cost per traced step on small CPU trainings, against the same step untraced, side by side in one run.

    python benchmarks/bench_optrace.py [--rounds 15] [--models mlp,cnn]

Two models, one thread (as `envkit run` pins it): an MLP (784-256-256-10, Adam, batch 64) and a small CNN (two
convolutions, batch norm, pooling, a linear head; Adam, batch 32 of 3x32x32). Each round, in this process and in a
rotating order, times one training step (zero_grad, forward, loss, backward, optimizer step; each after an untimed
one) three ways:

* untraced;
* armed: the op trace installed for a step far ahead (what every step outside the window costs: the optimizer hooks);
* traced: the op trace installed for the next step, so this step is the window (every op through the dispatch mode,
  a CRC-32 of every output, the module and frame of every op, the file written at the end of the window).

Printed: the medians of the per-round ratios to the untraced step (CPU time), the ops per step, the cost per op, the
bytes of output digested, and the share of the traced step's wall time spent in the tracer's own code (``trace_s`` of
the end record; the rest of the added time is torch's Python dispatch of each op). Ratios, never a bare time: the
machine's speed cancels out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from envkit.injob import optrace

FAR = 10**9  # a step never reached: the trace is armed, its window never opens


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, torch.randn(64, 784), torch.randint(0, 10, (64,))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    return model, torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))


MODELS = {"mlp": ("MLP 784-256-256-10, batch 64", mlp), "cnn": ("CNN 2 conv + BN + linear, batch 32x3x32x32", cnn)}


def one_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one training step."""
    t0, w0 = time.process_time(), time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.process_time() - t0, time.perf_counter() - w0


ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


def digested_bytes(path: Path) -> int:
    """Bytes of output the trace digested (from the shapes it recorded)."""
    total = 0
    for line in path.read_text().splitlines()[1:-1]:
        for out in json.loads(line)["out"]:
            if out and out[2] is not None and out[0] != optrace.UNINITIALISED:
                total += math.prod(out[2]) * ITEMSIZE.get(out[1], 4)
    return total


def timed(mode: str, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          folder: Path) -> tuple[tuple[float, float], dict | None]:
    """((CPU, wall) seconds of one step, the end record plus the bytes digested when traced) under one mode."""
    one_step(model, opt, x, y)  # untimed: no mode pays for the caches the one before it left behind
    if mode == "untraced":
        return one_step(model, opt, x, y), None
    path = folder / "optrace.jsonl"
    optrace.install(torch, step=1 if mode == "traced" else FAR, path=str(path))
    try:
        seconds = one_step(model, opt, x, y)
    finally:
        optrace.uninstall()
    end = None
    if path.exists():
        end = {**json.loads(path.read_text().splitlines()[-1]), "bytes": digested_bytes(path)}
        path.unlink()
    return seconds, end


def bench(name: str, rounds: int, folder: Path) -> None:
    label, make = MODELS[name]
    torch.manual_seed(0)
    model, x, y = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):  # warm up: allocator, kernels, Adam state
        one_step(model, opt, x, y)
    modes = ["untraced", "armed", "traced"]
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    base, ops, shares, nbytes = [], [], [], []
    for r in range(rounds):
        order = modes[r % 3:] + modes[:r % 3]
        got = {mode: timed(mode, model, opt, x, y, folder) for mode in order}
        untraced = got["untraced"][0][0]
        base.append(untraced)
        for mode in modes:
            ratios[mode].append(got[mode][0][0] / untraced)  # paired within the round: slow drifts cancel
        end = got["traced"][1]
        ops.append(end["ops"])
        nbytes.append(end["bytes"])
        shares.append(end["trace_s"] / got["traced"][0][1])  # both wall time
    step_s = statistics.median(base)
    traced = statistics.median(ratios["traced"])
    n_ops = statistics.median(ops)
    print(f"{label}: {n_ops:.0f} ops per step, untraced step {step_s * 1e3:.2f} ms (CPU), {rounds} rounds, medians")
    print(f"  armed (outside the window) / untraced: {statistics.median(ratios['armed']):.3f}")
    print(f"  traced step / untraced step:           {traced:.2f}  "
          f"({(traced - 1) * step_s / n_ops * 1e6:.1f} us added per op)")
    print(f"  outputs digested per traced step:      {statistics.median(nbytes) / 2**20:.1f} MiB")
    print(f"  the tracer's own code (digests, frames, records) / traced step (wall): "
          f"{100 * statistics.median(shares):.0f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bench(name.strip(), args.rounds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
