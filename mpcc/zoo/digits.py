"""Real handwritten digits at MNIST's size, without downloading anything.

scikit-learn ships the UCI optical-recognition digits (1797 images, 8x8, values 0..16) inside
the package. :func:`load_digits_28` scales them to [0, 1], upsamples them bilinearly to 24x24
and pads 2 zero pixels on each side (MNIST's framing), giving float32 ``[n, 1, 28, 28]``.

The train/test split is fixed and stratified: in each class, a seeded permutation puts 25% of
the images (rounded) in the test split. The seed only makes the split reproducible; it protects
nothing.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["SIZE", "TEST_FRACTION", "load_digits_28"]

SIZE = 28
INNER = 24  # upsampled digit size; (SIZE - INNER) / 2 zero pixels of padding on each side
TEST_FRACTION = 0.25
_SPLIT_SEED = 20240601


def load_digits_28(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: float32 images ``[n, 1, 28, 28]`` in [0, 1] and int64 labels ``[n]``.

    ``split`` is ``"train"`` (about 75%), ``"test"`` (about 25%) or ``"all"``. The result is a
    fresh copy, identical on every call.
    """
    X, y, test_mask = _load_all()
    if split == "all":
        sel = np.ones_like(test_mask)
    elif split == "test":
        sel = test_mask
    elif split == "train":
        sel = ~test_mask
    else:
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    return X[sel].copy(), y[sel].copy()


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from e

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64) / 16.0  # [n, 8, 8] in [0, 1]
    labels = np.asarray(digits.target, dtype=np.int64)

    m = _bilinear_matrix(images.shape[1], INNER)  # [24, 8]
    big = np.einsum("ij,njk,lk->nil", m, images, m)  # M @ img @ M^T for every image
    pad = (SIZE - INNER) // 2
    X = np.zeros((len(images), 1, SIZE, SIZE), dtype=np.float32)
    X[:, 0, pad : pad + INNER, pad : pad + INNER] = np.clip(big, 0.0, 1.0)

    rng = np.random.default_rng(_SPLIT_SEED)  # not secret
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = rng.permutation(idx)  # not secret
        test_mask[idx[: int(round(TEST_FRACTION * len(idx)))]] = True

    for a in (X, labels, test_mask):
        a.setflags(write=False)
    return X, labels, test_mask


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights, pixel centres aligned (half-pixel rule)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m
