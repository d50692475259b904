"""Requests that become log entries: encoding, size and quota checks, outcome, header.

A client's request is wrapped in an InternalRequest with a fresh id (and the
client's identity, for the applier's permission check), refused if its entry
would be larger than --max-request-bytes or the state db is over its quota, and
proposed; the caller gets the applier's response with its header filled, or a
timeout after etcd's request timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from kubekv_server import errors
from kubekv_server.apply.applier import BatchResult
from kubekv_server.auth.caller import call_principal
from kubekv_server.member.loop_bridge import call_on_loop
from kubekv_server.replication.raft_node import RaftNode

# etcd's request timeout: 5 s plus two election timeouts (1 s each by default).
REQUEST_TIMEOUT = 7.0
# etcd's default quota when --quota-backend-bytes is 0 (2 GiB).
DEFAULT_QUOTA_BYTES = 2 << 30


def _varint_loop(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The varint of the last `n >> 7` seen: request ids (`RaftNode.next_id`) count up, so
# consecutive ids share all but their lowest 7 bits, and an id's 9-byte varint is one
# computed byte and this tail.
_last_high: tuple[int, bytes] = (0, b"")


def _varint(n: int) -> bytes:
    """Protobuf's varint of a non-negative int."""
    global _last_high
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    high = n >> 7
    known, tail = _last_high
    if known != high:
        tail = _varint_loop(high)
        _last_high = (high, tail)
    return bytes(((n & 0x7F) | 0x80,)) + tail


# The tag of each InternalRequest.request field (length-delimited), by field name.
_TAGS = {f.name: _varint((f.number << 3) | 2)
         for f in internal_pb2.InternalRequest.DESCRIPTOR.oneofs_by_name["request"].fields}
_ID_TAG = b"\x08"  # InternalRequest.id, field 1, varint
_AUTH_TAG = _varint((internal_pb2.InternalRequest.DESCRIPTOR.fields_by_name["auth"].number << 3)
                    | 2)
_EMPTY_AUTH = _AUTH_TAG + b"\x00"


def encode_internal(request_id: int, field: str, body: bytes,
                    caller: tuple[str, int] | None) -> bytes:
    """InternalRequest(id=request_id, <field>=request, auth=caller) serialized, from the
    request's own serialization: byte for byte what protobuf makes, without copying the
    request (its value) into an InternalRequest message first."""
    n = len(body)
    head = _TAGS[field] + (bytes(((n & 0x7F) | 0x80, n >> 7)) if 0x80 <= n < 0x4000
                           else _varint(n))
    if request_id:
        head = _ID_TAG + _varint(request_id) + head
    if caller is None:
        return head + body
    # AuthHeader: username (1), revision (2); proto3 omits defaults
    username, revision = caller
    if not username and not revision:  # the empty caller (auth off): an empty AuthHeader
        return b"".join((head, body, _EMPTY_AUTH))
    auth = b""
    if username:
        name = username.encode()
        auth = b"\x0a" + _varint(len(name)) + name
    if revision:
        auth += b"\x10" + _varint(revision)
    return b"".join((head, body, _AUTH_TAG, _varint(len(auth)), auth))


# Entries a deadline queue may hold before the answered ones behind an unanswered
# front are dropped (they keep their responses alive until then).
_QUEUE_SWEEP = 1024


class _Deadlines:
    """etcd's request timeout for many proposals with one timer: proposals of one
    timeout expire in the order they were made, so each timeout keeps a queue
    (answered proposals leave it from the front as new ones join, and from
    anywhere once it is long) and one loop timer is armed at the earliest deadline
    among the queues' fronts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queues: dict[float, deque[tuple[float, asyncio.Future]]] = {}
        self._sweep_at: dict[float, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, fut: asyncio.Future, timeout: float) -> None:
        """Fail `fut` with etcd's TIMEOUT if it is not done `timeout` seconds from now."""
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = deque()
        while q and q[0][1].done():
            q.popleft()
        if len(q) >= self._sweep_at.get(timeout, _QUEUE_SWEEP):
            # a proposal unanswered for long holds up the answered ones behind it
            q = self._queues[timeout] = deque(e for e in q if not e[1].done())
            self._sweep_at[timeout] = max(_QUEUE_SWEEP, 2 * len(q))
        q.append((self.loop.time() + timeout, fut))
        front = q[0][0]
        if self._timer is None or front < self._timer_at:
            self._arm(front)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        earliest = None
        for q in self._queues.values():
            while q:
                deadline, fut = q[0]
                if not fut.done():
                    if deadline > now:
                        break
                    fut.set_exception(errors.TIMEOUT)
                q.popleft()
            if q and (earliest is None or q[0][0] < earliest):
                earliest = q[0][0]
        if earliest is not None:
            self._arm(earliest)


