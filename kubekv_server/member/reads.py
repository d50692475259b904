"""Reads a member answers from its own state: the linearizable read barrier, Range and
read-only Txn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.apply.applier import mvcc_error
from kubekv_server.kv.range import EncodedRange, encoded_range, execute_range
from kubekv_server.kv.txn import apply_txn
from kubekv_server.member.loop_bridge import call_on_loop
from kubekv_server.member.proposals import REQUEST_TIMEOUT
from kubekv_server.mvcc import CompactedError, FutureRevError, MVCCStore, ReadTxn
from kubekv_server.replication.raft_node import RaftNode


class Reads:
    """Local reads, and what a linearizable one must wait for first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, node: RaftNode, mvcc: MVCCStore,
                 lease_exists: Callable[[int], bool],
                 header: Callable[[pb.ResponseHeader], None]) -> None:
        self.loop = loop
        self.node = node
        self.mvcc = mvcc
        self.lease_exists = lease_exists
        self.header = header

    def read_barrier(self) -> asyncio.Future | None:
        """Loop thread: what a linearizable read must wait for, or None to read at once.

        A lone voter that leads answers writes only after applying them, so its
        local state already holds every acknowledged write; otherwise the read
        waits for a ReadIndex confirmed by a quorum to be applied here.
        """
        if self.node.is_leader() and self.node.lone_voter():
            return None
        return self.node.read_index()

    def wait_linearizable(self) -> None:
        """Worker threads: block until a local read is linearizable (see read_barrier)."""
        call_on_loop(self.loop, self.read_barrier, timeout=REQUEST_TIMEOUT + 1.0)

    def _in_view(self, answer: Callable[[ReadTxn], Any]) -> Any:
        """answer(txn) in a read view of the current state, the MVCC store's revision
        errors turned into etcd's."""
        try:
            with self.mvcc.read() as txn:
                return answer(txn)
        except (CompactedError, FutureRevError) as exc:
            raise mvcc_error(exc) from None

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        resp = self._in_view(lambda txn: execute_range(txn, r))
        self.header(resp.header)
        return resp

    def range_for_client(self, r: pb.RangeRequest) -> pb.RangeResponse | EncodedRange:
        """``range``, already serialized when no KeyValue needs parsing (what the KV
        service sends; in-process callers take ``range``'s message)."""
        resp = self._in_view(
            lambda txn: encoded_range(txn, r, self.header) or execute_range(txn, r))
        if not isinstance(resp, EncodedRange):
            self.header(resp.header)
        return resp

    def read_only_txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        resp = self._in_view(lambda txn: apply_txn(txn, r, self.lease_exists))
        self.header(resp.header)
        return resp
