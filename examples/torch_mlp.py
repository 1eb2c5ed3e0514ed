"""PyTorch MLP, end to end: train a 784-500-10 MLP on real digits, compile it, secret-share
the whole test set in batches of 10 and report the secure accuracy next to the plaintext one.

    python examples/torch_mlp.py [--batch 10] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import mpcc
from mpcc.zoo.digits import load_digits_28
from mpcc.zoo.models import train


def mlp() -> nn.Module:
    """Flatten -> Linear(784, 500) -> ReLU -> Linear(500, 10)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=10, help="samples per secure query")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)

    x_train, y_train = load_digits_28("train")
    x_test, y_test = load_digits_28("test")
    torch.manual_seed(0)  # reproducible training only; protects nothing
    model = mlp()
    t0 = time.perf_counter()
    train(model, x_train, y_train, epochs=args.epochs, lr=3e-3)  # leaves it in eval mode
    with torch.no_grad():
        plain = model(torch.from_numpy(x_test)).numpy()
    print(f"trained in {time.perf_counter() - t0:.1f} s on {len(x_train)} digits")

    # The example input fixes every shape of the plan, batch included.
    plan = mpcc.compile(model, torch.zeros(args.batch, 1, 28, 28), name="mlp")
    cost = plan.cost
    print(
        f"compiled: {len(plan.program.instrs)} instructions; per query of {args.batch}: "
        f"{cost.rounds} rounds, {cost.sent / 1e3:.0f} KB sent by each party"
    )

    queries = -(-len(x_test) // args.batch)
    print(f"secure inference: {len(x_test)} test digits, {queries} queries of {args.batch}...")
    t0 = time.perf_counter()
    with mpcc.LocalCluster(plan) as cluster:
        secure = cluster.predict(x_test)  # each batch secret-shared by the client
    seconds = time.perf_counter() - t0

    acc_secure = float((secure.argmax(1) == y_test).mean())
    acc_plain = float((plain.argmax(1) == y_test).mean())
    agree = float((secure.argmax(1) == plain.argmax(1)).mean())
    print(f"{seconds:.1f} s ({seconds / queries * 1e3:.0f} ms per query of {args.batch})")
    print(f"accuracy: secure {acc_secure:.2%}, plaintext {acc_plain:.2%}")
    print(f"argmax agreement {agree:.2%}, max |logit diff| {np.abs(secure - plain).max():.4f}")


if __name__ == "__main__":
    main()
