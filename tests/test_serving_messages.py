"""Typed control messages (issue 14): each kind's fields are checked on receipt, errors name
the kind and the field, and what is sent is the meta the parties always sent."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from mpcc.errors import PartyError
from mpcc.serving import messages as m
from mpcc.serving.wire import Message

KINDS = [
    c
    for _, c in inspect.getmembers(m, inspect.isclass)
    if issubclass(c, m.ControlMessage) and c is not m.ControlMessage
]

RID = "ab" * 16
EXAMPLES = [
    m.Hello("client", 1),
    m.Hello("peer", 1, sid="s" * 64),
    m.Hello("peer", 1, sid="s" * 64, lane=3),
    m.Welcome("p0"),
    m.Refused("no 'x' links here"),
    m.ErrorReply("p0 rejected the deployment: bad plan"),
    m.Abort("the deployment failed at p1"),
    m.Request(RID, 4, "f" * 64),
    m.Failed(RID, "P1: P0 did not schedule this request in time"),
    m.Failed(RID, "stale", code="stale_plan"),
    m.Result(RID, "f" * 64, {"online_s": 0.25, "rounds": 12}),
    m.DeployHead({"instructions": []}, "f" * 64, "d" * 32, ["w0", "w1"], {"p0": "a"}, "00"),
    m.DeployHead({"instructions": []}, "f" * 64, "d" * 32),
    m.Share("w0"),
    m.Commit(),
    m.Staged("p1", "f" * 64, "d" * 32),
    m.Activate(),
    m.Deployed("dealer", "f" * 64),
    m.Offer("f" * 64, "d" * 32, "c" * 64),
    m.Accept("f" * 64, "d" * 32, "c" * 64, "k" * 64),
    m.Start("s" * 64, {"dealer": "a", "p0": "b", "p1": "c"}),
    m.Ready("s" * 64),
    m.SessionCheck("f" * 64, "d" * 32, "s" * 64, "k", {"p0": "b"}, None),
    m.Announce(3, [[RID, 2], ["cd" * 16, 1]]),
    m.Go([RID], [], ["cd" * 16], []),
    m.Skip([], [RID]),
    m.Dealt(0.125),
    m.Dealing(3, 17),
    m.Credit(7, 40),
    m.Answered(41),
    m.PlanInterface("f" * 64, 4, [4, 1, 28, 28], [4, 10], 16, 16, True),
    m.PlanInterface("f" * 64, 1, [1, 32], [1, 2], 16, 16, False, "onehot", 30522),
    m.PartyInfo("p0", False),
    m.PartyInfo("p1", True, 12, True, {"requests": 3}, "s" * 64, None, 4, 2, 1024, 4096, "lenet"),
]


def test_every_kind_has_an_example_and_checked_fields():
    assert {type(e) for e in EXAMPLES} == set(KINDS)
    own = [c for c in KINDS if c is not m.PlanInterface]  # which reads part of `info`
    assert len({c.KIND for c in own}) == len(own)
    assert m.PlanInterface.KIND == m.PartyInfo.KIND
    for c in KINDS:
        for f in dataclasses.fields(c):
            assert isinstance(f.metadata.get("check"), m.Check), (c.__name__, f.name)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_json(msg):
    meta = json.loads(json.dumps(msg.to_meta()))  # as it crosses the wire
    back = type(msg).of(Message(msg.KIND, meta))
    assert back.to_meta() == json.loads(json.dumps(msg.to_meta()))


def test_the_meta_sent_is_the_one_parties_always_sent():
    # optional fields stay off the wire while unset, as the dict literals did
    assert m.Hello("client", 1).to_meta() == {"link": "client", "version": 1}
    assert m.Hello("peer", 1, "s").to_meta() == {"link": "peer", "version": 1, "sid": "s"}
    assert m.Failed(RID, "no").to_meta() == {"rid": RID, "msg": "no"}
    assert m.Failed(RID, "no", "stale_plan").to_meta()["code"] == "stale_plan"
    assert m.Request(RID, 1, "h").to_meta() == {"rid": RID, "rows": 1, "plan": "h"}
    head = m.DeployHead({}, "h", "d", [])  # to the dealer: no commitments, no salt
    assert head.to_meta() == {"plan": {}, "plan_hash": "h", "deploy_id": "d", "weights": []}
    assert m.Credit(-1, 0).to_meta() == {"upto": -1, "answered": 0}
    assert m.Commit().to_meta() == {}


@pytest.mark.parametrize(
    "cls, meta, words",
    [
        (m.Credit, {"upto": "3", "answered": 0}, ["'upto'", "'credit'", "an integer", "'3'"]),
        (m.Answered, {"answered": -1}, ["'answered'", "an integer >= 0"]),
        (m.Answered, {"answered": True}, ["'answered'", "True"]),  # a bool is not a count
        (m.Request, {"rid": "XYZ", "rows": 1}, ["'rid'", "'request'", "hex digits"]),
        (m.Request, {"rid": RID, "rows": 0}, ["'rows'", "an integer >= 1"]),
        (m.Request, {"rows": 1}, ["'request'", "lacks", "'rid'"]),
        (m.Hello, {"link": "client", "version": "1"}, ["'version'", "'hello'"]),
        (m.Announce, {"q": 0, "reqs": [[RID, "2"]]}, ["'reqs'", "'announce'", "pairs"]),
        (m.Announce, {"q": 0, "reqs": []}, ["'reqs'", "non-empty"]),
        (m.Go, {"have": [RID, 5], "rejected": []}, ["'have'", "'go'", "list of strings"]),
        (m.Start, {"sid": "s", "contributions": ["a"]}, ["'contributions'", "'start'"]),
        (m.Dealt, {"deal_s": float("nan")}, ["'deal_s'", "finite"]),
        (
            m.PlanInterface,
            {"plan_hash": "h", "batch": 4, "input_shape": [4, 8], "output_shape": [4, 2]}
            | {"frac_bits": 99, "output_scale": 16},
            ["'frac_bits'", "'info'", "from 0 to 62"],
        ),
        (m.PartyInfo, {"role": "p0", "deployed": True, "lanes": -1}, ["'lanes'", "'info'"]),
        (m.PartyInfo, {"role": "p0", "deployed": "yes"}, ["'deployed'", "true or false"]),
        (m.DeployHead, {"plan": [], "plan_hash": "h", "deploy_id": "d"}, ["'plan'", "object"]),
        (
            m.DeployHead,
            {"plan": {}, "plan_hash": "h", "deploy_id": "d", "weights": "w"},
            ["'weights'"],
        ),
    ],
)
def test_malformed_fields_are_named(cls, meta, words):
    with pytest.raises(m.MalformedMessage) as err:
        cls.parse(meta)
    assert isinstance(err.value, PartyError)  # handled wherever a peer's failure is
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_party_info_carries_the_plan_interface_flat():
    plan = m.PlanInterface("f" * 64, 4, [4, 1, 28, 28], [4, 10], 16, 16, True)
    meta = m.PartyInfo("p0", True, lanes=2).meta(plan)
    assert meta["session"] is None  # always there: null without a session
    assert m.PartyInfo.parse(meta).lanes == 2
    assert m.PlanInterface.parse(meta) == plan  # what a client decodes with
    assert "plan_hash" not in m.PartyInfo("p0", False).meta(None)


def test_a_message_of_another_kind_is_refused_and_unknown_fields_ignored():
    with pytest.raises(PartyError, match="got a 'skip' message where 'go' was expected"):
        m.Go.of(Message("skip", {"have": [], "rejected": []}))
    assert m.Ready.parse({"sid": "s", "later": 1}) == m.Ready("s")
    with pytest.raises(m.MalformedMessage, match="no meta object"):
        m.Ready.parse(["s"])


def test_errors_and_aborts_are_read_leniently():
    assert m.ErrorReply.lenient({"msg": 5}).msg == "error"  # it fails all the same
    assert m.Abort.lenient({}).reason == "?"
    assert m.ErrorReply.lenient({"msg": "why"}).msg == "why"


def test_request_id_of_a_malformed_request():
    assert m.Request.rid_of({"rid": RID, "rows": "x"}) == RID  # answered by id, as failed
    assert m.Request.rid_of({"rid": "no"}) is None  # answered as an error
    assert m.Request.rid_of("junk") is None
