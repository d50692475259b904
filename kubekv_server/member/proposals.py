"""Requests that become log entries: encoding, size and quota checks, outcome, header.

A client's request is wrapped in an InternalRequest with a fresh id (and the
client's identity, for the applier's permission check), refused if its entry
would be larger than --max-request-bytes or the state db is over its quota, and
proposed; the caller gets the applier's response with its header filled, or a
timeout after etcd's request timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from kubekv_server import errors
from kubekv_server.auth.caller import call_principal
from kubekv_server.member.loop_bridge import call_on_loop
from kubekv_server.replication.raft_node import RaftNode

# etcd's request timeout: 5 s plus two election timeouts (1 s each by default).
REQUEST_TIMEOUT = 7.0
# etcd's default quota when --quota-backend-bytes is 0 (2 GiB).
DEFAULT_QUOTA_BYTES = 2 << 30


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(errors.TIMEOUT)


class Proposer:
    """Proposes requests through Raft for one member and hands back their responses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, node: RaftNode, member_id: int,
                 max_request_bytes: int, quota_bytes: int, db_size: Callable[[], int],
                 header: Callable[[pb.ResponseHeader], None]) -> None:
        self.loop = loop
        self.node = node
        self.member_id = member_id
        self.max_request_bytes = max_request_bytes
        self.quota_bytes = quota_bytes
        self._size_of_db = db_size
        self.db_size = db_size()  # refreshed once per applied batch, for the quota check
        self.header = header

    def refresh_db_size(self) -> None:
        self.db_size = self._size_of_db()

    def _quota_exceeded(self, cost: int) -> asyncio.Future | None:
        """etcd's quota check. Within quota: None. Over it: raise the NOSPACE alarm and
        return a future that fails with NO_SPACE once the alarm is applied (as etcd does)."""
        if cost == 0 or self.db_size + cost < self.quota_bytes:
            return None
        alarm = pb.AlarmRequest(
            action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.NOSPACE
        )
        out = self.loop.create_future()

        def raised(_f: asyncio.Future) -> None:
            if not out.done():
                out.set_exception(errors.NO_SPACE)

        self.propose_future("alarm", alarm).add_done_callback(raised)
        return out

    def _encode(self, field: str, request) -> tuple[int, bytes]:
        rid = self.node.next_id()
        internal = internal_pb2.InternalRequest(id=rid)
        getattr(internal, field).CopyFrom(request)
        caller = call_principal.get()
        if caller is not None:  # a client's request: the applier checks its permissions
            internal.auth.SetInParent()
            internal.auth.username, internal.auth.revision = caller
        data = internal.SerializeToString()
        if etcd_entry_size(self.member_id, rid, len(data)) > self.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        return rid, data

    def propose_future(self, field: str, request, cost: int = 0,
                       timeout: float = REQUEST_TIMEOUT) -> asyncio.Future:
        """Loop thread: log a request; the future resolves to its response, header filled."""
        if cost:
            refused = self._quota_exceeded(cost)
            if refused is not None:
                return refused
        rid, data = self._encode(field, request)
        inner = self.node.propose(rid, data)
        out = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, out)

        def done(f: asyncio.Future) -> None:
            timer.cancel()
            if out.done():
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            resp = f.result()
            self.header(resp.header)
            out.set_result(resp)

        inner.add_done_callback(done)
        return out

    def propose(self, field: str, request, cost: int = 0, timeout: float = REQUEST_TIMEOUT):
        """Worker threads only: log a request and block until its response (or a timeout)."""
        return call_on_loop(self.loop, self.propose_future, field, request, cost, timeout,
                            timeout=REQUEST_TIMEOUT + 1.0)

    def propose_nowait(self, field: str, request) -> None:
        """Any thread: propose a member's own request without waiting for the outcome."""
        rid = self.node.next_id()
        internal = internal_pb2.InternalRequest(id=rid)
        getattr(internal, field).CopyFrom(request)
        self.node.propose_threadsafe(rid, internal.SerializeToString())


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def etcd_entry_size(member_id: int, request_id: int, entry_len: int) -> int:
    """The size etcd's log entry would have for a kubekv entry of entry_len bytes.

    --max-request-bytes limits etcd's InternalRaftRequest: the request plus a
    header (field 100) holding an id made of the member id's low 16 bits and 48
    bits of time and count. kubekv's InternalRequest carries request_id (field 1)
    instead, so sizes are translated to refuse exactly what etcd refuses.
    """
    etcd_id = ((member_id & 0xFFFF) << 48) | (1 << 47)
    ours = 1 + _varint_len(request_id) if request_id else 0
    return entry_len - ours + 4 + _varint_len(etcd_id)
