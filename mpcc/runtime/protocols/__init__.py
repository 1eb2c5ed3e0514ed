"""The secure protocols, one module each, and the call type each implements (`BY_CALL`)."""

from mpcc.compiler.calls import Call
from mpcc.runtime.protocols import (
    linear,
    matmul_ss,
    max_pairs,
    multiply,
    powers,
    relu,
    relu_fss,
    sign,
    sign_fss,
    square,
    truncation,
)
from mpcc.runtime.protocols.base import Protocol

BY_CALL: dict[type[Call], Protocol] = {
    m.PROTOCOL.call: m.PROTOCOL
    for m in (
        linear,
        multiply,
        matmul_ss,
        truncation,
        relu,
        square,
        sign,
        powers,
        sign_fss,
        relu_fss,
        max_pairs,
    )
}


def protocol_for(call: Call) -> Protocol:
    """The protocol implementing `call`."""
    return BY_CALL[type(call)]


__all__ = ["BY_CALL", "Protocol", "protocol_for"]
