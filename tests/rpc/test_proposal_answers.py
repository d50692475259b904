"""Calls answered by a Raft proposal (replication/raft_node.py `Proposal`): the answer
is written in the pass that resolves the proposal, a batch's answers to one connection
in one socket write; a proposal failed outside a batch (timeout) answers at once."""

from __future__ import annotations

import h2.events
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.replication.raft_node import Proposal, resolve_proposals
from kubekv_server.rpc.calls import Method, inline
from kubekv_server.rpc.server import RpcServer

from .test_connection import client, connect, grpc_message, run

PUT = b"/etcdserverpb.KV/Put"


@pytest.fixture
def proposals(loop):
    """request key -> the Proposal its handler returned."""
    return {}


@pytest.fixture
def server(loop, proposals):
    @inline
    def put(req, ctx):
        fut = proposals[req.key] = Proposal(loop=loop)
        return fut

    srv = RpcServer(loop, max_receive_bytes=2 << 20)
    srv.methods[PUT] = Method.of(PUT, pb.PutRequest, False, False, put)
    yield srv
    srv.executor.shutdown(wait=False)


class CountingWrites:
    """Wraps a FakeTransport's write to count the socket writes."""

    def __init__(self, transport) -> None:
        self.count = 0
        self._write = transport.write
        transport.write = self

    def __call__(self, data) -> None:
        self.count += 1
        self._write(data)


def start_puts(loop, conn, transport, keys: list[bytes]):
    c = client()
    for key in keys:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", PUT),
                             (":authority", "x"), ("content-type", "application/grpc")])
        c.send_data(sid, grpc_message(pb.PutRequest(key=key)), end_stream=True)
    conn.data_received(c.data_to_send())
    run(loop)
    c.receive_data(transport.take())  # the server's SETTINGS and acks
    return c


def answers(c, data: bytes) -> list[tuple[int, str]]:
    """(revision, grpc-status) of each answered stream, in stream order."""
    events = c.receive_data(data)
    revs = {e.stream_id: pb.PutResponse.FromString(e.data[5:]).header.revision
            for e in events if isinstance(e, h2.events.DataReceived) and e.data}
    out = []
    for e in events:
        if isinstance(e, h2.events.TrailersReceived | h2.events.ResponseReceived):
            status = dict(e.headers).get(b"grpc-status")
            if status is not None:
                out.append((revs.get(e.stream_id, 0), status.decode()))
    return out


def test_a_batch_is_answered_in_its_pass_one_write_per_connection(loop, server, proposals):
    conn1, t1 = connect(server)
    conn2, t2 = connect(server)
    c1 = start_puts(loop, conn1, t1, [b"a", b"b"])
    c2 = start_puts(loop, conn2, t2, [b"c"])
    writes1, writes2 = CountingWrites(t1), CountingWrites(t2)
    futures = {i: proposals[k] for i, k in enumerate((b"a", b"b", b"c"))}
    results = []
    for i, rev in enumerate((7, 8, 9)):
        resp = pb.PutResponse()
        resp.header.revision = rev
        results.append((i, resp))
    resolve_proposals(futures, results)
    # written by the resolver itself, before any further loop pass
    assert (writes1.count, writes2.count) == (1, 1)
    assert not futures
    assert answers(c1, t1.take()) == [(7, "0"), (8, "0")]
    assert answers(c2, t2.take()) == [(9, "0")]
    run(loop)  # nothing left scheduled that writes again
    assert t1.take() == b"" and t2.take() == b""
    assert (writes1.count, writes2.count) == (1, 1)


def test_an_error_outcome_answers_with_its_status(loop, server, proposals):
    conn, transport = connect(server)
    c = start_puts(loop, conn, transport, [b"a"])
    resolve_proposals({1: proposals[b"a"]}, [(1, errors.NO_SPACE)])
    assert answers(c, transport.take()) == [(0, str(errors.NO_SPACE.code.value[0]))]


def test_a_timeout_outside_a_batch_answers_at_once(loop, server, proposals):
    conn, transport = connect(server)
    c = start_puts(loop, conn, transport, [b"a"])
    proposals[b"a"].set_exception(errors.TIMEOUT)
    assert answers(c, transport.take()) == [(0, str(errors.TIMEOUT.code.value[0]))]


def test_a_cancelled_call_is_not_answered(loop, server, proposals):
    conn, transport = connect(server)
    start_puts(loop, conn, transport, [b"a"])
    conn.connection_lost(None)  # the client went away: its call's proposal is cancelled
    fut = proposals[b"a"]
    assert fut.cancelled()
    resp = pb.PutResponse()
    resolve_proposals({1: fut}, [(1, resp)])  # a done future is skipped, nothing raised


def test_a_proposal_resolved_before_it_is_given_an_answer_answers_at_once(loop):
    fut = Proposal(loop=loop)
    fut.set_result(3)
    seen, written = [], []

    def answer(f):
        seen.append(f.result())
        return lambda: written.append(True)

    fut.answer_with(answer)
    assert seen == [3] and written == [True]  # the answer and its write, both at once
