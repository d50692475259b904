"""The receiving side of the peer transport: `RaftPeerServicer` (add it to a grpc.aio server).

It refuses batches of another cluster or for another member, and batches our sender
would never make, steps messages into the local runner, and receives snapshot files
durably (`snapshot_files`) before stepping their MsgSnap with Snapshot.data replaced by
a `ReceivedSnapshot` (path, size, sha256, original data).

Everything that reaches the peer port is treated as hostile: a batch or a snapshot
that breaks a bound (`bounds`) ends its call with a gRPC status and one rate-limited
log line per peer address, never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.driver.durable_dirs import make_dirs
from kubekv_server.peer import bounds
from kubekv_server.peer.bounds import (
    MAX_BATCH_MESSAGES,
    MAX_SNAPSHOT_BYTES,
    MAX_SNAPSHOT_RECEIVES,
    PEER_MESSAGE_TYPES,
    SNAPSHOT_CHUNK_TIMEOUT,
    SNAPSHOT_RECEIVE_TIMEOUT,
)
from kubekv_server.peer.snapshot_files import (
    create_partial,
    discard_partial,
    make_durable,
    remove_partial_snapshots,
    snapshot_file_name,
    write_and_hash,
)
from kubekv_server.tls.peer import peer_address

log = logging.getLogger(__name__)

__all__ = ["RaftPeerServicer", "BatchReceiver", "Stepper", "REMOVED_MESSAGE"]

# What a peer answers a member that was removed from the cluster; the sender stops.
REMOVED_MESSAGE = "the member has been permanently removed from the cluster"


class Stepper(Protocol):
    """What the servicer hands received messages to (kubekv_raft.driver.runner.Runner is one)."""

    def step(self, m: pb.Message) -> None: ...


class RaftPeerServicer(peer_grpc.RaftPeerServicer):
    """The RaftPeer service of one member: add it to a grpc.aio server.

    `runner` (anything with `step(m)`, e.g. the Runner) may be given later with
    `attach`. Messages are stepped on `loop` (the runner's) if given and different
    from the server's; by default the server runs on the runner's loop.
    `snapshot_dir` receives snapshot files; without it, snapshots sent with a file
    are refused. `inline_snapshots=False` refuses snapshots sent without a file: an
    application that reads a path from every received Snapshot.data (`received_snapshot`)
    must not let a peer choose that path.
    """

    def __init__(
        self,
        local_id: int,
        cluster_id: int,
        runner: Stepper | None = None,
        *,
        snapshot_dir: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES,
        snapshot_chunk_timeout: float = SNAPSHOT_CHUNK_TIMEOUT,
        snapshot_receive_timeout: float = SNAPSHOT_RECEIVE_TIMEOUT,
        max_snapshot_receives: int = MAX_SNAPSHOT_RECEIVES,
        inline_snapshots: bool = True,
    ) -> None:
        self.local_id = local_id
        self.inline_snapshots = inline_snapshots
        self.cluster_id = cluster_id
        self.snapshot_dir = snapshot_dir
        self.max_snapshot_bytes = max_snapshot_bytes
        self.snapshot_chunk_timeout = snapshot_chunk_timeout
        self.snapshot_receive_timeout = snapshot_receive_timeout
        self.max_snapshot_receives = max_snapshot_receives
        # is_removed(member id): refuse members removed from the cluster, so they learn it
        self.is_removed: Callable[[int], bool] | None = None
        self._runner = runner
        self._loop = loop
        self.refused = 0
        self.dropped = 0  # messages the runner had no room for (Raft retries them)
        self.snapshots_received = 0
        self._receiving = 0  # snapshot receives in flight
        if snapshot_dir is not None:
            make_dirs(snapshot_dir)
            if n := remove_partial_snapshots(snapshot_dir):
                log.info("raft: removed %d interrupted snapshot receive(s) in %s", n, snapshot_dir)

    def attach(self, runner: Stepper, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The runner to step received messages into."""
        self._runner = runner
        self._loop = loop

    def _deliver(self, m: pb.Message) -> None:
        """Step one message (a received snapshot's MsgSnap)."""
        self._deliver_all((m,), asyncio.get_running_loop())

    def _deliver_all(self, messages: Sequence[pb.Message],
                     loop: asyncio.AbstractEventLoop | None) -> None:
        """Step `messages` in order; `loop` is the one this runs on (None only while the
        servicer has no loop of its own), asked once per batch or stream by the caller."""
        r = self._runner
        if r is None:
            return
        step = r.step
        if self._loop is not None and self._loop is not loop:
            for m in messages:
                self._loop.call_soon_threadsafe(step, m)
            return
        for m in messages:
            if step(m) is False:  # the runner's inbox is full (etcd drops too)
                self.dropped += 1

    def _refused(self, context: Any, event: str, fmt: str = "", *args: Any) -> None:
        """Count a refusal; a violation (`event`) is logged once per peer address and
        event per interval (a removed member's messages are no violation: event "")."""
        self.refused += 1
        if event:
            bounds.violations.warning(peer_address(context), event, fmt, *args)

    async def _refuse(self, context: Any, code: grpc.StatusCode, event: str, details: str,
                      fmt: str = "", *args: Any) -> None:
        """End the call with `code` (grpc.aio's abort is a coroutine)."""
        self._refused(context, event, fmt, *args)
        await context.abort(code, details)

    def _peer_refusal(self, cluster_id: int, frm: int, to: int) -> tuple | None:
        """Why a sender is refused, as `_refuse`'s arguments after the context: removed
        from the cluster, another cluster, or meant for another member; None: it is not."""
        if self.is_removed is not None and self.is_removed(frm):
            return grpc.StatusCode.FAILED_PRECONDITION, "", f"raft: {REMOVED_MESSAGE} ({frm:x})"
        if cluster_id != self.cluster_id:
            return (
                grpc.StatusCode.FAILED_PRECONDITION, "peer_cluster_mismatch",
                f"raft: cluster ID mismatch: local {self.cluster_id:x}, remote {cluster_id:x}",
                "member=%x cluster=%x local_cluster=%x", frm, cluster_id, self.cluster_id,
            )  # fmt: skip
        if to != self.local_id:
            return (
                grpc.StatusCode.FAILED_PRECONDITION, "peer_wrong_member",
                f"raft: message for member {to:x} reached member {self.local_id:x}",
                "member=%x to=%x", frm, to,
            )  # fmt: skip
        return None

    async def _check(self, cluster_id: int, frm: int, to: int, context: Any) -> None:
        refusal = self._peer_refusal(cluster_id, frm, to)
        if refusal is not None:
            await self._refuse(context, *refusal)

    def _batch_refusal(self, batch: peer_pb.MessageBatch) -> tuple[tuple | None, list]:
        """(why a batch is refused, as `_peer_refusal`, or None; its messages): refused
        unless it is as our sender makes it: from a member of this cluster to this one,
        bounded, every message from and to the batch's members, of a type that travels
        on a stream. The messages are walked once (each walk of a repeated field makes
        its upb wrappers again) and that list is what the caller delivers."""
        frm, to = batch.from_, batch.to
        cluster_id = batch.cluster_id
        if cluster_id != self.cluster_id or to != self.local_id or (
                self.is_removed is not None and self.is_removed(frm)):
            return self._peer_refusal(cluster_id, frm, to), []
        n = len(batch.messages)
        if n > MAX_BATCH_MESSAGES:
            return (
                grpc.StatusCode.INVALID_ARGUMENT, "peer_batch_too_large",
                f"raft: batch of {n} messages, over {MAX_BATCH_MESSAGES}",
                "member=%x messages=%d limit=%d", frm, n, MAX_BATCH_MESSAGES,
            ), []  # fmt: skip
        messages = list(batch.messages)
        for m in messages:
            if m.type not in PEER_MESSAGE_TYPES:
                return (
                    grpc.StatusCode.INVALID_ARGUMENT, "peer_bad_message_type",
                    f"raft: message type {m.type} is not sent on a stream",
                    "member=%x type=%d", frm, m.type,
                ), []  # fmt: skip
            if m.from_ != frm or m.to != to:
                return (
                    grpc.StatusCode.INVALID_ARGUMENT, "peer_message_mismatch",
                    "raft: a message's members differ from its batch's",
                    "member=%x message_from=%x message_to=%x", frm, m.from_, m.to,
                ), []  # fmt: skip
        return None, messages

    async def Stream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Step every message of every batch; refuse a batch of another cluster or member,
        or one our sender would never make. (kubekv's peer server uses `StreamSink`.)"""
        loop = asyncio.get_running_loop()
        async for batch in request_iterator:
            refusal, messages = self._batch_refusal(batch)
            if refusal is not None:
                await self._refuse(context, *refusal)
            self._deliver_all(messages, loop)
        return peer_pb.StreamAck()

    def StreamSink(self, context: Any) -> BatchReceiver:  # noqa: N802 - after `Stream`
        """`Stream` for kubekv's peer server (rpc/peer_server.py): each batch is checked
        and its messages stepped in the loop pass that parsed it (an inline request sink,
        rpc/calls.py), not one task wake-up later."""
        return BatchReceiver(self, context)

    async def SendSnapshot(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Receive a snapshot file durably, then step its MsgSnap; see snapshot_files."""
        if self._receiving >= self.max_snapshot_receives:
            await self._refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "peer_snapshot_too_many",
                f"raft: {self._receiving} snapshots already being received",
                "in_flight=%d limit=%d", self._receiving, self.max_snapshot_receives,
            )  # fmt: skip
        self._receiving += 1
        try:
            return await self._receive_snapshot(request_iterator.__aiter__(), context)
        finally:
            self._receiving -= 1

    async def _next_chunk(self, it, context: Any, deadline: float) -> peer_pb.SnapshotChunk | None:
        """The next chunk, or None at the end; a sender silent for snapshot_chunk_timeout
        or past the whole receive's deadline is cut off with DEADLINE_EXCEEDED."""
        loop = asyncio.get_running_loop()
        wait = min(self.snapshot_chunk_timeout, deadline - loop.time())
        try:
            return await asyncio.wait_for(_next_or_none(it), max(wait, 0.0))
        except (TimeoutError, asyncio.TimeoutError):
            whole = loop.time() >= deadline
            limit = self.snapshot_receive_timeout if whole else self.snapshot_chunk_timeout
            await self._refuse(
                context, grpc.StatusCode.DEADLINE_EXCEEDED,
                "peer_snapshot_too_slow" if whole else "peer_snapshot_idle",
                "raft: snapshot receive took too long" if whole
                else "raft: no snapshot chunk in time",
                "limit=%ss", limit,
            )  # fmt: skip
            raise  # not reached: abort raises

    async def _receive_snapshot(self, it, context: Any) -> peer_pb.SnapshotAck:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.snapshot_receive_timeout
        first = await self._next_chunk(it, context, deadline)
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "raft: empty snapshot stream")
        m = first.message
        await self._check(first.cluster_id, m.from_, m.to, context)
        if m.type != pb.MsgSnap:
            await self._refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "peer_snapshot_not_msgsnap",
                "raft: not a MsgSnap", "member=%x type=%d", m.from_, m.type,
            )  # fmt: skip
        if not first.has_file:
            if not self.inline_snapshots:
                await self._refuse(
                    context, grpc.StatusCode.FAILED_PRECONDITION, "peer_snapshot_without_file",
                    "raft: this member takes snapshots only with their file",
                    "member=%x", m.from_,
                )  # fmt: skip
            last = await self._next_chunk(it, context, deadline)
            if last is None or not last.last:
                await context.abort(grpc.StatusCode.ABORTED, "raft: snapshot stream cut short")
            self._deliver(m)
            return peer_pb.SnapshotAck(size=0)
        if self.snapshot_dir is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "raft: this member takes no snapshot files"
            )
        final = os.path.join(self.snapshot_dir, snapshot_file_name(m.snapshot.metadata))
        f, tmp = create_partial(self.snapshot_dir)
        digest = hashlib.sha256()
        size = 0
        complete = False
        try:
            last = None
            while (chunk := await self._next_chunk(it, context, deadline)) is not None:
                if chunk.data:
                    if size + len(chunk.data) > self.max_snapshot_bytes:
                        await self._refuse(
                            context, grpc.StatusCode.RESOURCE_EXHAUSTED, "peer_snapshot_too_big",
                            f"raft: snapshot over {self.max_snapshot_bytes} bytes",
                            "member=%x limit=%d", m.from_, self.max_snapshot_bytes,
                        )  # fmt: skip
                    await loop.run_in_executor(None, write_and_hash, f, digest, chunk.data)
                    size += len(chunk.data)
                if chunk.last:
                    last = chunk
                    break
            if last is None:
                await context.abort(grpc.StatusCode.ABORTED, "raft: snapshot stream cut short")
            if last.size != size or last.sha256 != digest.digest():
                await context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"raft: snapshot data mismatch ({size} bytes received, {last.size} sent)",
                )
            await loop.run_in_executor(None, make_durable, f, tmp, final)
            complete = True
        finally:
            if not complete:
                discard_partial(f, tmp)
        self.snapshots_received += 1
        md = m.snapshot.metadata
        log.info(
            "raft: received snapshot [index %d, term %d] from %x: %d bytes in %s",
            md.index, md.term, m.from_, size, final,
        )  # fmt: skip
        rs = peer_pb.ReceivedSnapshot(
            path=os.path.abspath(final), size=size, sha256=digest.digest(), data=m.snapshot.data
        )
        m.snapshot.data = rs.SerializeToString()
        self._deliver(m)
        return peer_pb.SnapshotAck(size=size)


