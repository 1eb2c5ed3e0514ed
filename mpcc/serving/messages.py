"""The serving protocol's messages, typed: one frozen dataclass per kind of message.

A message on the wire is a kind, a JSON meta and arrays (`wire.Message`). Each class here
names one kind (`KIND`) and the meta's fields, each with the check its value must pass.
`parse(meta)` builds the message from a peer's meta, raising `MalformedMessage` -- naming
the kind, the field and what it must be -- for a field that is missing or of the wrong
type or range (fields it does not know are ignored); `of(msg)` also checks the kind, and
`recv(ch)` reads the next message and parses it. `to_meta()` is the meta that goes on the
wire (optional fields left out while None), `send(ch)` sends it. The wire format is the
one the parties always spoke: these classes only name and check it.

Checks here are about a message alone; what depends on the party's state (a request's rows
against the plan's batch, a plan hash against the deployed one) is checked where it is used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from mpcc.errors import PartyError
from mpcc.serving.wire import Message

RID = re.compile(r"^[0-9a-f]{16,64}$")  # a client's request id


class MalformedMessage(PartyError):
    """A peer's message lacks a field, or has one of the wrong type or range."""


class _Link(Protocol):
    def send_msg(self, kind: str, meta: dict[str, Any] | None = None, arrays=()) -> None: ...

    def recv_msg(self, timeout: float | None = None, expect: str | None = None) -> Message: ...


@dataclass(frozen=True)
class Check:
    """What a field's value must be: `ok(value)`, described as `expected` in errors."""

    expected: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return type(v) is int  # (not bool)


STR = Check("a string", lambda v: isinstance(v, str))
INT = Check("an integer", _is_int)
COUNT = Check("an integer >= 0", lambda v: _is_int(v) and v >= 0)
ROWS = Check("an integer >= 1", lambda v: _is_int(v) and v >= 1)
SECONDS = Check(
    "a finite number >= 0",
    lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0,
)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
BITS = Check("an integer from 0 to 62", lambda v: _is_int(v) and 0 <= v <= 62)
SHAPE = Check(
    "a list of integers >= 0", lambda v: isinstance(v, list) and all(COUNT.ok(d) for d in v)
)
OBJECT = Check("an object", lambda v: isinstance(v, dict))
STRINGS = Check(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
)
STR_MAP = Check(
    "an object of strings",
    lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
)
REQUEST_ID = Check(
    "16 to 64 lowercase hex digits", lambda v: isinstance(v, str) and bool(RID.match(v))
)
ANNOUNCED = Check(
    "a non-empty list of [request id, rows] pairs",
    lambda v: (
        isinstance(v, list)
        and bool(v)
        and all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and ROWS.ok(x[1])
            for x in v
        )
    ),
)


def optional(check: Check) -> Check:
    return Check(f"{check.expected} or null", lambda v: v is None or check.ok(v))


def field(check: Check, default: Any = dataclasses.MISSING) -> Any:
    """A message field whose value must pass `check` (absent: `default`; none: required)."""
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults are not allowed")
    return dataclasses.field(default=default, metadata={"check": check})


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


@dataclass(frozen=True)
class ControlMessage:
    """Base of the typed messages (see the module docstring)."""

    KIND: ClassVar[str]

    @classmethod
    def parse(cls, meta: dict[str, Any]) -> Self:
        """The message of this kind with `meta`; MalformedMessage if a field is bad."""
        if not isinstance(meta, dict):
            raise MalformedMessage(f"a {cls.KIND!r} message has no meta object")
        values = {}
        for f in dataclasses.fields(cls):
            check: Check = f.metadata["check"]
            if f.name not in meta:
                if f.default is dataclasses.MISSING:
                    raise MalformedMessage(f"a {cls.KIND!r} message lacks its {f.name!r} field")
                continue
            v = meta[f.name]
            if not check.ok(v):
                raise MalformedMessage(
                    f"the {f.name!r} field of a {cls.KIND!r} message must be {check.expected}, "
                    f"not {_show(v)}"
                )
            values[f.name] = v
        return cls(**values)

    @classmethod
    def of(cls, msg: Message) -> Self:
        """`msg` as this kind of message (PartyError if it is of another kind)."""
        if msg.kind != cls.KIND:
            raise PartyError(f"got a {msg.kind!r} message where {cls.KIND!r} was expected")
        return cls.parse(msg.meta)

    @classmethod
    def recv(cls, ch: _Link, timeout: float | None = None) -> Self:
        """The next message on `ch`, which must be of this kind (see `recv_msg`)."""
        return cls.parse(ch.recv_msg(timeout, expect=cls.KIND).meta)

    @classmethod
    def lenient(cls, meta: dict[str, Any]) -> Self:
        """As `parse`, but a message sent badly gets the defaults: for errors and aborts,
        which end something whatever they say (every field must have a default)."""
        try:
            return cls.parse(meta)
        except MalformedMessage:
            return cls()

    def to_meta(self) -> dict[str, Any]:
        """The meta that goes on the wire: every field, optional ones only when set."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = v
        return out

    def send(self, ch: _Link, arrays: list[np.ndarray] | tuple = ()) -> None:
        ch.send_msg(self.KIND, self.to_meta(), arrays)


# -- opening a link -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello(ControlMessage):
    """The dialer's first message: which link it opens, in which protocol version; a peer
    link (P1 to P0) names the session it is for."""

    KIND = "hello"
    link: str = field(STR)
    version: int = field(INT)
    sid: str | None = field(optional(STR), None)
    lane: int | None = field(optional(COUNT), None)  # a peer link's lane (None: lane 0)


@dataclass(frozen=True)
class Welcome(ControlMessage):
    """A party takes the link; it names its role (the certificate already proved it)."""

    KIND = "welcome"
    role: str | None = field(optional(STR), None)


@dataclass(frozen=True)
class Refused(ControlMessage):
    KIND = "refused"
    msg: str = field(STR, "")


@dataclass(frozen=True)
class ErrorReply(ControlMessage):
    """A party's error; the link usually closes after it."""

    KIND = "error"
    msg: str = field(STR, "error")


