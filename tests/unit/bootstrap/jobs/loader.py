"""A small unseeded training job: model init, a shuffled DataLoader with worker-side augmentation, a few steps.

argv: the DataLoader's start method (fork or spawn).
"""

import json
import random
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class Augmented(Dataset):
    """Each item carries the random numbers its worker drew for it (random, numpy legacy, torch, default_rng)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        draws = [random.random(), np.random.rand(), torch.rand(()).item(), np.random.default_rng().random()]
        return torch.tensor([index, info.id, *draws], dtype=torch.float64)


if __name__ == "__main__":
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Augmented(), batch_size=2, shuffle=True, num_workers=2,
                        multiprocessing_context=sys.argv[1], persistent_workers=True)
    batches = []
    for _epoch in range(2):
        for batch in loader:
            batches.append(batch.tolist())
            loss = model(batch[:, 2:].float()).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(json.dumps({"batches": batches, "weights": weights.tolist(), "randn": torch.randn(3).tolist()}))