class Proposer:
    """Proposes requests through Raft for one member and hands back their responses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, node: RaftNode, member_id: int,
                 max_request_bytes: int, quota_bytes: int, db_size: Callable[[], int],
                 header: Callable[[pb.ResponseHeader, int | None, int], None]) -> None:
        self.loop = loop
        self.node = node
        self.member_id = member_id
        self.max_request_bytes = max_request_bytes
        self.quota_bytes = quota_bytes
        self._size_of_db = db_size
        # the state db's size for the quota check: read again after an applied batch, but
        # only once a check needs it (a follower whose clients write nothing read it per
        # batch for nothing: an LMDB call per write at 1 in flight)
        self.db_size = db_size()
        self._db_size_stale = False
        self.header = header
        self._deadlines = _Deadlines(loop)
        node.add_listener(self._fill_headers, before_answers=True)

    def _fill_headers(self, batch: BatchResult) -> None:
        """After-apply listener, before the answers: the header of every response of the
        batch, filled before the proposers' futures resolve (one pass per batch, no
        callback per request).
        Outcomes without a header (errors, member lists) are left alone."""
        header = self.header
        term = self.node.term  # one batch, one term: read once
        for _rid, outcome in batch.results:
            h = getattr(outcome, "header", None)
            if h is not None and not isinstance(outcome, BaseException):
                header(h, None, term)

    def refresh_db_size(self) -> None:
        """A batch was applied: the state db may have grown (read at the next check)."""
        self._db_size_stale = True

    def _current_db_size(self) -> int:
        if self._db_size_stale:
            self._db_size_stale = False
            self.db_size = self._size_of_db()
        return self.db_size

    def _quota_exceeded(self, cost: int) -> asyncio.Future | None:
        """etcd's quota check. Within quota: None. Over it: raise the NOSPACE alarm and
        return a future that fails with NO_SPACE once the alarm is applied (as etcd does)."""
        if cost == 0 or self._current_db_size() + cost < self.quota_bytes:
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

    def propose_future(self, field: str, request, cost: int = 0,
                       timeout: float = REQUEST_TIMEOUT) -> asyncio.Future:
        """Loop thread: log a request; the future resolves to its response, header filled
        (by `_fill_headers`), or fails with etcd's TIMEOUT after `timeout` seconds."""
        if cost and self._current_db_size() + cost >= self.quota_bytes:  # as _quota_exceeded
            return self._quota_exceeded(cost)
        node = self.node
        rid = node.next_id()
        # a client's request carries its caller: the applier checks its permissions
        data = encode_internal(rid, field, request.SerializeToString(), call_principal.get())
        limit = self.max_request_bytes
        if len(data) + _MAX_ETCD_GROWTH > limit and \
                etcd_entry_size(self.member_id, rid, len(data)) > limit:
            raise errors.REQUEST_TOO_LARGE
        fut = node.propose(rid, data)
        self._deadlines.add(fut, timeout)
        return fut

    def propose(self, field: str, request, cost: int = 0, timeout: float = REQUEST_TIMEOUT):
        """Worker threads only: log a request and block until its response (or a timeout)."""
        return call_on_loop(self.loop, self.propose_future, field, request, cost, timeout,
                            timeout=REQUEST_TIMEOUT + 1.0)

    def propose_nowait(self, field: str, request) -> None:
        """Any thread: propose a member's own request without waiting for the outcome."""
        rid = self.node.next_id()
        self.node.propose_threadsafe(
            rid, encode_internal(rid, field, request.SerializeToString(), None))


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


# etcd_entry_size(...) - entry_len is at most this: etcd's header field (tag 2 bytes,
# length 1, id tag 1, id varint at most 10) minus our id field (at least nothing).
_MAX_ETCD_GROWTH = 4 + 10


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
