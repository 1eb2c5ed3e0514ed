"""Small torch models of the 8x8 digits for the recurrent and transformer tests, trained briefly
and exported to ONNX once (cached).

* ``lstm`` / ``gru``: one torch.nn.LSTM / GRU layer (hidden 32) reading an image row by row
  (8 steps of 8 features, input ``[N, 8, 8]``), then a Linear on the last hidden state.
* ``vit``: a small vision transformer written by hand (input ``[N, 1, 8, 8]``): a 2x2
  patch-embedding Conv (16 patches), a class token and learned positions, 2 pre-norm encoder
  layers (2-head self-attention, GELU MLP, LayerNorm), a final LayerNorm and a Linear on the
  class token. Written without Gather (separate q, k, v projections; a Slice for the class
  token) so that it needs only the secure ops it is meant to test.

The data: sklearn's ``load_digits`` scaled to [0, 1], split 75/25, stratified, seeded. The cache
key hashes the training code (the data, the modules, the recipe, the model's epochs) and
torch's version, so changing any of it retrains.
Seeds here only make the training reproducible; they protect nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from pathlib import Path

import numpy as np

MODELS = ("lstm", "gru", "vit")


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: float32 images ``[n, 8, 8]`` in [0, 1] and int64 labels; split 'train' or
    'test' (450 digits)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    parts = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    X_tr, X_te, y_tr, y_te = parts
    return (X_tr, y_tr) if split == "train" else (X_te, y_te)


def model_input(name: str, X: np.ndarray) -> np.ndarray:
    """The model's input for images ``[n, 8, 8]``."""
    return X if name in ("lstm", "gru") else X[:, None]


def _modules():
    import torch
    from torch import nn

    class RNNClassifier(nn.Module):
        def __init__(self, cell: str, hidden: int = 32) -> None:
            super().__init__()
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(8, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, h = self.rnn(x)
            h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
            return self.fc(h.squeeze(0))

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
            self.proj = nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            dh = d // self.heads
            h = self.ln1(x)

            def split(z: torch.Tensor) -> torch.Tensor:
                return z.reshape(n, t, self.heads, dh).transpose(1, 2)  # [n, heads, t, dh]

            q, k, v = split(self.q(h) * dh**-0.5), split(self.k(h)), split(self.v(h))
            att = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
            o = (att @ v).transpose(1, 2).reshape(n, t, d)
            x = x + self.proj(o)
            return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))

    class ViT(nn.Module):
        def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2, mlp: int = 64) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, dim, 2, stride=2)  # 8x8 -> 4x4 patches
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
            self.blocks = nn.Sequential(*(Block(dim, heads, mlp) for _ in range(layers)))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).flatten(2).transpose(1, 2)  # [n, 16, dim]
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
            t = self.blocks(t)
            return self.head(self.norm(t[:, :1].flatten(1)))

    return {
        "lstm": lambda: RNNClassifier("lstm"),
        "gru": lambda: RNNClassifier("gru"),
        "vit": ViT,
    }


_EPOCHS = {"lstm": 40, "gru": 40, "vit": 30}


def _train(name: str):
    import torch

    torch.manual_seed(0)  # not secret
    module = _modules()[name]()
    X, y = load("train")
    Xt, yt = torch.tensor(model_input(name, X)), torch.tensor(y)
    epochs, batch = _EPOCHS[name], 64
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-len(Xt) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    module.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Xt))  # not secret
        for i in range(0, len(Xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(module(Xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return module.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def _key(name: str) -> str:
    import torch

    code = "".join(inspect.getsource(f) for f in (load, model_input, _modules, _train))
    text = f"{code}|{_EPOCHS[name]}|{torch.__version__}"
    return f"digits-{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def onnx_path(name: str, cache_dir: Path, dynamo: bool = False) -> Path:
    """The trained model exported to ONNX (symbolic batch), trained and exported on first use."""
    import torch

    from mpcc.frontends.torch import export

    kind = "dynamo" if dynamo else "torchscript"
    path = Path(cache_dir) / f"{_key(name)}-{kind}.onnx"
    if path.exists():
        return path
    weights = path.with_name(f"{_key(name)}.pt")
    module = _modules()[name]()
    if weights.exists():
        module.load_state_dict(torch.load(weights, weights_only=True))
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
        try:
            module = _train(name)
        finally:
            torch.set_num_threads(threads)
        _atomic(weights, lambda f: torch.save(module.state_dict(), f))
    example = torch.tensor(model_input(name, load("test")[0][:2]))
    proto = export(module.eval(), example, dynamo=dynamo, dynamic_batch=True)
    _atomic(path, lambda f: f.write(proto.SerializeToString()))
    return path


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and a rename, so that readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
