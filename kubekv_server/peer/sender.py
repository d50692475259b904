"""Peer transport over gRPC (grpc.aio): batched message streams and chunked snapshots.

Sending side, `GrpcTransport` (the Runner's `Transport`):

    runner -> send(messages) -> per-peer queue -> sender task -> RaftPeer.Stream
                                                   (one long-lived client stream;
                                                    each write = every message queued
                                                    at that moment, split by size)
              MsgSnap        -> snapshot task   -> RaftPeer.SendSnapshot
                                                   (own connection; header chunk,
                                                    data chunks read from the
                                                    SnapshotSource, last chunk with
                                                    size and SHA-256) -> report_snapshot

A broken stream drops what was queued (Raft retries), calls `report_unreachable`,
and reconnects after an exponential, capped, jittered backoff.

Receiving side, `RaftPeerServicer` (add it to a grpc.aio server): refuses batches of
another cluster or for another member, steps messages into the local runner, and
writes snapshot data to `<snapshot_dir>/<random>.partial`, fsyncs it, renames it to
`<term>-<index>.snap`, fsyncs the directory, and only then steps the MsgSnap with
Snapshot.data replaced by a `ReceivedSnapshot` (path, size, sha256, original data).
An interrupted receive deletes its `.partial` file; a crash can leave one behind,
which never has the `.snap` name and is removed when the next servicer starts.

Everything that reaches the peer port is treated as hostile: a batch or a snapshot
that breaks a bound below ends its call with a gRPC status and one rate-limited log
line per peer address, never a traceback. `PeerCallGuard` (an interceptor for the
whole peer server) answers undecodable requests with INVALID_ARGUMENT and, on
`close()`, ends every call in flight with UNAVAILABLE so a stopping member leaves
no handler behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_server.rpc.log_limit import RateLimitedLog
from kubekv_server.tls.peer import peer_address

log = logging.getLogger(__name__)

__all__ = [
    "GrpcTransport",
    "RaftPeerServicer",
    "SnapshotSource",
    "SnapshotReader",
    "PeerStatus",
    "peer_server_options",
    "received_snapshot",
    "snapshot_file_name",
    "remove_partial_snapshots",
    "remove_older_snapshots",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_SNAPSHOT_CHUNK",
    "PeerCallGuard",
    "PEER_MAX_CONCURRENT_RPCS",
    "stop_peer_server",
]

DEFAULT_MAX_BATCH_BYTES = 1 << 20  # a write carries at most this much (one bigger message alone)
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # gRPC's hard limit, both directions; bigger is dropped
DEFAULT_SNAPSHOT_CHUNK = 1 << 20
_BATCH_OVERHEAD = 64  # MessageBatch header and per-message framing, generously
PARTIAL_SUFFIX = ".partial"
SNAPSHOT_SUFFIX = ".snap"

# -- bounds on what a peer (or anything that reaches the peer port) can make a member hold --
# Messages in one MessageBatch: a sender's queue never holds more (max_queue_messages),
# and it is etcd's receive buffer (rafthttp recvBufSize); more is a hostile batch.
MAX_BATCH_MESSAGES = 4096
# Bytes of one received snapshot file: twice etcd's largest suggested backend (8 GiB);
# etcd's own 1 TB (rafthttp snapshotLimitByte) bounds no disk. Members pass 2x a bigger quota.
MAX_SNAPSHOT_BYTES = 16 << 30
# Longest wait for the next snapshot chunk: a sender writes each within write_timeout
# (5 s), so 30 s of silence means a dead or hostile sender holding a slot.
SNAPSHOT_CHUNK_TIMEOUT = 30.0
# Longest whole snapshot receive: etcd's peer http.Server ReadTimeout (5 minutes), which
# covers a snapshot POST body, so a trickling sender cannot hold a slot for ever.
SNAPSHOT_RECEIVE_TIMEOUT = 300.0
# Snapshots received at once: one from the leader, one from a deposed leader's transfer
# still in flight; every further one would only fill the disk.
MAX_SNAPSHOT_RECEIVES = 2
# Calls in flight on the whole peer server (grpc.aio maximum_concurrent_rpcs; more get
# RESOURCE_EXHAUSTED): each member holds ~2 streams, plus forwarded lease calls and hash
# checks; this also bounds the lease executor's queue.
PEER_MAX_CONCURRENT_RPCS = 1024
# HTTP/2 streams per peer connection: Go x/net/http2's default, which etcd's peer
# server (net/http) uses.
PEER_MAX_STREAMS_PER_CONNECTION = 250
# How long a stopping member waits for gRPC's per-call tasks to finish once the server
# stopped (they end within a loop iteration or two; this bounds a wedged one).
SHUTDOWN_DRAIN_TIMEOUT = 2.0
# Longest text of a peer's value echoed into a log line.
MAX_LOGGED_CHARS = 64
# The message types a peer sends on a stream: local ones (MsgHup, MsgBeat, MsgUnreachable,
# MsgSnapStatus, MsgCheckQuorum) never cross the network, and MsgSnap only comes through
# SendSnapshot, whose receiver alone decides where its file is (Snapshot.data names a path).
PEER_MESSAGE_TYPES = frozenset({
    pb.MsgProp, pb.MsgApp, pb.MsgAppResp, pb.MsgVote, pb.MsgVoteResp, pb.MsgHeartbeat,
    pb.MsgHeartbeatResp, pb.MsgTransferLeader, pb.MsgTimeoutNow, pb.MsgReadIndex,
    pb.MsgReadIndexResp, pb.MsgPreVote, pb.MsgPreVoteResp,
})
# What a member that is stopping answers the calls it ends.
STOPPING_MESSAGE = "raft: the member is stopping"

# One line per peer address and violation per minute (a hostile peer can make thousands).
violations = RateLimitedLog(log)


Credentials = grpc.ChannelCredentials | Callable[[str], grpc.ChannelCredentials]


# -- hooks the application implements -------------------------------------------------------


class SnapshotReader(Protocol):
    """A readable binary stream: a file opened with open(path, "rb") is one."""

    def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end."""
        ...

    def close(self) -> None:
        """Release it; called once the transfer ends, however it ends."""
        ...


