"""User-facing errors. The CLI prints these as one clear message and exits with status 2."""


class MpccError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ModelError(MpccError):
    """The ONNX model is malformed, dynamic where it must be static, or uses unsupported ops."""


class PlanError(MpccError):
    """A plan file is malformed, of another version, or does not match its hash."""


class InputError(MpccError):
    """A query's input has the wrong shape or type."""


class MaterialError(MpccError):
    """Preprocessing material was missing, reused, out of order or from another session."""


class PartyError(MpccError):
    """A peer party failed, timed out or sent something malformed."""
