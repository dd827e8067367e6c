"""The GPU check's job: assert where it runs, compute on that device, write the result's digest and the tensor.

    envkit run --gpus 1 --seed 5 digest.py --expect cuda      (and --gpus none ... --expect cpu)

A seeded random matrix product and an index_add_ with colliding indices (atomics on a GPU, deterministic under
strict), so a replay that is IDENTICAL shows that the same bits came out of the same kernels.
"""

import argparse
import hashlib
import os

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--expect", choices=("cuda", "cpu"), required=True)
args = parser.parse_args()
if args.expect == "cuda":
    assert torch.cuda.is_available(), "the job was given no usable GPU"
    device = "cuda"
else:
    assert not torch.cuda.is_available(), "a --gpus none job sees a GPU"
    device = "cpu"
a = torch.randn(512, 512, device=device)  # from the run's seed: envkit seeded torch before the script started
b = torch.randn(512, 512, device=device)
index = torch.randint(0, 64, (1 << 20,), device=device)
src = torch.randn(1 << 20, device=device)
result = torch.cat([(a @ b).flatten(), torch.zeros(64, device=device).index_add_(0, index, src)])
host = result.cpu()
out = os.environ.get("ENVKIT_OUTPUT_DIR", ".")
torch.save(host, os.path.join(out, f"{args.expect}_result.pt"))
with open(os.path.join(out, f"{args.expect}_digest.txt"), "w") as fh:
    fh.write(hashlib.sha256(host.numpy().tobytes()).hexdigest() + "\n")
print(f"{device}: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
