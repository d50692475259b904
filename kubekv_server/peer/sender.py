"""The sending side of the peer transport over gRPC: batched message streams (h2 on
asyncio, `stream_client`) and chunked snapshots (grpc.aio). `GrpcTransport` is the
Runner's `Transport`:

    runner -> send(messages) -> per-peer queue -> sender task -> RaftPeer.Stream
                                                   (one long-lived client stream on a
                                                    connection of its own;
                                                    each write = every message queued
                                                    at that moment, split by size)
              MsgSnap        -> snapshot task   -> RaftPeer.SendSnapshot
                                                   (own connection; header chunk,
                                                    data chunks read from the
                                                    SnapshotSource, last chunk with
                                                    size and SHA-256) -> report_snapshot

A broken stream drops what was queued (Raft retries), calls `report_unreachable`,
and reconnects after an exponential, capped, jittered backoff. The receiving side is
`receiver.RaftPeerServicer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_server.peer import bounds
from kubekv_server.peer.bounds import DEFAULT_MAX_MESSAGE_BYTES, MAX_LOGGED_CHARS
from kubekv_server.peer.peer_url import parse_peer_url
from kubekv_server.peer.receiver import REMOVED_MESSAGE
from kubekv_server.peer.stream_client import (
    PeerCallError,
    PeerProtocolError,
    StreamCall,
    open_stream,
)

log = logging.getLogger(__name__)

__all__ = [
    "GrpcTransport",
    "SnapshotSource",
    "SnapshotReader",
    "Reporter",
    "PeerStatus",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_SNAPSHOT_CHUNK",
]

DEFAULT_MAX_BATCH_BYTES = 1 << 20  # a write carries at most this much (one bigger message alone)
DEFAULT_SNAPSHOT_CHUNK = 1 << 20
_BATCH_OVERHEAD = 64  # MessageBatch header and per-message framing, generously
_MESSAGES_KEY = 0x22  # MessageBatch.messages: field 4, length-delimited
# the key and length of a `messages` entry shorter than 128 bytes (a heartbeat, a response)
_SHORT_ENTRY = [bytes((_MESSAGES_KEY, n)) for n in range(0x80)]


Credentials = grpc.ChannelCredentials | Callable[[str], grpc.ChannelCredentials]
SslContext = ssl.SSLContext | Callable[[str], ssl.SSLContext]
STREAM_PATH = "/raftpb.RaftPeer/Stream"


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


def _describe(e: BaseException) -> str:
    """How a failed send reads in logs and in PeerStatus.last_error."""
    if isinstance(e, (grpc.aio.AioRpcError, PeerCallError)):
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


class GrpcTransport:
    """The Runner's Transport over gRPC. Construct, give it to the Runner, then `attach(runner)`.

    All methods are called from the event loop the transport runs on (the runner's).
    For https:// peer URLs, `ssl_context` (an `ssl.SSLContext`, or a function of the
    target returning one, called in an executor thread at each connect, e.g. to trust a
    peer's auto-TLS certificate) carries the message streams (`stream_client`, h2 on
    asyncio), and `credentials` (a `grpc.ChannelCredentials`, or such a function) the
    grpc.aio channels of snapshots and other calls.
    """

    def __init__(
        self,
        local_id: int,
        cluster_id: int,
        *,
        snapshot_source: SnapshotSource | None = None,
        credentials: Credentials | None = None,
        ssl_context: SslContext | None = None,
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
        self.ssl_context = ssl_context
        self.keepalive = keepalive_ms / 1000.0 if keepalive_ms else 0.0
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
        """Queue messages and write each peer's at once if its stream can take them
        without waiting (else its sender task writes them); never blocks. Unknown peers'
        messages are dropped."""
        if self._closed:
            return
        touched: list[_Peer] = []
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
                if p.enqueue(m) and p not in touched:
                    touched.append(p)
        for p in touched:
            p.flush()

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

    async def _open_stream(self, url: str) -> StreamCall:
        """A RaftPeer.Stream call on a connection of its own (h2 on asyncio)."""
        target, tls = parse_peer_url(url)
        ctx = None
        if tls:
            ctx = self.ssl_context
            if ctx is None:
                raise ValueError(f"peer URL {url} is https but no ssl_context was given")
            if not isinstance(ctx, ssl.SSLContext):
                ctx = await asyncio.get_running_loop().run_in_executor(None, ctx, target)
        return await open_stream(target, STREAM_PATH, ctx, keepalive=self.keepalive)


class _Peer:
    """One remote member: its queue, stream sender task and snapshot task."""

    def __init__(self, t: GrpcTransport, peer_id: int, urls: list[str]) -> None:
        self.t = t
        self.id = peer_id
        self.urls = urls
        self.url_index = 0
        # each message with its encoding, made once when it is queued: its size for the
        # queue's bounds and its bytes in the batch (`_batches`)
        self.queue: list[tuple[pb.Message, bytes]] = []
        self.queued_bytes = 0
        # a MessageBatch's fields before its messages, the same for every batch to this peer
        self.batch_header = peer_pb.MessageBatch(
            cluster_id=t.cluster_id, from_=t.local_id, to=peer_id).SerializeToString()
        self.overflow_reported = False
        self.unsent = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.call: StreamCall | None = None  # the open stream while its sender task idles
        self.snap_task: asyncio.Task | None = None
        self.status = PeerStatus(id=peer_id, urls=list(urls))
        self.closed = False
        self.heartbeat_term = 0  # the term and time of the last heartbeat queued
        self.last_heartbeat = 0.0

    # -- queueing ------------------------------------------------------------------------------
    def enqueue(self, m: pb.Message) -> bool:
        """Queue a message for `flush`; False if it was dropped (closed, queue full)."""
        if self.closed:
            return False
        data = m.SerializeToString()
        size = len(data)
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
            return False
        self.queue.append((m, data))
        self.queued_bytes += size
        return True

    def flush(self) -> None:
        """Write what is queued now, on the caller's turn of the loop, if the stream is
        open, its sender task idle and the stream takes it without waiting: a message
        leaves in the Ready that made it, not a loop iteration later (etcd's streamWriter
        also writes as soon as a message arrives). Otherwise the sender task writes it."""
        if not self.queue or self.closed:
            return
        call = self.call
        if call is not None:
            try:
                if self._write_now(call):
                    return
            except Exception as e:  # noqa: BLE001 - never into the Runner: the task reports it
                log.debug("raft: direct write to peer %x failed: %s", self.id, _describe(e))
                call.cancel()  # the task finds the call ended and counts what was unsent
        self.wake.set()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"raft-peer-{self.t.local_id:x}-{self.id:x}"
            )

    def _write_now(self, call: StreamCall) -> bool:
        """The queue as batches written without waiting; False if a batch would have to
        wait (it and the rest go back to the front of the queue for the sender task)."""
        t = self.t
        count = len(self.queue)
        size = self.queued_bytes + 8 * count
        if size <= t.max_batch_bytes and self.queued_bytes + _BATCH_OVERHEAD <= t.max_message_bytes:
            # the queue is one batch, none of its messages over the limit (what `_batches`
            # makes of it): written or left queued as a whole
            if not call.write_now(_batch_bytes(self.batch_header, self.queue)):
                return False
            self._take()
            self.unsent = count  # `_wrote` counts them sent
            self._wrote(count, size)
            return True
        msgs = self._take()
        self.unsent = len(msgs)
        batches = self._batches(msgs)
        for k, (payload, items, size) in enumerate(batches):
            if not call.write_now(payload):
                rest = [x for b in batches[k:] for x in b[1]]
                self.queue[:0] = rest
                self.queued_bytes += sum(len(data) for _, data in rest)
                self.unsent = 0
                return False
            self._wrote(len(items), size)
        self.unsent = 0
        return True

    def _wrote(self, count: int, size: int) -> None:
        """A batch of `count` messages (`size` bytes counted) was written."""
        st = self.status
        st.batches_sent += 1
        st.bytes_sent += size
        st.messages_sent += count
        self.unsent -= count
        if not st.active:
            st.active = True
            if st.failures:
                log.info("raft: stream to peer %x re-established", self.id)

    def _take(self) -> list[tuple[pb.Message, bytes]]:
        q, self.queue = self.queue, []
        self.queued_bytes = 0
        self.overflow_reported = False
        return q

    def _batches(
        self, msgs: list[tuple[pb.Message, bytes]]
    ) -> list[tuple[bytes, list[tuple[pb.Message, bytes]], int]]:
        """The queued messages in batches: each an encoded MessageBatch (the peer's header
        and each message's encoding as a `messages` entry: the bytes protobuf would make
        of the batch, without copying every message into one and encoding it again),
        its (message, encoding) pairs and its messages' size as counted for the limits."""
        t = self.t
        out = []
        items: list[tuple[pb.Message, bytes]] = []
        size = 0
        for item in msgs:
            n = len(item[1])
            if n + _BATCH_OVERHEAD > t.max_message_bytes:
                m = item[0]
                self.status.messages_dropped += 1
                self.status.send_failures += 1
                self.unsent -= 1
                log.error(
                    "raft: %s to %x is %d bytes, over the %d-byte limit; dropped",
                    pb.MessageType.Name(m.type), self.id, n, t.max_message_bytes,
                )  # fmt: skip
                t._report_unreachable(self.id)
                continue
            if items and size + n > t.max_batch_bytes:
                out.append((_batch_bytes(self.batch_header, items), items, size))
                items, size = [], 0
            items.append(item)
            size += n + 8
        if items:
            out.append((_batch_bytes(self.batch_header, items), items, size))
        return out

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
        call = await self.t._open_stream(self.urls[self.url_index])
        call.add_done_callback(lambda _f: self.wake.set())
        try:
            while True:
                if call.done():
                    await call.result()  # raises the peer's status
                    raise ConnectionError("peer ended the stream")
                msgs = self._take()
                if not msgs:
                    self.wake.clear()
                    self.call = call  # idle: `flush` may write on this stream directly
                    try:
                        await self.wake.wait()
                    finally:
                        self.call = None
                    continue
                self.unsent = len(msgs)
                loop = asyncio.get_running_loop()
                for payload, items, size in self._batches(msgs):
                    # a write stuck past write_timeout cancels the call (no task per write,
                    # as asyncio.wait_for would create: this is the leader's hottest path)
                    fired: list[bool] = []
                    watchdog = loop.call_later(
                        self.t.write_timeout, _expire_write, fired, call
                    )
                    try:
                        await call.write(payload)
                    except ConnectionError:
                        if fired:
                            raise ConnectionError("peer write timed out") from None
                        raise
                    finally:
                        watchdog.cancel()
                    self._wrote(len(items), size)
                self.unsent = 0
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
        if isinstance(e, PeerProtocolError):  # hostile or broken: a line per peer and interval
            bounds.violations.warning(
                f"{self.id:x}", "peer_protocol_violation", "url=%s error=%s",
                self.urls[self.url_index], err[:MAX_LOGGED_CHARS],
            )  # fmt: skip
        else:
            (log.warning if st.last_error != err else log.debug)(
                "raft: stream from %x to peer %x (%s) failed: %s",
                self.t.local_id, self.id, self.urls[self.url_index], err,
            )  # fmt: skip
        st.last_error = err
        if REMOVED_MESSAGE in err and self.t.on_removed is not None:
            self.t.on_removed()  # a peer says we were removed from the cluster (etcd's 410)
        self.url_index = (self.url_index + 1) % len(self.urls)
        self.t._report_unreachable(self.id)

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


def _batch_bytes(header: bytes, items: list[tuple[pb.Message, bytes]]) -> bytes:
    """A MessageBatch: `header` (its other fields, encoded) and each (message, encoding)
    as a `messages` entry, the bytes protobuf makes of it."""
    parts = [header]
    for _, data in items:
        n = len(data)
        if n < 0x80:  # a heartbeat, a response
            parts.append(_SHORT_ENTRY[n])
        elif n < 0x4000:  # an append of a few small entries
            parts.append(bytes((_MESSAGES_KEY, n & 0x7F | 0x80, n >> 7)))
        else:
            key = bytearray((_MESSAGES_KEY,))
            while n >= 0x80:
                key.append(n & 0x7F | 0x80)
                n >>= 7
            key.append(n)
            parts.append(key)
        parts.append(data)
    return b"".join(parts)


def _expire_write(fired: list[bool], call) -> None:
    """A peer write outlived write_timeout: cancel the call (its writer sees why)."""
    fired.append(True)
    call.cancel()
