"""A client's samples: loading them from a .npy file and cutting them into a plan's batches.

Used at every layer (the runtime, the serving client, the command line, the reference
runner), so it depends on numpy and `mpcc.errors` only, like `mpcc.errors` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mpcc.errors import InputError

NUMERIC_KINDS = "biuf"  # numpy dtype kinds accepted as input: bool, integers, floats


def _not_numeric(what: str, dtype: str) -> InputError:
    return InputError(f"{what} holds an array of dtype {dtype}; a numeric array is expected")


def load_npy(path: str) -> np.ndarray:
    """A numeric array from a .npy file; a missing or malformed file, or an array of strings
    or objects, is an InputError."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"no input file at {path}") from None
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array, which would need unpickling
            raise _not_numeric(str(path), "object") from None
        raise InputError(f"{path} is not a .npy array file ({e})") from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        x.close()
        raise InputError(f"{path} is an .npz archive; give a .npy file with one array")
    if x.dtype.kind not in NUMERIC_KINDS:
        raise _not_numeric(str(path), str(x.dtype))
    return x


def as_samples(
    x: np.ndarray, shape: Sequence[int], *, allow_empty: bool = True, ids: bool = False
) -> np.ndarray:
    """`x` as float64 samples [n, *shape[1:]] for a plan whose input has `shape` (with `ids`:
    int64 samples of integer ids, any other dtype refused).

    One sample without the leading axis becomes [1, ...]; any other shape is an InputError
    naming the expected one (so is n = 0 unless `allow_empty`)."""
    shape = tuple(shape)
    x = np.asarray(x)
    if x.dtype.kind not in NUMERIC_KINDS:
        raise _not_numeric("the input", str(x.dtype))
    if ids and x.dtype.kind not in "iu":
        raise InputError(
            f"the input holds token ids: an integer array is expected, not dtype {x.dtype}"
        )
    x = x.astype(np.int64 if ids else np.float64, copy=False)
    if x.shape == shape[1:]:
        x = x[None]
    if x.ndim != len(shape) or x.shape[1:] != shape[1:] or (not allow_empty and len(x) == 0):
        n = "any number of samples n" if allow_empty else "n >= 1 samples"
        raise InputError(
            f"input has shape {list(x.shape)}, but the plan expects "
            f"[n, {', '.join(map(str, shape[1:]))}] ({n})"
        )
    return x


def split_rows(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """`x` cut into chunks of `batch` rows (the last one may be shorter); views, not copies."""
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def pad_rows(chunk: np.ndarray, batch: int) -> np.ndarray:
    """`chunk` with zero rows appended up to `batch` rows."""
    n = len(chunk)
    if n >= batch:
        return chunk
    return np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])


def map_batches(
    x: np.ndarray, batch: int, fn: Callable[[np.ndarray], np.ndarray], *, pad: bool = True
) -> np.ndarray:
    """fn applied to `x` in chunks of `batch` rows, the outputs' rows concatenated in order.

    With `pad`, every chunk fn sees has exactly `batch` rows: the last one is zero-padded and
    its output trimmed back to the real rows. No rows: an empty array."""
    outs = []
    for chunk in split_rows(x, batch):
        n = len(chunk)
        y = fn(pad_rows(chunk, batch) if pad else chunk)
        outs.append(y[:n])
    return np.concatenate(outs) if outs else np.zeros((0,))


ONEHOT = "onehot"


def input_shape(shape: Sequence[int], encoding: str | None) -> tuple[int, ...]:
    """The shape of what the client gives for a plan input of `shape`: a one-hot input's ids
    lack its last axis (the depth)."""
    return tuple(shape[:-1]) if encoding == ONEHOT else tuple(shape)


def one_hot(ids: np.ndarray, depth: int, name: str = "input") -> np.ndarray:
    """Integer ids [...] as a one-hot [..., depth] of ring elements 0/1 (uint64, scale 0):
    what the client secret-shares for an input with encoding `onehot`. A non-integer dtype
    or an id outside [0, depth) is an InputError naming the input."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise InputError(f"input {name!r} takes integer ids, not an array of dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= depth):
        bad = ids[(ids < 0) | (ids >= depth)].reshape(-1)[0]
        raise InputError(f"input {name!r}: id {bad} is outside [0, {depth})")
    out = np.zeros((*ids.shape, depth), np.uint64)
    np.put_along_axis(out, ids.astype(np.int64)[..., None], np.uint64(1), axis=-1)
    return out
