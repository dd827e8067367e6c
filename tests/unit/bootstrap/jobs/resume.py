"""Train 8 steps; argv: mode (full | first | resume) and the checkpoint path.

``first`` stops after step 4 with a checkpoint that carries envkit.rng_state(); ``resume`` loads it (with torch.load's
default weights_only=True) in a fresh process and finishes. Every step draws from torch (dropout, randn), numpy's
legacy generator, random and a fresh unseeded default_rng(), so all of them must be restored.
"""

import json
import random
import sys

import numpy as np
import torch

import envkit

STEPS = 8

if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if mode == "resume":
        checkpoint = torch.load(path)
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["opt"])
        envkit.set_rng_state(checkpoint["rng"])
        start = checkpoint["step"]
    for step in range(start, STEPS):
        if mode == "first" and step == STEPS // 2:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": envkit.rng_state(),
                        "step": step}, path)
            sys.exit(0)
        shift = np.random.rand() + random.random() + np.random.default_rng().random()
        x = torch.randn(8, 4) + shift
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(json.dumps({"weights_hex": weights.numpy().tobytes().hex()}))