@dataclass(frozen=True)
class Abort(ControlMessage):
    """The sender gave up on the protocol run or deploy in progress."""

    KIND = "abort"
    reason: str = field(STR, "?")


# -- clients ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request(ControlMessage):
    """A client's request: its id, how many samples its one share holds, and the hash of the
    plan it was encoded for (absent from old clients: refused as stale)."""

    KIND = "request"
    rid: str = field(REQUEST_ID)
    rows: int = field(ROWS)
    plan: str | None = field(optional(STR), None)

    @staticmethod
    def rid_of(meta: dict[str, Any]) -> str | None:
        """The request id of a request's meta if it is well formed (to answer it by id)."""
        rid = meta.get("rid") if isinstance(meta, dict) else None
        return rid if REQUEST_ID.ok(rid) else None


@dataclass(frozen=True)
class Failed(ControlMessage):
    """A request failed; `code` says what the client can do ("stale_plan": re-read the
    plan's interface)."""

    KIND = "failed"
    rid: str = field(STR)
    msg: str = field(STR, "request failed")
    code: str | None = field(optional(STR), None)


@dataclass(frozen=True)
class Result(ControlMessage):
    """A party's share of a request's result, with the hash of the plan that computed it."""

    KIND = "result"
    rid: str = field(STR)
    plan: str = field(STR)
    stats: dict = field(OBJECT, None)


@dataclass(frozen=True)
class PlanInterface(ControlMessage):
    """What a client encodes its inputs and decodes its answers with: the part of a party's
    `info` (a dict of public facts, sent while a model is deployed) about the plan."""

    KIND = "info"
    plan_hash: str = field(STR)
    batch: int = field(ROWS)
    input_shape: list = field(SHAPE)
    output_shape: list = field(SHAPE)
    frac_bits: int = field(BITS)
    output_scale: int = field(BITS)
    rows_independent: bool = field(BOOL, False)
    input_encoding: str | None = field(optional(STR), None)
    input_depth: int | None = field(optional(ROWS), None)


@dataclass(frozen=True)
class PartyInfo(ControlMessage):
    """A compute party's public facts, its answer to `info`: its state and counters, and how
    far ahead its preprocessing runs. While a model is deployed the same meta also carries
    the plan's name, output name and `PlanInterface` (`meta`); none of it is secret."""

    KIND = "info"
    role: str = field(STR)
    deployed: bool = field(BOOL)
    answered: int = field(COUNT, 0)
    kernels_ready: bool = field(BOOL, False)
    metrics: dict | None = field(optional(OBJECT), None)
    session: str | None = field(optional(STR), None)
    last_error: str | None = field(optional(STR), None)
    stock: int | None = field(optional(COUNT), None)  # while a session is live:
    lanes: int | None = field(optional(COUNT), None)
    query_material_bytes: int | None = field(optional(COUNT), None)
    material_held_bytes: int | None = field(optional(COUNT), None)
    name: str | None = field(optional(STR), None)  # while a model is deployed
    output_name: str | None = field(optional(STR), None)

    def meta(self, plan: PlanInterface | None) -> dict[str, Any]:
        """What goes on the wire: these fields (`session` always, null without one) and,
        with a deployed model, its interface's."""
        return {"session": None, **self.to_meta(), **(plan.to_meta() if plan else {})}


