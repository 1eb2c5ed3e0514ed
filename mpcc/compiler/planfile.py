"""Plan files: a versioned, self-describing zip with the public plan and, apart, the weights.

`plan.json` holds the public part (IR, shapes, fixed-point parameters, protocol choices);
its canonical SHA-256 is what all parties compare at start-up. `weights/NAME.npy` hold the
model owner's weights in their source precision (float32 from PyTorch and Keras), stored
without compression: weights hardly compress, and deflating hundreds of MB took minutes.
Parties never receive them, only shares of them. Every plan read is checked by the IR
verifier (`mpcc.compiler.verify`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.compiler.ir import Instr, Program, Value, WeightSpec
from mpcc.compiler.ops import RuleError, lookup
from mpcc.compiler.verify import VerifyError, verify
from mpcc.errors import PlanError

FORMAT = "mpcc-plan"
VERSION = 3  # 3: conv over 1-3 spatial axes (was conv2d), input encodings, the smooth ops
# 2: weights as .npy entries in their own dtype; input carries its shape; rescale
WEIGHTS_DIR = "weights/"
PROTOCOLS = {
    "linear": "beaver triple, weights masked once per session (F = W - B)",
    "truncation": "known-MSB with a 2^62 bias, 1 round, |x| < 2^62, error in {0, +1} LSB",
    "relu": "masked opening + 62-bit comparison tree (4-to-1, masked wires, 3 rounds) + daBit",
    "randomness": "AES-128-CTR keyed by HKDF-SHA256 from secrets; seed-compressed dealer",
}
_FIXED_DATE = (2020, 1, 1, 0, 0, 0)  # zip entries carry no real timestamp: builds reproduce


def to_public(prog: Program) -> dict[str, Any]:
    """The public part of a plan as plain JSON data."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": prog.name,
        "ring_bits": 64,
        "frac_bits": prog.frac_bits,
        "public_weights": prog.public_weights,
        "protocols": PROTOCOLS,
        "values": [[list(v.shape), v.scale, v.vis] for v in prog.values],
        "instrs": [
            {
                "op": i.op.name,
                "out": i.out,
                "args": list(i.args),
                "weights": list(i.weights),
                "attrs": i.attrs,
            }
            for i in prog.instrs
        ],
        "weights": {
            n: {"shape": list(w.shape), "scale": w.scale, "source": w.source}
            for n, w in sorted(prog.weights.items())
        },
        "inputs": [[n, v] for n, v in prog.inputs],
        "outputs": [[n, v] for n, v in prog.outputs],
        "notes": prog.notes,
    }


def canonical_json(public: dict[str, Any]) -> bytes:
    """The public part as canonical JSON bytes (sorted keys, no spaces): what is hashed."""
    return json.dumps(public, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def plan_hash(prog: Program) -> str:
    """SHA-256 (hex) of the canonical public part: equal plans, equal hashes."""
    return hashlib.sha256(canonical_json(to_public(prog))).hexdigest()


def from_public(d: dict[str, Any]) -> Program:
    """Rebuild a Program from its public part, checking format and version, then verify it
    (`VerifyError`, a PlanError, names the instruction and the rule it breaks). Whatever
    `d` holds, the only error is a PlanError."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise PlanError("not an mpcc plan (format field missing or wrong)")
    if d.get("version") != VERSION:
        raise PlanError(
            f"plan format version {d.get('version')} is not supported by this mpcc "
            f"(it reads version {VERSION}); recompile the model"
        )
    try:
        prog = Program(
            name=str(d["name"]), frac_bits=d["frac_bits"], public_weights=d["public_weights"]
        )
        prog.values = [Value(i, tuple(s), sc, vis) for i, (s, sc, vis) in enumerate(d["values"])]
        prog.instrs = []
        for k, i in enumerate(d["instrs"]):
            try:
                op = lookup(i["op"])
            except RuleError as e:
                raise VerifyError(
                    f"plan check: instruction {k} (%{i.get('out')} = {i['op']}): {e} "
                    "[rule: known op]",
                    "known op",
                    k,
                ) from None
            attrs = i["attrs"]
            if not isinstance(attrs, dict) or not all(isinstance(a, str) for a in attrs):
                raise TypeError(f"instruction {k}: attributes must be an object")
            prog.instrs.append(Instr(op, i["out"], tuple(i["args"]), tuple(i["weights"]), attrs))
        prog.weights = {
            n: WeightSpec(n, tuple(w["shape"]), w["scale"], w.get("source", ""))
            for n, w in d["weights"].items()
        }
        prog.inputs = [(n, v) for n, v in d["inputs"]]
        prog.outputs = [(n, v) for n, v in d["outputs"]]
        prog.notes = list(d["notes"])
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise PlanError(f"plan file is malformed: {type(e).__name__}: {e}") from None
    verify(prog)
    return prog


def save(path: str | Path, prog: Program, weights: dict[str, np.ndarray] | None) -> str:
    """Write a plan file (weights, if given, in their own dtype); returns the plan's hash."""
    public = to_public(prog)
    digest = hashlib.sha256(canonical_json(public)).hexdigest()
    manifest = {"format": FORMAT, "version": VERSION, "sha256": digest}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        _write(z, "manifest.json", json.dumps(manifest, indent=1).encode())
        _write(z, "plan.json", canonical_json(public))
        for n in sorted(weights or {}):
            a = np.asarray(weights[n])
            if a.dtype.kind != "f":
                a = a.astype(np.float64)
            info = zipfile.ZipInfo(f"{WEIGHTS_DIR}{n}.npy", date_time=_FIXED_DATE)
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
    return digest


def _write(z: zipfile.ZipFile, name: str, data: bytes) -> None:
    z.writestr(zipfile.ZipInfo(name, date_time=_FIXED_DATE), data)


def load(path: str | Path, with_weights: bool = True) -> tuple[Program, dict[str, np.ndarray]]:
    """Read a plan file, verifying its hash and its IR; weights are {} if absent or not
    wanted."""
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("version") != VERSION:
                raise PlanError(
                    f"{path}: plan format version {manifest.get('version')} is not supported by "
                    f"this mpcc (it reads version {VERSION}); compile the model again"
                )
            raw = z.read("plan.json")
            weights: dict[str, np.ndarray] = {}
            if with_weights:
                for name in z.namelist():
                    if name.startswith(WEIGHTS_DIR) and name.endswith(".npy"):
                        with z.open(name) as f:
                            arr = np.lib.format.read_array(f, allow_pickle=False)
                        weights[name[len(WEIGHTS_DIR) : -len(".npy")]] = arr
    except FileNotFoundError:
        raise PlanError(f"no plan file at {path}") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, ValueError, OSError) as e:
        raise PlanError(f"{path} is not a readable mpcc plan file ({e})") from None
    if hashlib.sha256(raw).hexdigest() != manifest.get("sha256"):
        raise PlanError(f"{path}: plan.json does not match the hash in its manifest")
    try:
        prog = from_public(json.loads(raw))
        if weights:
            verify(prog, weights)
    except VerifyError as e:
        raise VerifyError(f"{path}: {e}", e.rule, e.index) from None
    return prog, weights
