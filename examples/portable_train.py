"""The reference CPU training of the portable CPU profile: a small conv net and an MLP trained with Adam.

    python examples/portable_train.py WEIGHTS.pt [--steps 30] [--seed N]

It trains 30 steps on data generated from the seed (``--seed``, else ``ENVKIT_SEED``, else 0), writes the final
``state_dict`` to WEIGHTS.pt with ``torch.save`` and prints ``sha256 <hex>`` of the weights' raw bytes (names, dtypes,
shapes and values in ``state_dict`` order), the digest two hosts compare. Thread counts come from the environment
(``OMP_NUM_THREADS``) as envkit sets them.

The model touches the kernels a typical CPU job does: convolutions (oneDNN), matmuls (MKL), GELU, LayerNorm, adaptive
pooling, cross-entropy and Adam, whose square root is where CPU vendors part ways. The inputs are integers scaled by a
power of two, so they are the same bits on every CPU before the first kernel runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch
from torch import nn

SAMPLES, BATCH, CLASSES, SIDE = 64, 16, 10, 16


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with values k/64 for integers k in [-128, 128), and labels; exact on every CPU."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(-128, 128, (SAMPLES, 3, SIDE, SIDE), generator=gen).to(torch.float32) / 64
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=gen)
    return images, labels


def train(seed: int, steps: int) -> dict[str, torch.Tensor]:
    images, labels = make_data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        lo = (step * BATCH) % SAMPLES
        loss = nn.functional.cross_entropy(model(images[lo:lo + BATCH]), labels[lo:lo + BATCH])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))  # the raw bits, not a printed rounding
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="where to write the final state_dict (torch.save)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("ENVKIT_SEED", "0")))
    args = parser.parse_args()
    state = train(args.seed, args.steps)
    torch.save(state, args.weights)
    print(f"sha256 {weights_digest(state)}")


if __name__ == "__main__":
    main()
