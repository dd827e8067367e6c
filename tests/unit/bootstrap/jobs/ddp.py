"""Two-rank data-parallel training on the CPU (gloo), started by torchrun; no seeding in the script.

Each rank writes what it saw to <argv[1]>/rank<N>.json: the model's initial and final weights, its shuffled
indices and what its DataLoader worker drew.
"""

import json
import os
import random
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Noisy(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor([float(index), random.random(), torch.rand(()).item()])


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = torch.nn.Linear(2, 1)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    sampler = DistributedSampler(Noisy(), shuffle=True)
    loader = DataLoader(Noisy(), batch_size=2, sampler=sampler, num_workers=1)
    seen = []
    for batch in loader:
        seen.append(batch.tolist())
        loss = ddp(batch[:, 1:]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump({"initial": initial, "final": final, "batches": seen, "random": random.random()}, handle)
    dist.destroy_process_group()
