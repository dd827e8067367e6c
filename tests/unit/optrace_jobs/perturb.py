"""A small training, deterministic except where told. It seeds torch itself.

    perturb.py STEPS [--perturb K] [--workers N]

--perturb K: in the forward pass that leads to step K (the K-th optimizer.step()), encoder.1 adds a number drawn from
os.urandom to its output: the one nondeterministic act. --workers N: batches come from a DataLoader with N worker
processes (forked; they must not trace). Writes model.pt into the working directory.
"""

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.perturb = False

    def forward(self, x):
        out = torch.tanh(self.linear(x))
        if self.perturb:
            out = out + int.from_bytes(os.urandom(4), "little") / 2**40  # PERTURB
        return out


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(Block(16), Block(16), Block(16))
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("steps", type=int)
    parser.add_argument("--perturb", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = TensorDataset(torch.randn(64, 16), torch.randn(64, 1))
    loader = DataLoader(data, batch_size=16, shuffle=False, num_workers=args.workers)
    step = 0
    while step < args.steps:
        for x, y in loader:  # a new iterator (new worker processes) each epoch: some start inside a traced step
            step += 1
            model.encoder[1].perturb = step == args.perturb
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if step == args.steps:
                break
    torch.save(model.state_dict(), "model.pt")


if __name__ == "__main__":
    main()
