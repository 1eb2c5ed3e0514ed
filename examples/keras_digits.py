"""Keras digits, end to end: train a small Keras CNN, save its weights to .h5, load them into a
fresh model, compile it, serve it from three parties and classify three private test digits.

    KERAS_BACKEND=torch python examples/keras_digits.py [--out DIR] [--epochs N] [--local]

The model (Keras layers are channels-last, so the input is NHWC and stays NHWC):

    [Conv2D(k, 3x3, padding="same") -> AveragePooling2D(2) -> Activation("relu")] x 3,
    k = 10, 32, 64; sizes 28 -> 14 -> 7 -> 3; Flatten (3*3*64 = 576) -> Dense(10) logits.

Keras 3 only writes weights to a name ending in ``.weights.h5``: ``save_weights("x.h5")``
raises. mpcc's Keras frontend reads such a file under either name (``load_weights``).

By default the three parties (P0, P1 and the dealer) run as local processes talking TLS
(`mpcc.serving`), each stopping after ``--num-requests`` answered requests; ``--local`` runs
them as threads of this process instead (`LocalCluster`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

import mpcc  # noqa: E402
from mpcc.frontends.keras import load_weights  # noqa: E402
from mpcc.zoo.digits import load_digits_28  # noqa: E402


def build(batch_size: int | None) -> keras.Sequential:
    """The digits CNN with batch input shape (batch_size, 28, 28, 1)."""
    model = keras.Sequential(name="keras_digits")
    model.add(keras.Input(batch_shape=(batch_size, 28, 28, 1)))
    for filters in (10, 32, 64):
        model.add(keras.layers.Conv2D(filters, (3, 3), padding="same"))
        model.add(keras.layers.AveragePooling2D(2))
        model.add(keras.layers.Activation("relu"))
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(10))
    return model


def nhwc(x: np.ndarray) -> np.ndarray:
    """[n, 1, 28, 28] -> [n, 28, 28, 1]."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def train(weights_path: Path, epochs: int) -> float:
    """Train on the digits train split; save the weights; return the test accuracy."""
    keras.utils.set_random_seed(0)  # reproducible training only; protects nothing
    x, y = load_digits_28("train")
    xt, yt = load_digits_28("test")
    model = build(batch_size=None)  # any batch size while training
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(nhwc(x), y, epochs=epochs, batch_size=32, verbose=0)
    acc = model.evaluate(nhwc(xt), yt, verbose=0)[1]
    model.save_weights(weights_path)  # must end in .weights.h5 (Keras 3)
    return float(acc)


def serve_and_query(plan, x: np.ndarray, num_requests: int, local: bool) -> np.ndarray:
    """Secure logits for each row of x, one request each, from three parties."""
    if local:
        with mpcc.LocalCluster(plan) as cluster:
            cluster.preprocess(num_requests)  # the dealer's material for every request
            return np.concatenate([cluster.predict(x[i : i + 1]) for i in range(len(x))])

    from mpcc.serving.client import Client
    from mpcc.serving.local import ProcessCluster
    from mpcc.serving.owner import deploy

    with tempfile.TemporaryDirectory() as tmp, ProcessCluster(Path(tmp)) as parties:
        for role in ("p0", "p1", "dealer"):
            parties.start(role, "--num-requests", str(num_requests))
        parties.wait_listening()
        deploy(plan, parties.cfg)  # the owner sends weight shares
        with Client(parties.cfg) as client:
            client.wait_ready()
            return np.concatenate([client.predict(x[i : i + 1]) for i in range(len(x))])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="directory for the weights file (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--num-requests", type=int, default=3, help="requests served, one image each")
    ap.add_argument("--local", action="store_true", help="parties as threads (LocalCluster)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        weights_path = out / "keras_digits.weights.h5"

        t0 = time.perf_counter()
        acc = train(weights_path, args.epochs)
        print(f"trained in {time.perf_counter() - t0:.1f} s, plaintext test accuracy {acc:.1%}")
        print(f"saved the weights to {weights_path}")

        # The deployed model: a fresh one, batch input shape (1, 28, 28, 1), same weights.
        model = load_weights(build(batch_size=1), weights_path)
        plan = mpcc.compile(model)
        prog = plan.program
        shape = list(prog.value(prog.inputs[0][1]).shape)
        rounds = plan.cost.rounds
        print(f"compiled {prog.name}: NHWC input {shape}, {len(prog.instrs)} instructions,")
        print(f"  {rounds} online rounds per request")

    xt, yt = load_digits_28("test")
    x, labels = nhwc(xt[: args.num_requests]), yt[: args.num_requests]
    where = "threads of this process" if args.local else "local processes over TLS"
    print(f"serving {args.num_requests} requests from P0, P1 and the dealer ({where})...")
    t0 = time.perf_counter()
    logits = serve_and_query(plan, x, args.num_requests, args.local)
    print(f"answered in {time.perf_counter() - t0:.1f} s")
    plain = keras.ops.convert_to_numpy(model(x[:1]))  # sanity: the first one in plaintext
    for label, row in zip(labels, logits, strict=True):
        print(f"actual: {label}, predicted: {row.argmax()}")
    print(f"first image: max |secure - plaintext logit| = {np.abs(logits[0] - plain[0]).max():.4f}")


if __name__ == "__main__":
    main()
