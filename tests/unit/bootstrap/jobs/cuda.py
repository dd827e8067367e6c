"""CUDA: seeded draws on every device, index_add_ / scatter_add_ with many colliding indices, rng_state round trip.

The inputs of the two reductions come from a fixed generator, so only the kernels can make runs differ: with
atomics, float sums land in a different order from run to run; in strict, torch must use its deterministic kernels.
"""

import json

import torch

import envkit

if __name__ == "__main__":
    fresh = torch.cuda.is_initialized()
    out = {"initialized_at_start": fresh, "rand": []}
    for device in range(torch.cuda.device_count()):
        out["rand"].append(torch.rand(4, device=f"cuda:{device}").tolist())
    fixed = torch.Generator(device="cuda").manual_seed(1234)
    n = 1 << 22
    src = torch.randn(n, device="cuda", generator=fixed)
    index = torch.randint(0, 64, (n,), device="cuda", generator=fixed)
    reductions = {
        "index_add_": torch.zeros(64, device="cuda").index_add_(0, index, src),
        "scatter_add_": torch.zeros(64, device="cuda").scatter_add_(0, index, src),
    }
    for name, value in reductions.items():
        out[name] = value.cpu().numpy().tobytes().hex()
    state = envkit.rng_state()
    first = torch.rand(8, device="cuda").tolist()
    envkit.set_rng_state(state)
    out["rng_state_round_trip"] = first == torch.rand(8, device="cuda").tolist()
    print(json.dumps(out))