class SnapshotSource(Protocol):
    """Resolves a snapshot the Raft core hands out (small Snapshot.data) to its state file."""

    def open(self, snapshot: pb.Snapshot) -> SnapshotReader | None:
        """The state the snapshot refers to, or None to send Snapshot.data alone.

        Called in an executor thread; reads happen there too, so it may block.
        """
        ...


class Reporter(Protocol):
    """What the transport tells the Raft runner (kubekv_raft.driver.runner.Runner is one)."""

    def report_snapshot(self, to: int, ok: bool) -> None: ...

    def report_unreachable(self, to: int) -> None: ...


class Stepper(Protocol):
    """What the servicer hands received messages to (kubekv_raft.driver.runner.Runner is one)."""

    def step(self, m: pb.Message) -> None: ...


# -- helpers --------------------------------------------------------------------------------


# What a peer answers a member that was removed from the cluster; the sender stops.
REMOVED_MESSAGE = "the member has been permanently removed from the cluster"


def peer_server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple]:
    """gRPC options for a peer server: message limits matching the transport's, no port sharing.

    SO_REUSEPORT is off so that a second process on the same peer port fails to bind
    instead of silently taking half of the connections.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", PEER_MAX_STREAMS_PER_CONNECTION),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def received_snapshot(snapshot: pb.Snapshot) -> peer_pb.ReceivedSnapshot:
    """Decode the Snapshot.data a receiver stepped in (for a snapshot sent with a file)."""
    return peer_pb.ReceivedSnapshot.FromString(snapshot.data)


def snapshot_file_name(md: pb.SnapshotMetadata) -> str:
    """Name of a complete received snapshot file: `<term>-<index>.snap`, hex, sortable."""
    return f"{md.term:016x}-{md.index:016x}{SNAPSHOT_SUFFIX}"


def remove_partial_snapshots(directory: str) -> int:
    """Delete `.partial` files left by a receive a crash interrupted; how many."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    n += 1
    return n