class BatchReceiver:
    """One RaftPeer.Stream call on kubekv's peer server: the same checks and refusals
    as `RaftPeerServicer.Stream`, run as each batch is parsed."""

    __slots__ = ("servicer", "context", "loop")

    def __init__(self, servicer: RaftPeerServicer, context: Any) -> None:
        self.servicer = servicer
        self.context = context
        # the loop every `message` of the call runs on (its connection's), asked once per
        # stream when the servicer steps on a given loop, not once per message:
        # `get_running_loop` is a getpid() syscall in CPython 3.11
        self.loop: asyncio.AbstractEventLoop | None = None

    def message(self, batch: peer_pb.MessageBatch, size: int) -> None:
        """Step every message of the batch, or end the call with the refusal's status."""
        s = self.servicer
        refusal, messages = s._batch_refusal(batch)
        if refusal is not None:
            code, event, details, *log_args = refusal
            s._refused(self.context, event, *log_args)
            self.context.abort(code, details)  # kubekv's RpcContext: raises AbortError
        loop = self.loop
        if loop is None and s._loop is not None:
            loop = self.loop = asyncio.get_running_loop()
        s._deliver_all(messages, loop)

    def end(self) -> peer_pb.StreamAck:
        return peer_pb.StreamAck()


async def _next_or_none(it):  # type: ignore[no-untyped-def]
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None
