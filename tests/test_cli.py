"""The `mpcc` command line: compile, inspect, run, and clear errors (status 2, no traceback)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from mpcc import inputs
from mpcc.cli import main
from mpcc.errors import InputError
from mpcc.zoo.reference import run_logits
from tests.onnx_builders import model, node, rand


@pytest.fixture(scope="module")
def lenet_plan(zoo_model, tmp_path_factory):
    path = zoo_model("lenet")
    out = tmp_path_factory.mktemp("cli") / "lenet.mpcc"
    assert main(["compile", str(path), "--input-shape", "4x1x28x28", "-o", str(out)]) == 0
    return path, out


def test_compile_prints_the_cost_table(lenet_plan, capsys, zoo_model, tmp_path) -> None:
    out = tmp_path / "l.mpcc"
    assert (
        main(["compile", str(zoo_model("lenet")), "--input-shape", "1x1x28x28", "-o", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "online rounds          32" in text and "= maxpool" in text and f"wrote {out}" in text
    assert main(["compile", str(zoo_model("lenet")), "-o", str(out), "--json"]) == 0
    assert '"rounds": 32' in capsys.readouterr().out


def test_inspect(lenet_plan, capsys) -> None:
    assert main(["inspect", str(lenet_plan[1])]) == 0
    assert "plan file with the owner's weights" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["--cleartext", "threads", "--processes"])
def test_run_any_number_of_samples(lenet_plan, digits_test, tmp_path, mode) -> None:
    onnx_path, plan = lenet_plan
    x = digits_test[0][:10]  # not a multiple of the plan's batch of 4
    np.save(tmp_path / "x.npy", x)
    args = [
        "run",
        str(plan),
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(tmp_path / "y.npy"),
        "-q",
    ]
    assert main(args + ([] if mode == "threads" else [mode])) == 0
    y = np.load(tmp_path / "y.npy")
    ref = run_logits(onnx_path, x)
    assert y.shape == (10, 10) and np.abs(y - ref).max() < 0.02


def _cli(*args: str, process: bool = False) -> subprocess.CompletedProcess:
    """`mpcc ARGS` in this process (`cli.main`, what `python -m mpcc` calls), or with
    `process=True` as `python -m mpcc ARGS` (a second or two to start: one test does it)."""
    if process:
        return subprocess.run(
            [sys.executable, "-m", "mpcc", *args], capture_output=True, text=True, timeout=300
        )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("mpcc: error: ")
    for n in needles:
        assert n in res.stderr, res.stderr


def test_malformed_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    _assert_user_error(_cli("compile", str(bad), process=True), "bad.onnx")


def test_unsupported_ops_are_listed_at_once(tmp_path) -> None:
    m = model(
        [node("Sin", ["x"], ["a"]), node("Relu", ["a"], ["b"]), node("Cos", ["b"], ["y"])],
        {"x": [1, 4]},
        ["y"],
    )
    onnx.save(m, tmp_path / "m.onnx")
    _assert_user_error(_cli("compile", str(tmp_path / "m.onnx")), "Sin", "Cos", "Relu")


def test_dynamic_dimension_left_unfixed(tmp_path) -> None:
    m = model([node("Relu", ["x"], ["y"])], {"x": [1, "width"]}, ["y"])
    onnx.save(m, tmp_path / "m.onnx")
    _assert_user_error(_cli("compile", str(tmp_path / "m.onnx")), "--input-shape")


def test_non_constant_weight(tmp_path) -> None:
    m = model([node("Conv", ["x", "w"], ["y"])], {"x": [1, 1, 4, 4], "w": [1, 1, 3, 3]}, ["y"])
    onnx.save(m, tmp_path / "m.onnx")
    _assert_user_error(_cli("compile", str(tmp_path / "m.onnx")), "Conv")


def test_wrong_input_shape_names_the_expected_shape(lenet_plan, tmp_path) -> None:
    np.save(tmp_path / "x.npy", rand(3, 1, 20, 20))
    res = _cli("run", str(lenet_plan[1]), "--input", str(tmp_path / "x.npy"), "--cleartext")
    _assert_user_error(res, "[n, 1, 28, 28]")


def test_missing_plan_file(tmp_path) -> None:
    _assert_user_error(_cli("inspect", str(tmp_path / "nope.mpcc")), "nope.mpcc")


def test_input_helpers(tmp_path) -> None:
    """mpcc.inputs: .npy loading and cutting samples into a plan's batches (shared by the
    cleartext and threaded runtimes, the serving client and the onnxruntime reference)."""
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(3, 2))
    assert inputs.load_npy(str(tmp_path / "x.npy")).shape == (3, 2)
    (tmp_path / "bad.npy").write_text("not an array")
    for path, why in ((tmp_path / "nope.npy", "no input file"), (tmp_path / "bad.npy", ".npy")):
        with pytest.raises(InputError, match=why):
            inputs.load_npy(str(path))

    x = inputs.as_samples(np.arange(10.0).reshape(5, 2), (4, 2))
    assert inputs.as_samples(np.ones(2), (4, 2)).shape == (1, 2)  # one sample
    with pytest.raises(InputError, match=r"\[n, 3\] \(any number"):
        inputs.as_samples(x, (4, 3))
    with pytest.raises(InputError, match="n >= 1"):
        inputs.as_samples(np.zeros((0, 2)), (4, 2), allow_empty=False)
    assert [len(c) for c in inputs.split_rows(x, 2)] == [2, 2, 1]

    seen = []

    def fn(chunk):
        seen.append(chunk.copy())
        return chunk * 10

    y = inputs.map_batches(x, 4, fn)
    assert [len(c) for c in seen] == [4, 4] and not seen[1][1:].any()  # zero-padded
    np.testing.assert_array_equal(y, x * 10)
    seen.clear()
    np.testing.assert_array_equal(inputs.map_batches(x, 4, fn, pad=False), x * 10)
    assert [len(c) for c in seen] == [4, 1]
    assert inputs.map_batches(x[:0], 4, fn).shape == (0,)


def test_non_numeric_input_is_a_clear_error(lenet_plan, tmp_path, capsys) -> None:
    plan = str(lenet_plan[1])
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "o.npy", np.array([1.0, None], dtype=object), allow_pickle=True)
    for name, dtype in (("s.npy", "<U1"), ("o.npy", "object")):
        path = str(tmp_path / name)
        assert main(["run", plan, "--input", path, "--cleartext"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mpcc: error: ") and path in err and dtype in err, err
        assert "numeric array is expected" in err
        assert main(["predict", "--config", str(tmp_path / "c.toml"), "--input", path]) == 2
        assert "numeric array is expected" in capsys.readouterr().err
    with pytest.raises(InputError, match="dtype <U1"):
        inputs.as_samples(np.array(["1", "2"]), (1, 2))


def _proc(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def _party_children(pid: int) -> dict[int, list[str]]:
    """The `mpcc party` processes whose parent is pid: their command lines."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (_proc(int(d.name)) or ("", 0))[1] == pid:
            try:
                argv = (d / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if "party" in argv:
                found[int(d.name)] = argv
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, PR_SET_PDEATHSIG")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_run_processes_stop_with_their_parent(lenet_plan, digits_test, tmp_path, sig) -> None:
    """`mpcc run --processes` killed: its party processes go too, and on SIGTERM it removes
    its temporary directory (with the cluster's CA key) and exits with 143."""
    np.save(tmp_path / "x.npy", digits_test[0][:40])
    cmd = [sys.executable, "-m", "mpcc", "run", str(lenet_plan[1]), "--processes", "-q"]
    parent = subprocess.Popen(
        [*cmd, "--input", str(tmp_path / "x.npy")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    parties: dict[int, list[str]] = {}
    try:
        deadline = time.monotonic() + 120
        while len(parties := _party_children(parent.pid)) < 3:
            assert parent.poll() is None, parent.stderr.read()
            assert time.monotonic() < deadline, "the party processes did not start"
            time.sleep(0.05)
        argv = next(iter(parties.values()))
        local = Path(argv[argv.index("--config") + 1]).parent
        assert local.name.startswith("mpcc-local-") and (local / "ca.key").exists()
        time.sleep(0.5)
        parent.send_signal(sig)
        rc = parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while (alive := [p for p in parties if (_proc(p) or ("Z",))[0] != "Z"]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert not alive, f"party processes {alive} outlived their parent"
        if sig == signal.SIGTERM:
            assert rc == 128 + signal.SIGTERM and "Traceback" not in parent.stderr.read()
            assert not local.exists()
        shutil.rmtree(local, ignore_errors=True)  # after SIGKILL nobody is left to remove it
    finally:
        for pid in [parent.pid, *parties]:
            if (_proc(pid) or ("Z",))[0] != "Z":
                os.kill(pid, signal.SIGKILL)  # a failed test leaves no process behind
        parent.wait()
        parent.stderr.close()
