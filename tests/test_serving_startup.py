"""Start-up checks without party processes: the PRG known answer, recomputed independently of
mpcc, and the owner's commitments to the weight shares (computed, stored, checked on load)."""

from __future__ import annotations

import hashlib
import io
import json
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpcc.compiler import planfile
from mpcc.errors import PartyError, PlanError
from mpcc.runtime.prg import Prg
from mpcc.serving import startup, state


def _stream(seed: bytes, label: str, n: int) -> bytes:
    """n bytes of the stream for `label` under `seed`, straight from the `cryptography`
    primitives as documented in mpcc/runtime/prg.py and session.py: key = HKDF-SHA256(seed,
    no salt, info = label, 16 bytes); stream = AES-128-CTR (counter block 0) over zeros."""
    key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=label.encode()).derive(seed)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(n)) + enc.finalize()


def test_prg_known_answer_is_recomputed_independently():
    plan_hash, sid = "0" * 64, "0" * 32
    call = _stream(bytes(16), f"mpcc/call/{plan_hash}/{sid}/1/2/3", 64)
    mask = _stream(bytes(range(16)), f"mpcc/weight-mask/{plan_hash}/{sid}/w", 64)
    expected = hashlib.sha256(call + mask).hexdigest()
    assert expected == startup.PRG_KAT
    assert startup.prg_digest() == startup.PRG_KAT
    assert startup.prg_kat() == startup.PRG_KAT


def test_prg_matches_published_vectors():
    # FIPS-197 / NIST: AES-128 of the zero block under the zero key; CTR's first block is
    # AES_k(counter 0), so that is the stream's first 16 bytes
    assert Prg(bytes(16)).bytes(16).tobytes().hex() == "66e94bd4ef8a2c3b884cfa59ca342b2e"
    # RFC 5869 A.3 (HKDF-SHA256, no salt, no info): OKM starts 8da4e775…; an empty label
    # derives exactly that key
    okm = bytes.fromhex("8da4e775a563c18f715f802a063c5a31")
    assert np.array_equal(Prg.derive(b"\x0b" * 22).uint64(4), Prg(okm).uint64(4))


def test_a_wrong_prg_stops_start_up(monkeypatch):
    monkeypatch.setattr(startup, "prg_digest", lambda: "f" * 64)
    with pytest.raises(PartyError, match="PRG fails its known-answer test") as e:
        startup.prg_kat()
    assert "f" * 13 not in str(e.value)  # no long values in a message that gets logged


def test_mismatch_names_the_entry_that_differs():
    a = {"p0": "a" * 64, "p1": "b" * 64}
    startup.mismatch("commitments", a, dict(a), "P0", "P1")
    with pytest.raises(PartyError, match=r"disagree on the commitments \(p1\)") as e:
        startup.mismatch("commitments", a, {**a, "p1": "c" * 64}, "P0", "P1")
    assert "b" * 13 not in str(e.value) and "c" * 13 not in str(e.value)
    with pytest.raises(PartyError, match="disagree on the commitments"):
        startup.mismatch("commitments", a, None, "P0", "P1")


def _shares(n: int = 3) -> dict[str, np.ndarray]:
    return {f"w{i}": Prg.fresh().uint64(2, 3 + i) for i in range(n)}


def test_share_commitment_binds_everything():
    did, salt, s = secrets.token_hex(16), secrets.token_bytes(32), _shares()
    c = state.share_commitment(did, "p0", salt, s)
    assert len(c) == 64
    assert state.share_commitment(did, "p0", salt, dict(reversed(s.items()))) == c
    assert state.share_commitment(secrets.token_hex(16), "p0", salt, s) != c
    assert state.share_commitment(did, "p1", salt, s) != c
    assert state.share_commitment(did, "p0", secrets.token_bytes(32), s) != c
    flipped = {**s, "w1": s["w1"].copy()}
    flipped["w1"][1, 2] ^= np.uint64(1)
    assert state.share_commitment(did, "p0", salt, flipped) != c
    reshaped = {**s, "w0": s["w0"].reshape(3, 2)}
    assert state.share_commitment(did, "p0", salt, reshaped) != c


@pytest.fixture
def deployed(tmp_path):
    """A tiny plan, its shares and a P1 deployment saved in tmp_path/p1."""
    from mpcc.compiler.pipeline import compile_onnx
    from mpcc.runtime.owner import share_weights
    from tests.onnx_builders import model, node, rand

    m = model(
        [node("Gemm", ["x", "w1", "b1"], ["h"]), node("Relu", ["h"], ["y"])],
        {"x": [2, 5]},
        ["y"],
        {"w1": rand(5, 4), "b1": rand(4, seed=1)},
    )
    prog, weights = compile_onnx(m)
    s0, s1 = share_weights(prog, weights)
    did = secrets.token_hex(16)
    salts = {"p0": secrets.token_bytes(32), "p1": secrets.token_bytes(32)}
    comm = {
        "p0": state.share_commitment(did, "p0", salts["p0"], s0),
        "p1": state.share_commitment(did, "p1", salts["p1"], s1),
    }
    public, h = planfile.to_public(prog), planfile.plan_hash(prog)
    dep = state.Deployment.build(public, h, did, s1, role="p1", commitments=comm, salt=salts["p1"])
    state.save(tmp_path / "p1", dep)
    return dep, (public, h, did, s0, s1, comm, salts)


def test_deployment_checks_shares_against_commitments(deployed):
    dep, (public, h, did, s0, s1, comm, salts) = deployed
    assert dep.role == "p1" and dep.commitments == comm
    build = state.Deployment.build
    with pytest.raises(PlanError, match="P1's weight shares do not match"):
        build(public, h, did, s0, role="p1", commitments=comm, salt=salts["p1"])
    with pytest.raises(PlanError, match="do not match"):  # another party's salt
        build(public, h, did, s1, role="p1", commitments=comm, salt=salts["p0"])
    with pytest.raises(PlanError, match="commitments"):
        build(public, h, did, s1, role="p1", commitments=None, salt=salts["p1"])
    with pytest.raises(PlanError, match="salt"):
        build(public, h, did, s1, role="p1", commitments=comm, salt="zz")
    assert build(public, h, did, None).commitments is None  # the dealer: no shares


def test_tampered_share_file_is_rejected_on_load(deployed, tmp_path):
    dep, _ = deployed
    back = state.load(tmp_path / "p1")
    assert back.commitments == dep.commitments and back.salt == dep.salt and back.role == "p1"
    path = tmp_path / "p1" / state.FILE
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["w0"] = arrays["w0"].copy()
    arrays["w0"].flat[0] ^= np.uint64(1 << 40)  # one bit of one share word
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(PlanError, match="P1's weight shares do not match the owner's commitment"):
        state.load(tmp_path / "p1")


def test_file_without_commitments_is_rejected(deployed, tmp_path):
    path = tmp_path / "p1" / state.FILE
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays[state.META].tobytes())
    del meta["commitments"]  # as an older mpcc wrote it
    arrays[state.META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(PlanError, match="commitments.*deploy the model again"):
        state.load(tmp_path / "p1")
