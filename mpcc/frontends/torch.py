"""Export a PyTorch module to ONNX the way the compiler expects it.

Both of torch's exporters are supported:

* the TorchScript exporter (``dynamo=False``, default opset 17), and
* the ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``; torch picks the
  opset unless one is given).

Whatever the exporter, the graph input is named ``input`` and the first output ``logits``.
By default BatchNormalization nodes are kept (``keep_batchnorm=True``): both exporters would
otherwise fuse a BatchNormalization into the preceding Conv/Gemm, and the compiler has its own
BN-folding pass that should be exercised. The TorchScript exporter keeps them when exported with
``training=TrainingMode.PRESERVE`` on a module in eval mode (this skips its eval-only
Conv+BN peephole and nothing else); the dynamo exporter keeps them when its onnxscript
optimiser runs without the BN-fusion rewrite rules.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from mpcc.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "export"]

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"

# Loggers that report harmless things during export (e.g. "torchvision is not installed").
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript")


def export(
    module: torch.nn.Module,
    example_input: torch.Tensor,
    path: str | Path | None = None,
    *,
    dynamo: bool = False,
    opset: int | None = None,
    dynamic_batch: bool = False,
    keep_batchnorm: bool = True,
) -> onnx.ModelProto:
    """Export ``module`` (put in eval mode) to ONNX, save it to ``path`` if given, return it.

    ``dynamic_batch`` makes dimension 0 of the input and output symbolic (``"batch"``).
    ``keep_batchnorm=False`` lets the exporter fuse BatchNormalization into the preceding op.
    Raises :class:`~mpcc.errors.ModelError` if torch (or onnxscript, for ``dynamo=True``) is
    missing or the export fails.
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError("exporting from PyTorch needs torch: pip install 'mpcc[torch]'") from e
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise ModelError(
            f"example_input must be a torch.Tensor, got {type(example_input).__name__}"
        )

    module.eval()
    kind = "dynamo" if dynamo else "TorchScript"
    try:
        with _quiet(), torch.no_grad():
            if dynamo:
                proto = _export_dynamo(module, example_input, opset, dynamic_batch, keep_batchnorm)
            else:
                proto = _export_torchscript(
                    module, example_input, opset, dynamic_batch, keep_batchnorm
                )
    except ModelError:
        raise
    except Exception as e:
        detail = str(e).strip()
        if len(detail) > 800:  # torch.export's reports run to pages; the cause stays chained
            detail = detail[:800] + " ..."
        raise ModelError(
            f"{kind} ONNX export of {type(module).__name__} failed: {type(e).__name__}: {detail}"
        ) from e

    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(path))
    return proto


def _export_torchscript(
    module: torch.nn.Module,
    x: torch.Tensor,
    opset: int | None,
    dynamic_batch: bool,
    keep_batchnorm: bool,
) -> onnx.ModelProto:
    import torch

    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
    if keep_batchnorm:
        # PRESERVE on an eval-mode module exports inference-mode BN but skips the Conv+BN fusion.
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (x,),
        buf,
        dynamo=False,
        opset_version=opset or DEFAULT_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        do_constant_folding=True,
        **kwargs,
    )
    return onnx.load_model_from_string(buf.getvalue())


def _export_dynamo(
    module: torch.nn.Module,
    x: torch.Tensor,
    opset: int | None,
    dynamic_batch: bool,
    keep_batchnorm: bool,
) -> onnx.ModelProto:
    import torch

    try:
        import onnxscript  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript") from e

    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim(BATCH_DIM)},)
    if opset is not None:
        kwargs["opset_version"] = opset
    program = torch.onnx.export(
        module,
        (x,),
        dynamo=True,
        verbose=False,
        optimize=not keep_batchnorm,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        **kwargs,
    )
    if program is None:  # pragma: no cover - torch always returns a program for dynamo=True
        raise ModelError("torch.onnx.export(dynamo=True) returned no program")
    if keep_batchnorm:
        program.model = _optimize_keeping_batchnorm(program.model)
    return program.model_proto


def _optimize_keeping_batchnorm(model: Any) -> Any:
    """Run onnxscript's default optimisation on an ``onnx_ir`` model, minus BN fusion."""
    import onnx_ir.passes.common as common
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules import common as rules

    bn_rules = {
        rules.fuse_batchnorm_into_conv_rule,
        rules.fuse_batchnorm_into_conv_transpose_rule,
        rules.fuse_batchnorm_into_gemm_rule,
    }
    default = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if default is None:  # pragma: no cover - older/newer onnxscript: a conservative subset
        default = (
            rules.no_op_cast_rule,
            rules.no_op_expand_rule,
            rules.no_op_transpose_rule,
            rules.reshape_reshape_rule,
            rules.squeeze_reshape_1d_rule,
            rules.materialize_reshape_shape_rule,
            rules.remove_optional_bias_from_conv_rule,
            rules.remove_optional_bias_from_gemm_rule,
        )
    rewrite_rules = [r for r in default if r not in bn_rules]
    if model.functions:
        common.InlinePass()(model)
    for _ in range(2):
        optimizer.fold_constants(model)
        model = rewriter.rewrite(model, rewrite_rules)
    for p in (
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.RemoveUnusedOpsetsPass(),
    ):
        model = p(model).model
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings, progress prints and informational logging."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