def remove_older_snapshots(directory: str, index: int) -> int:
    """Delete received snapshot files (`<term>-<index>.snap`) below `index`: once a
    snapshot at `index` is installed Raft refuses every older one, so they only fill
    the disk (stale or hostile transfers leave one each). How many were removed."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            stem = name[: -len(SNAPSHOT_SUFFIX)] if name.endswith(SNAPSHOT_SUFFIX) else ""
            term, _, idx = stem.partition("-")
            if len(term) != 16 or len(idx) != 16:
                continue
            try:
                older = int(idx, 16) < index
                int(term, 16)
            except ValueError:
                continue
            if older:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    n += 1
    return n


def parse_peer_url(url: str) -> tuple[str, bool]:
    """(gRPC target, uses TLS) of a peer URL: http://h:p, https://h:p, unix://path (etcd's
    form: the path may contain a colon, relative to the working directory), unixs://path,
    unix:path, or h:p."""
    if url.startswith(("unix://", "unixs://")):
        scheme, _, path = url.partition("://")
        if not path:
            raise ValueError(f"bad peer URL {url!r}")
        return "unix:" + path, scheme == "unixs"
    if url.startswith("unix:"):
        return url, False
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"bad peer URL {url!r}")
    return parts.netloc, parts.scheme == "https"


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        if e.code() == grpc.StatusCode.UNAUTHENTICATED and e.details() == "tls: bad certificate":
            return "remote error: tls: bad certificate"  # Go's TLS client wording
        return f"{e.code().name}: {e.details()}"
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    return f"{type(e).__name__}: {e}"


@dataclass
class PeerStatus:
    """Counters and the last error of one peer, for logs, metrics and tests."""

    id: int
    urls: list[str]
    active: bool = False  # a stream is open and its last write succeeded
    last_error: str | None = None
    failures: int = 0
    batches_sent: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshot_chunks_sent: int = 0
    snapshot_in_flight: bool = False
    # etcd_network_peer_{sent,received}_bytes_total and peer_sent_failures_total: bytes of
    # messages written to the peer's stream and snapshot chunks; bytes of requests read
    # from it (counted by PeerCallGuard); messages dropped and writes that failed
    bytes_sent: int = 0
    bytes_received: int = 0
    send_failures: int = 0


# -- sending side -----------------------------------------------------------------------------


class GrpcTransport:
    """The Runner's Transport over gRPC. Construct, give it to the Runner, then `attach(runner)`.

    All methods are called from the event loop the transport runs on (the runner's).
    `credentials` is used for https:// peer URLs: a `grpc.ChannelCredentials`, or a
    function of the gRPC target returning one (called in an executor thread each time
    a connection is made, e.g. to trust a peer's auto-TLS certificate).
    """

    def __init__(
        self,
        local_id: int,
        cluster_id: int,
        *,
        snapshot_source: SnapshotSource | None = None,
        credentials: Credentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_queue_messages: int = 4096,
        max_queue_bytes: int = 64 << 20,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        write_timeout: float = 5.0,
        snapshot_chunk_size: int = DEFAULT_SNAPSHOT_CHUNK,
        snapshot_ack_timeout: float = 60.0,
        keepalive_ms: int | None = None,
    ) -> None:
        if local_id == 0:
            raise ValueError("local member id must not be 0")
        if snapshot_chunk_size + _BATCH_OVERHEAD > max_message_bytes:
            raise ValueError("snapshot chunks must fit in max_message_bytes")
        self.local_id = local_id
        self.cluster_id = cluster_id
        self.snapshot_source = snapshot_source
        self.credentials = credentials
        self.max_batch_bytes = max_batch_bytes
        self.max_message_bytes = max_message_bytes
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.write_timeout = write_timeout
        self.snapshot_chunk_size = snapshot_chunk_size
        self.snapshot_ack_timeout = snapshot_ack_timeout
        opts: list[tuple[str, Any]] = [
            # Our own subchannels: a peer's stream and its snapshot get separate TCP
            # connections, and a closed channel really reconnects when re-created.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if keepalive_ms:
            opts += [
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", max(keepalive_ms, 5000)),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        self.channel_options = opts + list(channel_options)
        self._reporter: Reporter | None = None
        self._peers: dict[int, _Peer] = {}
        self._closing: set[asyncio.Task] = set()
        self._closed = False
        # Called when a peer refuses us because this member was removed from the cluster.
        self.on_removed: Callable[[], None] | None = None
        # etcd's heartbeat timeout detector (etcdserver/raft.go, td.Observe): a heartbeat
        # to a peer sent more than `heartbeat_late` seconds after the previous one of the
        # same term counts as a send failure (a leader too busy to tick); 0 = off
        self.heartbeat_late = 0.0
        self.heartbeat_send_failures = 0

    # -- wiring and membership ---------------------------------------------------------------
    def attach(self, reporter: Reporter) -> None:
        """The runner to report snapshot results and unreachable peers to."""
        self._reporter = reporter

    def add_peer(self, peer_id: int, urls: Iterable[str]) -> None:
        """Start talking to a member (no-op if known; use update_peer to change URLs)."""
        if peer_id == self.local_id or peer_id in self._peers:
            return
        urls = list(urls)
        for u in urls:
            parse_peer_url(u)
        if not urls:
            raise ValueError(f"peer {peer_id:x} has no URLs")
        self._peers[peer_id] = _Peer(self, peer_id, urls)

    def update_peer(self, peer_id: int, urls: Iterable[str]) -> None:
        """Change a member's URLs: its connections are closed and re-made to the new ones."""
        self.remove_peer(peer_id)
        self.add_peer(peer_id, urls)

    def remove_peer(self, peer_id: int) -> None:
        """Stop talking to a member: its queue is dropped, its tasks and connections closed."""
        p = self._peers.pop(peer_id, None)
        if p is not None:
            self._close_later(p)

    def peers(self) -> dict[int, list[str]]:
        """Known members and their URLs."""
        return {i: list(p.urls) for i, p in self._peers.items()}

    def status(self, peer_id: int) -> PeerStatus:
        """Counters and last error of a peer."""
        return self._peers[peer_id].status

    async def close(self) -> None:
        """Stop every sender; in-flight snapshots are reported as failed."""
        self._closed = True
        for pid in list(self._peers):
            self.remove_peer(pid)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, p: _Peer) -> None:
        try:
            task = asyncio.get_running_loop().create_task(p.close())
        except RuntimeError:  # no loop: nothing was ever started
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- the Transport protocol ------------------------------------------------------------
    def send(self, messages: list[pb.Message]) -> None:
        """Queue messages; never blocks. Unknown peers' messages are dropped."""
        if self._closed:
            return
        for m in messages:
            p = self._peers.get(m.to)
            if p is None:
                log.debug("no peer %x for %s; dropped", m.to, pb.MessageType.Name(m.type))
                continue
            if m.type == pb.MsgSnap:
                p.send_snapshot(m)
            else:
                if m.type == pb.MsgHeartbeat and self.heartbeat_late:
                    self._observe_heartbeat(p, m.term)
                p.enqueue(m)

    def _observe_heartbeat(self, p: _Peer, term: int) -> None:
        """etcd's timeoutDetector: a late heartbeat is a heartbeat send failure. The
        detector restarts with each term, as etcd resets it when the leader changes."""
        now = time.monotonic()
        if p.heartbeat_term == term and now - p.last_heartbeat > self.heartbeat_late:
            self.heartbeat_send_failures += 1
        p.heartbeat_term = term
        p.last_heartbeat = now

    # -- reporting ---------------------------------------------------------------------------
    def _report_unreachable(self, peer_id: int) -> None:
        if self._reporter is not None and peer_id in self._peers:
            self._reporter.report_unreachable(peer_id)

    def _report_snapshot(self, peer_id: int, ok: bool) -> None:
        if self._reporter is not None:
            self._reporter.report_snapshot(peer_id, ok)

    async def _channel(self, url: str) -> grpc.aio.Channel:
        target, tls = parse_peer_url(url)
        if not tls:
            return grpc.aio.insecure_channel(target, options=self.channel_options)
        creds = self.credentials
        if creds is None:
            raise ValueError(f"peer URL {url} is https but no channel credentials were given")
        if callable(creds) and not isinstance(creds, grpc.ChannelCredentials):
            creds = await asyncio.get_running_loop().run_in_executor(None, creds, target)
        return grpc.aio.secure_channel(target, creds, options=self.channel_options)


class _Peer:
    """One remote member: its queue, stream sender task and snapshot task."""

    def __init__(self, t: GrpcTransport, peer_id: int, urls: list[str]) -> None:
        self.t = t
        self.id = peer_id
        self.urls = urls
        self.url_index = 0
        self.queue: list[tuple[pb.Message, int]] = []
        self.queued_bytes = 0
        self.overflow_reported = False
        self.unsent = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.snap_task: asyncio.Task | None = None
        self.channel: grpc.aio.Channel | None = None
        self.status = PeerStatus(id=peer_id, urls=list(urls))
        self.closed = False
        self.heartbeat_term = 0  # the term and time of the last heartbeat queued
        self.last_heartbeat = 0.0

    # -- queueing ------------------------------------------------------------------------------
    def enqueue(self, m: pb.Message) -> None:
        if self.closed:
            return
        size = m.ByteSize()
        if (
            len(self.queue) >= self.t.max_queue_messages
            or self.queued_bytes + size > self.t.max_queue_bytes
        ):
            self.status.messages_dropped += 1
            self.status.send_failures += 1  # etcd's peer.send: the send buffer is full
            if not self.overflow_reported:  # once per backlog, not once per message
                self.overflow_reported = True
                log.warning("raft: queue to peer %x full; dropping messages", self.id)
                self.t._report_unreachable(self.id)
            return
        self.queue.append((m, size))
        self.queued_bytes += size
        self.wake.set()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"raft-peer-{self.t.local_id:x}-{self.id:x}"
            )

    def _take(self) -> list[tuple[pb.Message, int]]:
        q, self.queue = self.queue, []
        self.queued_bytes = 0
        self.overflow_reported = False
        return q

    def _batches(
        self, msgs: list[tuple[pb.Message, int]]
    ) -> Iterator[tuple[peer_pb.MessageBatch, int]]:
        """The queued messages in batches, each with its messages' encoded size."""
        t = self.t
        batch, size = None, 0
        for m, n in msgs:
            if n + _BATCH_OVERHEAD > t.max_message_bytes:
                self.status.messages_dropped += 1
                self.status.send_failures += 1
                self.unsent -= 1
                log.error(
                    "raft: %s to %x is %d bytes, over the %d-byte limit; dropped",
                    pb.MessageType.Name(m.type), self.id, n, t.max_message_bytes,
                )  # fmt: skip
                t._report_unreachable(self.id)
                continue
            if batch is not None and size + n > t.max_batch_bytes:
                yield batch, size
                batch = None
            if batch is None:
                batch = peer_pb.MessageBatch(cluster_id=t.cluster_id, from_=t.local_id, to=self.id)
                size = 0
            batch.messages.append(m)
            size += n + 8
        if batch is not None:
            yield batch, size

    # -- the stream ---------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.t.backoff_initial
        while not self.closed:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            started = loop.time()
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every way a stream can break: report, back off, retry
                self._failed(e)
            if self.closed:
                break
            if loop.time() - started > 2 * self.t.backoff_max:
                backoff = self.t.backoff_initial  # it was healthy for a while
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.t.backoff_max)

    async def _stream(self) -> None:
        if self.channel is None:
            self.channel = await self.t._channel(self.urls[self.url_index])
        call = peer_grpc.RaftPeerStub(self.channel).Stream()
        call.add_done_callback(lambda _c: self.wake.set())
        try:
            while True:
                if call.done():
                    await call  # raises the peer's status
                    raise ConnectionError("peer ended the stream")
                msgs = self._take()
                if not msgs:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                self.unsent = len(msgs)
                loop = asyncio.get_running_loop()
                for batch, size in self._batches(msgs):
                    # a write stuck past write_timeout cancels the call (no task per write,
                    # as asyncio.wait_for would create: this is the leader's hottest path)
                    fired: list[bool] = []
                    watchdog = loop.call_later(
                        self.t.write_timeout, _expire_write, fired, call
                    )
                    try:
                        await call.write(batch)
                    except asyncio.CancelledError:
                        if fired:  # our watchdog, not our task, was cancelled
                            raise ConnectionError("peer write timed out") from None
                        raise
                    finally:
                        watchdog.cancel()
                    self.status.batches_sent += 1
                    self.status.bytes_sent += size
                    self.status.messages_sent += len(batch.messages)
                    self.unsent -= len(batch.messages)
                self.unsent = 0
                if not self.status.active:
                    self.status.active = True
                    if self.status.failures:
                        log.info("raft: stream to peer %x re-established", self.id)
        finally:
            self.status.active = False
            call.cancel()

    def _failed(self, e: BaseException) -> None:
        st = self.status
        st.failures += 1
        st.send_failures += 1  # etcd's streamWriter: a write that failed
        st.messages_dropped += len(self.queue) + self.unsent  # unsent: taken, maybe not sent
        self.unsent = 0
        self._take()
        err = _describe(e)
        (log.warning if st.last_error != err else log.debug)(
            "raft: stream from %x to peer %x (%s) failed: %s",
            self.t.local_id, self.id, self.urls[self.url_index], err,
        )  # fmt: skip
        st.last_error = err
        if REMOVED_MESSAGE in err and self.t.on_removed is not None:
            self.t.on_removed()  # a peer says we were removed from the cluster (etcd's 410)
        self.url_index = (self.url_index + 1) % len(self.urls)
        self._drop_channel()
        self.t._report_unreachable(self.id)

    def _drop_channel(self) -> None:
        ch, self.channel = self.channel, None
        if ch is not None:
            task = asyncio.get_running_loop().create_task(ch.close())
            self.t._closing.add(task)
            task.add_done_callback(self.t._closing.discard)

    # -- snapshots ----------------------------------------------------------------------------
    def send_snapshot(self, m: pb.Message) -> None:
        if self.closed:
            self.t._report_snapshot(self.id, False)
            return
        if self.snap_task is not None and not self.snap_task.done():
            # The leader waits for the report of the transfer in flight before it sends
            # another; a duplicate can only come from a new term and finds the same state.
            log.info("raft: snapshot to %x already in flight; dropped another", self.id)
            return
        self.snap_task = asyncio.get_running_loop().create_task(
            self._send_snapshot(m), name=f"raft-snap-{self.t.local_id:x}-{self.id:x}"
        )

    async def _send_snapshot(self, m: pb.Message) -> None:
        t = self.t
        loop = asyncio.get_running_loop()
        md = m.snapshot.metadata
        st = self.status
        st.snapshot_in_flight = True
        ok = False
        reader: SnapshotReader | None = None
        channel: grpc.aio.Channel | None = None
        started = loop.time()
        try:
            if t.snapshot_source is not None:
                reader = await loop.run_in_executor(None, t.snapshot_source.open, m.snapshot)
            # A connection of its own: heartbeats on the stream never wait behind this.
            channel = await t._channel(self.urls[self.url_index])
            call = peer_grpc.RaftPeerStub(channel).SendSnapshot()
            first = peer_pb.SnapshotChunk(
                cluster_id=t.cluster_id, message=m, has_file=reader is not None
            )
            await asyncio.wait_for(call.write(first), t.write_timeout)
            digest = hashlib.sha256()
            size = 0
            if reader is not None:
                r = reader

                def next_chunk() -> bytes:
                    data = r.read(t.snapshot_chunk_size)
                    digest.update(data)
                    return data

                while data := await loop.run_in_executor(None, next_chunk):
                    size += len(data)
                    # write() waits for gRPC's flow control: at most a window in flight.
                    await asyncio.wait_for(
                        call.write(peer_pb.SnapshotChunk(data=data)), t.write_timeout
                    )
                    st.snapshot_chunks_sent += 1
                    st.bytes_sent += len(data)
            last = peer_pb.SnapshotChunk(last=True, size=size, sha256=digest.digest())
            await asyncio.wait_for(call.write(last), t.write_timeout)
            await call.done_writing()
            ack = await asyncio.wait_for(call, t.snapshot_ack_timeout)
            if ack.size != size:
                raise ConnectionError(f"peer acknowledged {ack.size} of {size} bytes")
            ok = True
            st.snapshots_sent += 1
            log.info(
                "raft: sent snapshot [index %d, term %d] to %x: %d bytes in %.2fs",
                md.index, md.term, self.id, size, loop.time() - started,
            )  # fmt: skip
        except asyncio.CancelledError:
            st.snapshots_failed += 1
            raise
        except Exception as e:
            st.snapshots_failed += 1
            st.send_failures += 1  # etcd's snapshotSender
            st.last_error = _describe(e)
            log.warning(
                "raft: snapshot [index %d] to %x failed: %s", md.index, self.id, st.last_error
            )
            t._report_unreachable(self.id)
        finally:
            st.snapshot_in_flight = False
            if reader is not None:
                with contextlib.suppress(Exception):
                    reader.close()
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(channel.close())
            t._report_snapshot(self.id, ok)

    async def close(self) -> None:
        self.closed = True
        self._take()
        tasks = [x for x in (self.task, self.snap_task) if x is not None and not x.done()]
        for x in tasks:
            x.cancel()
        for x in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await x
        ch, self.channel = self.channel, None
        if ch is not None:
            await ch.close()


