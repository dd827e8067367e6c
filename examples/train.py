"""A small, unmodified training script: sklearn's bundled digits, shuffling DataLoader workers, dropout, Adam.

It seeds nothing itself; under `envkit run --seed N` the bootstrap does. It writes model.pt and out/metrics.json
into its working directory (envkit records both as outputs).

    envkit run --seed 42 --lock ../lockfiles/cpu.lock.yaml train.py --epochs 3
"""

import argparse
import json
import os
import random

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Digits(Dataset):
    """8x8 digits with a random-noise augmentation drawn in the worker (numpy and random)."""

    def __init__(self, x, y, augment):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i].copy()
        if self.augment:
            x += np.random.normal(0, 0.05, size=x.shape).astype(np.float32)
            if random.random() < 0.5:
                x = x.reshape(8, 8)[:, ::-1].reshape(-1).copy()
        return torch.from_numpy(x), int(self.y[i])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.permutation(len(y))  # an unseeded split: the bootstrap makes it repeat
    train, test = order[:1400], order[1400:]
    loader = DataLoader(Digits(x[train], y[train], augment=True), batch_size=64, shuffle=True,
                        num_workers=args.workers, persistent_workers=False)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
        print(f"epoch {epoch}: loss {total / len(train):.6f}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x[test])).argmax(1).numpy()
    accuracy = float((pred == y[test]).mean())
    torch.save(model.state_dict(), "model.pt")
    os.makedirs("out", exist_ok=True)
    with open("out/metrics.json", "w") as f:
        json.dump({"accuracy": accuracy, "epochs": args.epochs}, f, sort_keys=True)
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
