"""`make demo`: train LeNet on real handwritten digits, compile it, and classify private test
digits across three parties, next to the plaintext onnxruntime predictions."""

from __future__ import annotations

import argparse
import time

import numpy as np

import mpcc
from mpcc.zoo import digits, models, reference


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="lenet", choices=sorted(models.MODELS))
    ap.add_argument("--samples", type=int, default=20, help="test digits to classify")
    ap.add_argument("--batch", type=int, default=1, help="samples per secure query")
    args = ap.parse_args(argv)

    print(f"[1/4] training {args.model} on scikit-learn's handwritten digits (cached)...")
    onnx_path = models.build(args.model)
    print(f"      exported {onnx_path}")

    print("[2/4] compiling to a secure plan...")
    plan = mpcc.compile(onnx_path, input_shape=(args.batch, 1, 28, 28), name=args.model)
    print(plan)

    x, labels = digits.load_digits_28("test")
    x, labels = x[: args.samples], labels[: args.samples]
    print(f"[3/4] secure inference on {len(x)} private test digits (P0, P1 and dealer)...")
    t0 = time.perf_counter()
    with mpcc.LocalCluster(plan) as cluster:
        secure = cluster.predict(x, progress=True)
        stats = cluster.stats
    elapsed = time.perf_counter() - t0
    plain = reference.run_onnxruntime(onnx_path, x)

    print("[4/4] secure vs plaintext (onnxruntime):")
    print(f"  {'#':>3} {'label':>5} {'plaintext':>9} {'secure':>6} {'max |logit diff|':>17}")
    for i in range(len(x)):
        diff = np.abs(secure[i] - plain[i]).max()
        print(
            f"  {i:>3} {labels[i]:>5} {plain[i].argmax():>9} {secure[i].argmax():>6} {diff:>17.5f}"
        )
    agree = (secure.argmax(1) == plain.argmax(1)).mean()
    print(
        f"argmax agreement {agree:.1%}; secure accuracy {(secure.argmax(1) == labels).mean():.1%}, "
        f"plaintext {(plain.argmax(1) == labels).mean():.1%}; "
        f"max |logit diff| {np.abs(secure - plain).max():.5f}"
    )
    print(stats.summary())
    print(f"total wall time {elapsed:.1f} s for {len(x)} samples (includes one-time JIT compile)")


if __name__ == "__main__":
    main()
