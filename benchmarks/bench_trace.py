"""Step-trace overhead on a small CPU training, against the same training untraced, measured side by side in one run.

    python benchmarks/bench_trace.py [--steps 300] [--rounds 7] [--hidden 256] [--batch 64]

An MLP (784-H-H-10, Adam) on generated data, one thread, as `envkit run` pins it. Each round trains a fresh model
once per mode, in a rotating order, in this process: untraced, the trace at the default interval (auto), and at
fixed intervals for comparison; the time is the training loop's CPU time alone (other processes on a shared machine
do not count). Two figures per mode: the median of the per-round ratios traced / untraced in CPU time (the overhead
as a user sees it; on a busy machine a few percent of noise), and the wall time the trace itself says it spent
(``trace_s`` of its final record) over the wall time of the rest of the same loop (precise, but without the hook
calls' own microsecond or so per step). Also prints the digest's throughput against blake2b and sha256 (hashlib) on a
tensor the size of the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from envkit.injob import trace

DEFAULT = trace.AUTO


def train(steps: int, hidden: int, batch: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `steps` optimizer steps of a fresh model, built after the hooks are in."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch * 16, 784), torch.randint(0, 10, (batch * 16,))
    t0, w0 = time.process_time(), time.perf_counter()  # CPU time: other processes on a busy machine do not count
    for step in range(steps):
        rows = slice((step % 16) * batch, (step % 16 + 1) * batch)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()
    return time.process_time() - t0, time.perf_counter() - w0


def run(mode: str | int | None, steps: int, hidden: int, batch: int, folder: Path) -> tuple[float, float]:
    """(CPU seconds of the training loop, share of its wall time spent in the trace), model built after install()."""
    if mode is None:
        return train(steps, hidden, batch)[0], 0.0
    path = folder / "trace.jsonl"
    trace.install(torch, interval=mode, path=str(path))
    try:
        cpu, wall = train(steps, hidden, batch)  # the optimizer is released on return: its final record is written
    finally:
        trace.uninstall()
    final = json.loads(path.read_text().splitlines()[-1])
    path.unlink()
    # trace_s is wall time (what the auto interval budgets): set against the wall time of the rest of the loop.
    return cpu, final["trace_s"] / (wall - final["trace_s"])


def throughput(nbytes: int) -> dict[str, float]:
    data = memoryview(torch.randn(nbytes // 4).numpy()).cast("B")
    contenders = {"crc32 (ours)": zlib.crc32, "blake2b": lambda b: hashlib.blake2b(b, digest_size=8).digest(),
                  "sha256": lambda b: hashlib.sha256(b).digest()}
    speeds = {}
    for name, fn in contenders.items():
        fn(data)
        t0 = time.perf_counter()
        for _ in range(20):
            fn(data)
        speeds[name] = 20 * nbytes / (time.perf_counter() - t0)
    return speeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes: list[str | int | None] = [None, DEFAULT, 1, 10, 100]
    ratios: dict[str | int | None, list[float]] = {m: [] for m in modes}
    shares: dict[str | int | None, list[float]] = {m: [] for m in modes}
    base_times = []
    with tempfile.TemporaryDirectory() as tmp:
        run(None, 20, args.hidden, args.batch, Path(tmp))  # warm up allocator and kernels
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            got = {mode: run(mode, args.steps, args.hidden, args.batch, Path(tmp)) for mode in order}
            base = got[None][0]
            base_times.append(base)
            for mode, (seconds, share) in got.items():
                ratios[mode].append(seconds / base)  # paired within the round: slow drifts cancel
                shares[mode].append(share)
    params = 784 * args.hidden + args.hidden + args.hidden * args.hidden + args.hidden + args.hidden * 10 + 10
    print(f"MLP 784-{args.hidden}-{args.hidden}-10 ({params * 4 / 2**20:.1f} MiB of parameters), Adam, batch "
          f"{args.batch}, {args.steps} steps, 1 thread, {args.rounds} interleaved rounds, CPU time, medians")
    print(f"  untraced: {statistics.median(base_times) / args.steps * 1e3:.2f} ms per step")
    print("  mode                   traced / untraced (CPU)   time in the trace / the rest of the loop (wall)")
    for mode in modes[1:]:
        ratio, share = statistics.median(ratios[mode]), statistics.median(shares[mode])
        label = f"trace {mode}" + (" (default)" if mode == DEFAULT else "")
        print(f"  {label:<22} {ratio:.4f} ({100 * (ratio - 1):+.2f}%)         {100 * share:.2f}%")
    speeds = throughput(params * 4)
    ours = speeds["crc32 (ours)"]
    print("digest throughput on the model's bytes: " + ", ".join(
        f"{name} {s / 1e9:.2f} GB/s ({ours / s:.1f}x slower than ours)" if name != "crc32 (ours)" else
        f"{name} {s / 1e9:.2f} GB/s" for name, s in speeds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