# -- receiving side ---------------------------------------------------------------------------


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
            os.makedirs(snapshot_dir, exist_ok=True)
            if n := remove_partial_snapshots(snapshot_dir):
                log.info("raft: removed %d interrupted snapshot receive(s) in %s", n, snapshot_dir)

    def attach(self, runner: Stepper, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The runner to step received messages into."""
        self._runner = runner
        self._loop = loop

    def _deliver(self, m: pb.Message) -> None:
        r = self._runner
        if r is None:
            return
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._loop.call_soon_threadsafe(r.step, m)
        elif r.step(m) is False:  # the runner's inbox is full (etcd drops too)
            self.dropped += 1

    async def _refuse(self, context: Any, code: grpc.StatusCode, event: str, details: str,
                      fmt: str = "", *args: Any) -> None:
        """End the call with `code`; one warning per peer address and event per interval."""
        self.refused += 1
        violations.warning(peer_address(context), event, fmt, *args)
        await context.abort(code, details)

    async def _check(self, cluster_id: int, frm: int, to: int, context: Any) -> None:
        if self.is_removed is not None and self.is_removed(frm):
            self.refused += 1
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"raft: {REMOVED_MESSAGE} ({frm:x})")
        if cluster_id != self.cluster_id:
            await self._refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, "peer_cluster_mismatch",
                f"raft: cluster ID mismatch: local {self.cluster_id:x}, remote {cluster_id:x}",
                "member=%x cluster=%x local_cluster=%x", frm, cluster_id, self.cluster_id,
            )  # fmt: skip
        if to != self.local_id:
            await self._refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, "peer_wrong_member",
                f"raft: message for member {to:x} reached member {self.local_id:x}",
                "member=%x to=%x", frm, to,
            )  # fmt: skip

    async def _check_batch(self, batch: peer_pb.MessageBatch, context: Any) -> None:
        """A batch as our sender makes it: bounded, every message from and to the batch's
        members, of a type that travels on a stream."""
        n = len(batch.messages)
        if n > MAX_BATCH_MESSAGES:
            await self._refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "peer_batch_too_large",
                f"raft: batch of {n} messages, over {MAX_BATCH_MESSAGES}",
                "member=%x messages=%d limit=%d", batch.from_, n, MAX_BATCH_MESSAGES,
            )  # fmt: skip
        for m in batch.messages:
            if m.type not in PEER_MESSAGE_TYPES:
                await self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "peer_bad_message_type",
                    f"raft: message type {m.type} is not sent on a stream",
                    "member=%x type=%d", batch.from_, m.type,
                )  # fmt: skip
            if m.from_ != batch.from_ or m.to != batch.to:
                await self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "peer_message_mismatch",
                    "raft: a message's members differ from its batch's",
                    "member=%x message_from=%x message_to=%x", batch.from_, m.from_, m.to,
                )  # fmt: skip

    async def Stream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Step every message of every batch; refuse a batch of another cluster or member,
        or one our sender would never make."""
        async for batch in request_iterator:
            await self._check(batch.cluster_id, batch.from_, batch.to, context)
            await self._check_batch(batch, context)
            for m in batch.messages:
                self._deliver(m)
        return peer_pb.StreamAck()

    async def SendSnapshot(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Receive a snapshot file durably, then step its MsgSnap; see the module docstring."""
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
        fd, tmp = tempfile.mkstemp(dir=self.snapshot_dir, suffix=PARTIAL_SUFFIX)
        f = os.fdopen(fd, "wb")
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
                    await loop.run_in_executor(None, _write_and_hash, f, digest, chunk.data)
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
            await loop.run_in_executor(None, _make_durable, f, tmp, final)
            complete = True
        finally:
            if not complete:
                f.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
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


# -- the guard around every call on the peer port -----------------------------------------------


class _Malformed:
    """What a request that does not decode becomes (the guard answers INVALID_ARGUMENT)."""


_MALFORMED = _Malformed()


class MalformedRequestError(Exception):
    """A streamed request did not decode (raised into the handler reading it)."""


class PeerCallGuard(grpc.aio.ServerInterceptor):
    """The peer server's outermost interceptor: malformed requests end in
    INVALID_ARGUMENT (with one rate-limited line, not grpc's ERROR traceback), and
    `close()` ends every call in flight with UNAVAILABLE, refusing new ones, so a
    member stops without a handler left for the event loop's teardown to cancel.

    `on_received(sender, nbytes)`, if set, is told the encoded size of every request of
    a client-streaming call (Raft message batches, snapshot chunks) with the member it
    came from (a batch's `from_`, a snapshot's first chunk's message), for etcd's
    etcd_network_peer_received_bytes_total: the size comes free from the bytes decoded."""

    def __init__(self) -> None:
        self._active: set[asyncio.Task] = set()
        self._closing = False
        self.on_received: Callable[[int, int], None] | None = None

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._active)

    async def close(self, timeout: float = SHUTDOWN_DRAIN_TIMEOUT) -> None:
        """End every call in flight (UNAVAILABLE) and wait, at most `timeout`, for them."""
        self._closing = True
        tasks = set(self._active)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # cancelled again until they end: asyncio.wait_for (3.11) can swallow a
        # cancellation that lands as its inner wait completes, and a call that missed it
        # would run on until its own timeout
        while tasks and loop.time() < deadline:
            for t in tasks:
                t.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=min(0.1, deadline - loop.time()))

    async def _run(self, method: str, context: Any, call: Callable[[], Any]) -> Any:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        task = asyncio.current_task()
        self._active.add(task)  # type: ignore[arg-type]
        try:
            return await call()
        except MalformedRequestError:
            violations.warning(peer_address(context), "peer_malformed_request", "method=%s", method)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the peer went away
            try:
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
            except grpc.aio.AbortError:
                raise  # how abort ends a call
            except Exception:  # noqa: BLE001 - the call had ended, or was ending, already
                raise asyncio.CancelledError from None  # grpc takes this quietly
        finally:
            self._active.discard(task)  # type: ignore[arg-type]

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method[:MAX_LOGGED_CHARS]
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            if decode is None:
                return data
            try:
                return decode(data)
            except Exception:  # noqa: BLE001 - any decoding failure is the peer's
                return _MALFORMED

        def sized_decode(data: bytes) -> tuple[Any, int]:
            return safe_decode(data), len(data)

        async def checked(requests):
            sender = 0
            async for r, n in requests:
                if r is _MALFORMED:
                    raise MalformedRequestError(method)
                if not sender:
                    sender = _sender(r)
                if sender and self.on_received is not None:
                    self.on_received(sender, n)
                yield r

        def unary_arg(request: Any) -> Any:
            if request is _MALFORMED:
                raise MalformedRequestError(method)
            return request

        run = self._run
        if handler.unary_unary or handler.stream_unary:
            if handler.unary_unary:
                inner, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

                async def one(request, context):
                    return await run(method, context,
                                     lambda: inner(unary_arg(request), context))
            else:
                inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler

                async def one(request, context):
                    return await run(method, context, lambda: inner(checked(request), context))

                return factory(one, sized_decode, handler.response_serializer)

            return factory(one, safe_decode, handler.response_serializer)
        # response streams: none on the peer port today; passed through with safe decoding
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                handler.unary_stream, safe_decode, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream, safe_decode, handler.response_serializer)


def _sender(request: Any) -> int:
    """The member a streamed peer request comes from (0: not known from this one)."""
    frm = getattr(request, "from_", 0)
    if frm:
        return frm
    message = getattr(request, "message", None)
    return message.from_ if message is not None else 0


def grpc_call_tasks() -> list[asyncio.Task]:
    """grpc.aio's own per-call tasks still running on this loop (it names them "rpc_task"
    and "HandleExceptions[<method>]"): awaited after a server stops, because the loop's
    teardown would cancel them and grpc logs each at ERROR with a traceback."""
    return [
        t for t in asyncio.all_tasks()
        if not t.done() and (t.get_name() == "rpc_task"
                             or t.get_name().startswith("HandleExceptions["))
    ]


async def stop_peer_server(server: grpc.aio.Server, guard: PeerCallGuard | None,
                           grace: float = 0.5) -> None:
    """Stop a peer server cleanly: end calls in flight (UNAVAILABLE), stop accepting,
    then wait for gRPC's per-call tasks to finish (bounded by SHUTDOWN_DRAIN_TIMEOUT)."""
    if guard is not None:
        await guard.close()
    await server.stop(grace)
    tasks = grpc_call_tasks()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_DRAIN_TIMEOUT)


def _expire_write(fired: list[bool], call) -> None:
    """A peer write outlived write_timeout: cancel the call (its writer sees why)."""
    fired.append(True)
    call.cancel()


async def _next_or_none(it):  # type: ignore[no-untyped-def]
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


def _write_and_hash(f, digest, data: bytes) -> None:  # type: ignore[no-untyped-def]
    f.write(data)
    digest.update(data)


def _make_durable(f, tmp: str, final: str) -> None:  # type: ignore[no-untyped-def]
    """fsync the data, close, rename into place, fsync the directory (the rename)."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, final)
    dfd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
