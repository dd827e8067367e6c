"""The cost of determinism on a small CNN: training steps under envkit's strict level against ``off``, as a ratio.

    python benchmarks/gpu/cnn_cost.py [--device cuda|cpu] [--rounds 5] [--steps 40]

A 4-layer CNN (conv-BN-ReLU x3, pooling, linear; SGD with momentum) on generated 32x32 images. Each measurement is a
fresh process at one level (the deterministic flags are process-wide), timed over ``--steps`` steps after warm-up
steps, with the device synchronised; the levels alternate, first one then the other, round by round. Prints one JSON
object: the median time per step at each level, the median of the per-round ratios strict / off, and the device's
name (every figure goes with its GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def one(level: str, device: str, steps: int) -> dict:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    import envkit

    envkit.seed_everything(7, determinism=level)
    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())  # the same threads at both levels
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = 256 if device == "cuda" else 16
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(max(3, steps // 5)):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"s_per_step": (time.perf_counter() - t0) / steps, "device_name": name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--one", choices=("strict", "off"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.device, args.steps)))
        return 0
    times: dict[str, list[float]] = {"strict": [], "off": []}
    name = None
    for r in range(args.rounds):
        for level in (("strict", "off") if r % 2 == 0 else ("off", "strict")):
            proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", level, "--steps",
                                   str(args.steps)], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(json.dumps({"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}))
                return 1
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            times[level].append(got["s_per_step"])
            name = got["device_name"]
    ratios = [s / o for s, o in zip(times["strict"], times["off"])]
    print(json.dumps({"device": args.device, "device_name": name, "rounds": args.rounds, "steps": args.steps,
                      "strict_ms_per_step": round(statistics.median(times["strict"]) * 1e3, 3),
                      "off_ms_per_step": round(statistics.median(times["off"]) * 1e3, 3),
                      "ratio_strict_over_off": round(statistics.median(ratios), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
