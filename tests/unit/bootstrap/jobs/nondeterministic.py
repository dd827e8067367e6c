"""Calls put_ (accumulate=False), an op torch has no deterministic implementation of on the CPU."""

import torch

out = torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
print("{}")
