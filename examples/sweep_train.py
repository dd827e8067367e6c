"""A small training for seed sweeps: an MLP on a fixed synthetic task, a few seconds on one CPU thread.

It seeds nothing itself; under envkit the seed changes the initial weights and the batches (the data is fixed). It
writes the weights and metrics.json (final loss and accuracy) into $ENVKIT_OUTPUT_DIR, where `envkit sweep` reads
the metrics from.

    envkit sweep --seeds 0-7 --lock ../lockfiles/cpu.lock.yaml sweep_train.py --lr 0.05
"""

import argparse
import json
import os

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    data = torch.Generator().manual_seed(1234)  # the task is the same for every seed
    x = torch.randn(512, 8, generator=data)
    y = (x[:, :4].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        batch = torch.randint(0, 512, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
        metrics = {"final_loss": torch.nn.functional.cross_entropy(logits, y).item(),
                   "accuracy": (logits.argmax(1) == y).float().mean().item()}
    out = os.environ.get("ENVKIT_OUTPUT_DIR", ".")
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, sort_keys=True)
    print(f"loss {metrics['final_loss']:.4f} accuracy {metrics['accuracy']:.3f}")


if __name__ == "__main__":
    main()
