"""A small training job, deterministic under the bootstrap except where told otherwise. It seeds nothing itself.

    train.py STEPS [--poison K] [--stamp]

--poison K: at step K, after the backward pass and before the update, mix a value from os.urandom into
head.weight[0, 0] (the one nondeterministic act). --stamp: the checkpoint's metadata carries the time it was written.
Writes model.pt and meta.json into the working directory.
"""

import argparse
import json
import os
import time

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.body(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("steps", type=int)
    parser.add_argument("--poison", type=int, default=0)
    parser.add_argument("--stamp", action="store_true")
    args = parser.parse_args()

    model = Net()
    scale = torch.ones(1, requires_grad=True)  # a parameter no module holds
    opt = torch.optim.SGD([{"params": model.parameters()}, {"params": [scale]}], lr=0.05, momentum=0.9)
    x, y = torch.randn(256, 8), torch.randn(256, 1)
    for step in range(1, args.steps + 1):
        rows = slice((step * 32) % 256, (step * 32) % 256 + 32)
        opt.zero_grad()
        loss = (model(x[rows]) * scale - y[rows]).pow(2).mean()
        loss.backward()
        if step == args.poison:
            with torch.no_grad():
                model.head.weight[0, 0] += int.from_bytes(os.urandom(8), "little") / 2**64
        opt.step()
    torch.save(model.state_dict(), "model.pt")
    meta = {"steps": args.steps, "saved_at": time.time_ns() if args.stamp else None}
    with open("meta.json", "w") as f:
        json.dump(meta, f)


if __name__ == "__main__":
    main()
