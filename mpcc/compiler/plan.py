"""A Plan: a compiled model, the public program and the model owner's weights, as one object.

    plan = mpcc.compile(module, example_input=x)    # or mpcc.load("lenet.mpcc")
    print(plan)                                     # the IR with each instruction's cost
    plan.cost                                       # totals: rounds, bytes, dealer bytes, MACs
    plan.save("lenet.mpcc")
    with mpcc.LocalCluster(plan) as cluster: ...

`prog, weights = plan` still unpacks, as the tuple compile returned before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mpcc.compiler import planfile
from mpcc.compiler.costmodel import CostReport, estimate
from mpcc.compiler.costs import Cost
from mpcc.compiler.ir import Program
from mpcc.compiler.verify import verify


@dataclass(eq=False)
class Plan:
    """The public `program` and the owner's plaintext `weights` (empty for a public-only
    plan file, as parties and the dealer hold it)."""

    program: Program
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: Any = None  # the `calibrate.Report` of a plan compiled with calibration data

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = {}

    # -- as a tuple -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        """`prog, weights = plan`."""
        return iter((self.program, self.weights))

    def __getitem__(self, i: int) -> Any:
        """`plan[0]` is the program, `plan[1]` the weights (as the tuple compile returned)."""
        return (self.program, self.weights)[i]

    def __len__(self) -> int:
        return 2

    # -- facts ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.program.name

    @property
    def batch(self) -> int:
        """Samples per query (the first input's leading dimension)."""
        return self.program.batch

    @property
    def hash(self) -> str:
        """SHA-256 of the public part: what the parties compare at start-up."""
        return planfile.plan_hash(self.program)

    @property
    def parameters(self) -> int:
        """Weight elements the plan holds (its parameter count after folding)."""
        return sum(w.size for w in self.program.weights.values())

    @property
    def has_weights(self) -> bool:
        return bool(self.weights) or not self.program.weights

    @property
    def report(self) -> CostReport:
        """Per-instruction costs, the per-query totals and the one-time setup."""
        return estimate(self.program)

    @property
    def cost(self) -> Cost:
        """Per-query totals (rounds, bytes each party sends, dealer bytes, MACs), with the
        once-per-session bytes of opening the masked weights as `setup`."""
        r = self.report
        return replace(r.total, setup=r.setup.setup)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> str:
        """Write a plan file (with the weights, if held); returns the plan's hash."""
        return planfile.save(path, self.program, self.weights or None)

    @classmethod
    def load(cls, path: str | Path, with_weights: bool = True) -> Plan:
        """Read and verify a plan file."""
        return cls(*planfile.load(path, with_weights))

    # -- printing ---------------------------------------------------------------------------
    def __str__(self) -> str:
        from mpcc.compiler.report import format_report

        return format_report(self.program, calibration=self.calibration)

    def __repr__(self) -> str:
        held = "with weights" if self.weights else "public part only"
        return (
            f"<Plan {self.name}: {len(self.program.instrs)} instructions, batch {self.batch}, "
            f"{self.parameters:,} parameters, {held}, sha256={self.hash[:12]}>"
        )


def as_plan(
    plan: Plan | Program | tuple | str | Path, weights: dict[str, np.ndarray] | None = None
) -> Plan:
    """A Plan from a Plan, a plan file path, a (Program, weights) pair or a Program and its
    `weights` (a Program is verified, with its weights: VerifyError if they do not fit)."""
    if isinstance(plan, Plan):
        return plan if weights is None else Plan(plan.program, weights)
    if isinstance(plan, str | Path):
        loaded = Plan.load(plan)
        return loaded if weights is None else Plan(loaded.program, weights)
    if isinstance(plan, tuple) and len(plan) == 2 and isinstance(plan[0], Program):
        plan, weights = plan[0], plan[1] if weights is None else weights
    if isinstance(plan, Program):
        verify(plan, weights or None)  # the weights a caller pairs with it fit it
        return Plan(plan, weights or {})
    raise TypeError(f"expected a Plan, a Program or a plan file path, not {type(plan).__name__}")
