"""Small 1-D and 3-D CNNs trained briefly on the real digits, exported to ONNX and cached.

- 1-D: each 8x8 digit read row by row as a signal [N, 1, 64].
- 3-D: each digit as a small volume [N, 1, 4, 8, 8]: the image, shifted right, shifted down,
  and at half intensity, stacked in depth.

The ONNX files are cached under the zoo cache directory, keyed by a hash of this file's source
and the torch version, so that a warm test run does not train (and a change here retrains).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

DEPTH = 4


def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The sklearn digits in [0, 1] as [n, 8, 8] and their labels, on mpcc's fixed split."""
    from sklearn.datasets import load_digits

    from mpcc.zoo.digits import _load_all

    d = load_digits()
    images = (np.asarray(d.images, np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(d.target, np.int64)
    test = _load_all()[2]
    sel = test if split == "test" else ~test
    return images[sel], labels[sel]


def as_signal(images: np.ndarray) -> np.ndarray:
    """[n, 8, 8] -> [n, 1, 64], the rows one after another."""
    return images.reshape(len(images), 1, -1).copy()


def as_volume(images: np.ndarray) -> np.ndarray:
    """[n, 8, 8] -> [n, 1, DEPTH, 8, 8]: the image, shifted right, shifted down, halved."""
    right = np.zeros_like(images)
    right[:, :, 1:] = images[:, :, :-1]
    down = np.zeros_like(images)
    down[:, 1:, :] = images[:, :-1, :]
    return np.stack([images, right, down, images * 0.5], axis=1)[:, None].copy()


def _models():
    import torch
    from torch import nn

    class Net1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv1d(1, 8, 5, padding=2),
                nn.BatchNorm1d(8),
                nn.ReLU(),
                nn.MaxPool1d(3, stride=2, padding=1),  # 64 -> 32
                nn.Conv1d(8, 16, 3, padding=2, dilation=2),
                nn.ReLU(),
                nn.AvgPool1d(2),  # 32 -> 16
                nn.Conv1d(16, 16, 3, stride=2, padding=1),  # 16 -> 8
                nn.ReLU(),
            )
            self.head = nn.Linear(16 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.features(x), 1))

    class Net3d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv3d(1, 8, 3, padding=1),
                nn.BatchNorm3d(8),
                nn.ReLU(),
                nn.MaxPool3d((1, 2, 2)),  # [4, 8, 8] -> [4, 4, 4]
                nn.Conv3d(8, 16, (2, 3, 3), padding=(0, 1, 1)),  # -> [3, 4, 4]
                nn.ReLU(),
                nn.AvgPool3d((3, 2, 2)),  # -> [1, 2, 2]
            )
            self.head = nn.Linear(16 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.features(x), 1))

    return {"cnn1d": (Net1d, as_signal), "cnn3d": (Net3d, as_volume)}


def _train(name: str):
    import torch
    from torch import nn

    net_cls, view = _models()[name]
    torch.manual_seed(0)
    net = net_cls()
    images, labels = digits("train")
    x, y = torch.from_numpy(view(images)), torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for epoch in range(25):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for at in range(0, len(x), 64):
            idx = perm[at : at + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval(), view


def onnx_path(name: str, cache_dir: Path) -> Path:
    """The cached ONNX file of model `name` ("cnn1d" or "cnn3d"), trained and exported on
    first use (symbolic batch)."""
    import torch

    source = Path(__file__).read_bytes() + torch.__version__.encode()
    path = Path(cache_dir) / f"{name}-{hashlib.sha256(source).hexdigest()[:12]}.onnx"
    if path.exists():
        return path
    net, view = _train(name)
    x = torch.from_numpy(view(digits("test")[0][:2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(
        net,
        (x,),
        str(tmp),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(path)
    return path