# -- deploys: owner and parties -----------------------------------------------------------------
@dataclass(frozen=True)
class DeployHead(ControlMessage):
    """The owner's deploy header: the public plan, its hash, the deployment's id and, to P0
    and P1, the names of the weight shares that follow (one `Share` each), both parties'
    commitments and this party's salt."""

    KIND = "deploy"
    plan: dict = field(OBJECT)
    plan_hash: str = field(STR)
    deploy_id: str = field(STR)
    weights: list = field(STRINGS, ())
    commitments: dict | None = field(optional(STR_MAP), None)
    salt: str | None = field(optional(STR), None)


@dataclass(frozen=True)
class Share(ControlMessage):
    KIND = "share"
    name: str = field(STR)


@dataclass(frozen=True)
class Commit(ControlMessage):
    KIND = "commit"


@dataclass(frozen=True)
class Staged(ControlMessage):
    KIND = "staged"
    role: str = field(STR)
    plan_hash: str = field(STR)
    deploy_id: str = field(STR)


@dataclass(frozen=True)
class Activate(ControlMessage):
    KIND = "activate"


@dataclass(frozen=True)
class Deployed(ControlMessage):
    KIND = "deployed"
    role: str = field(STR)
    plan_hash: str = field(STR)


# -- session start-up: dealer and parties -------------------------------------------------------
@dataclass(frozen=True)
class Offer(ControlMessage):
    """The dealer offers a session of a deployment, with its randomness contribution."""

    KIND = "offer"
    plan_hash: str = field(STR)
    deploy_id: str = field(STR)
    contribution: str = field(STR)


@dataclass(frozen=True)
class Accept(ControlMessage):
    """A party takes the offer: its deployment, contribution and PRG known answer."""

    KIND = "accept"
    plan_hash: str = field(STR)
    deploy_id: str = field(STR)
    contribution: str = field(STR)
    kat: str = field(STR)


@dataclass(frozen=True)
class Start(ControlMessage):
    """The session id and everyone's contributions (its one array: the party's seed)."""

    KIND = "start"
    sid: str = field(STR)
    contributions: dict = field(STR_MAP)


@dataclass(frozen=True)
class Ready(ControlMessage):
    KIND = "ready"
    sid: str = field(STR)


@dataclass(frozen=True)
class SessionCheck(ControlMessage):
    """What P0 and P1 compare before a session: everything either could hold otherwise."""

    KIND = "check"
    plan_hash: str = field(STR)
    deploy_id: str = field(STR)
    sid: str = field(STR)
    kat: str = field(STR)
    contributions: dict = field(STR_MAP)
    weight_share_commitments: dict | None = field(optional(STR_MAP))
    lanes: int = field(COUNT, 1)  # P0-P1 links, one query in flight on each


# -- queries --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Announce(ControlMessage):
    """P0 to P1: query `q` runs these requests, as [request id, rows], in this order."""

    KIND = "announce"
    q: int = field(COUNT)
    reqs: list = field(ANNOUNCED)


@dataclass(frozen=True)
class Go(ControlMessage):
    """P1's answer to an announcement: the requests it has (run them), those it rejected,
    those it has not received; and request ids that arrived since it last answered."""

    KIND = "go"
    have: list = field(STRINGS)
    rejected: list = field(STRINGS)
    absent: list = field(STRINGS, ())
    arrived: list = field(STRINGS, ())


@dataclass(frozen=True)
class Skip(Go):
    """As `Go`, but P1 has none of the requests: the query does not run."""

    KIND = "skip"


@dataclass(frozen=True)
class Dealt(ControlMessage):
    """The dealer's preprocessing material for one query (its arrays: a `Bundle`'s), and
    how long dealing it took."""

    KIND = "bundle"
    deal_s: float = field(SECONDS, 0.0)


@dataclass(frozen=True)
class Dealing(ControlMessage):
    """The dealer, while it deals a big query's material: `calls` of its protocol calls are
    dealt (progress, so that a party waiting for the bundle does not give up on it)."""

    KIND = "dealing"
    query: int = field(COUNT, 0)
    calls: int = field(COUNT, 0)


@dataclass(frozen=True)
class Credit(ControlMessage):
    """P1 to the dealer: material may be dealt up to query `upto`; requests answered."""

    KIND = "credit"
    upto: int = field(INT, -1)
    answered: int = field(COUNT, 0)


@dataclass(frozen=True)
class Answered(ControlMessage):
    """P0 to the dealer: requests answered in this session."""

    KIND = "answered"
    answered: int = field(COUNT, 0)
