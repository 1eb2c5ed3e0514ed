"""1-D and 3-D CNNs trained briefly on real data (the digits as signals and as volumes) match
onnxruntime securely: argmax agreement >= 99.5% and max logit error <= 0.02 over the whole
test split, with the transport's traffic equal to the cost model's."""

from __future__ import annotations

import numpy as np
import pytest

import mpcc
from mpcc.compiler.costmodel import estimate
from tests import nd_cnns
from tests.onnx_builders import run

pytest.importorskip("torch")


@pytest.mark.parametrize(
    "name, view, ir_ops",
    [
        ("cnn1d", nd_cnns.as_signal, {"conv", "maxpool", "avgpool", "matmul"}),
        ("cnn3d", nd_cnns.as_volume, {"conv", "maxpool", "sumpool", "matmul"}),  # 1/12 folded
    ],
)
def test_cnn_matches_onnxruntime_securely(zoo_cache_dir, name, view, ir_ops) -> None:
    import onnx

    path = nd_cnns.onnx_path(name, zoo_cache_dir)
    images, labels = nd_cnns.digits("test")
    x = view(images)
    m = onnx.load(path)
    ref = run(m, {"x": x})[0].astype(np.float64)
    assert (ref.argmax(1) == labels).mean() >= 0.95  # it learned: the comparison means something

    plan = mpcc.compile(m, input_shape=x.shape)
    assert ir_ops <= {i.op.name for i in plan.program.instrs}, plan.program.text()
    with mpcc.LocalCluster(plan) as cluster:
        secure = cluster.predict(x).reshape(ref.shape)
        stats = cluster.stats
    agree = (secure.argmax(1) == ref.argmax(1)).mean()
    err = np.abs(secure - ref).max()
    assert agree >= 0.995 and err <= 0.02, (agree, err)
    want = estimate(plan.program).total
    assert (stats.rounds, stats.sent[0], stats.dealer_bytes) == (
        want.rounds,
        want.sent,
        want.dealer,
    )
