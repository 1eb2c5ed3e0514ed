"""The runtime's rule for every IR op (`base.RULES`), registered by the family modules."""

from mpcc.runtime.rules import arith, compare, io, linear, movement, pool  # noqa: F401
from mpcc.runtime.rules.base import RULES, Backend, Rule, add_public, check_shape, u64

__all__ = ["RULES", "Backend", "Rule", "add_public", "check_shape", "u64"]
