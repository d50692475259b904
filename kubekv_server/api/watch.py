"""etcdserverpb.Watch: etcd's watch stream (v3rpc/watch.go), a worker-thread handler of
kubekv's RPC server (rpc/calls.py).

Each stream has a reader thread (the blocking request iterator: create, cancel,
progress requests go straight to the hub) and the handler thread, which pulls the
stream's responses from the hub whenever the client can take more, fills headers,
trims prev_kv, fragments and yields. The hub never waits for either, so a slow
client only ever delays itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.api.auth_gate import watch_denied
from kubekv_server.watch import Response, Stream, WatchHub
from kubekv_server.watch.hub import INVALID_WATCH_ID

log = logging.getLogger("kubekv.watch")

# responses handed to the RPC layer at once (each already whole revisions)
BATCH_RESPONSES = 64
# ... and at most this many encoded bytes per hand-over (past the first response): the
# RPC layer copies a batch a few times on its way to the socket and holds it until the
# client's window takes it, so an unbounded batch (a stalled client resuming was handed
# its whole backlog at once) cost several times the backlog. grpc-go writes through a
# 32 KiB buffer; a few hundred KiB keeps one hand-over per many small events.
BATCH_BYTES = 256 << 10
# A stream whose client is behind (its last pull held several revisions for a
# watcher, and more than BEHIND_BYTES of what it was sent are not yet acknowledged by
# HTTP/2 window updates) waits this long before the next pull, so that each response
# carries more revisions and the client spends less per event (etcd batches its slow
# watchers every 100 ms). A client that keeps up is never held back, nor one whose
# last pull stopped at the hub's byte budget (its next pull is full already).
BEHIND_LINGER = 0.05
BEHIND_BYTES = 64 << 10

_NOPUT = pb.WatchCreateRequest.NOPUT
_NODELETE = pb.WatchCreateRequest.NODELETE


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def fragments(resp: pb.WatchResponse, limit: int) -> Iterator[pb.WatchResponse]:
    """etcd's sendFragments: split a response of >= `limit` bytes and > 1 event.

    Every fragment but the last has `fragment` set; each holds at least one event
    and stays below `limit` whenever more than one event fits.
    """
    if len(resp.events) < 2 or resp.ByteSize() < limit:
        yield resp
        return
    events = list(resp.events)
    base = pb.WatchResponse()
    base.CopyFrom(resp)
    base.ClearField("events")
    base.fragment = True
    base_size = base.ByteSize()
    i, n = 0, len(events)
    while True:
        cur = pb.WatchResponse()
        cur.CopyFrom(base)
        size = base_size
        count = 0
        while i < n:
            es = events[i].ByteSize()
            add = 1 + _varint_len(es) + es
            if count >= 1 and size + add >= limit:
                break
            cur.events.append(events[i])
            size += add
            count += 1
            i += 1
        if i == n:
            cur.fragment = False
        yield cur
        if not cur.fragment:
            return


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Encoded:
    """A response already in wire form (the RPC layer calls SerializeToString)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return self.data


# WatchResponse.events is field 11, length-delimited; header field 1; watch_id field 2
_EVENTS_TAG = b"\x5a"
_HEADER_TAG = b"\x0a"
_WATCH_ID_TAG = b"\x10"
# cached encodings are dropped wholesale past these sizes (entries, and bytes of
# encoded events: each entry also keeps its event alive, so a count alone let the cache
# hold ~2x every event of a large-value backlog)
_EVENT_CACHE_MAX = 65536
_EVENT_CACHE_BYTES = 8 << 20
_HEADER_CACHE_MAX = 1024


class EventEncoder:
    """Wire form of event responses, each event encoded once for all its watchers.

    One committed event goes to every watcher of its key; copying it into a new
    WatchResponse per watcher (and stripping prev_kv for most) was the main cost of
    fan-out. Here each event object is encoded once with and once without prev_kv,
    each header once per (revision, term), and a response is their concatenation in
    field order, byte for byte what protobuf would produce. Shared by every stream's
    thread; a lost race only encodes twice.
    """

    def __init__(self, member) -> None:
        self.member = member
        self._events: dict[int, tuple[object, bytes, bytes | None]] = {}
        self._event_bytes = 0
        self._headers: dict[tuple[int, int], bytes] = {}

    def _header(self, revision: int, term: int) -> bytes:
        key = (revision, term)
        out = self._headers.get(key)
        if out is None:
            h = pb.ResponseHeader()
            self.member.header(h, revision, term=term)
            data = h.SerializeToString()
            out = _HEADER_TAG + _varint(len(data)) + data
            if len(self._headers) >= _HEADER_CACHE_MAX:
                self._headers.clear()
            self._headers[key] = out
        return out

    def _event(self, ev, prev_kv: bool) -> bytes:
        cached = self._events.get(id(ev))
        if cached is None or cached[0] is not ev:
            if ev.HasField("prev_kv"):
                full = ev.SerializeToString()
                stripped = pb_event(ev).SerializeToString()
                cached = (ev, _EVENTS_TAG + _varint(len(stripped)) + stripped,
                          _EVENTS_TAG + _varint(len(full)) + full)
            else:
                data = ev.SerializeToString()
                cached = (ev, _EVENTS_TAG + _varint(len(data)) + data, None)
            if (len(self._events) >= _EVENT_CACHE_MAX
                    or self._event_bytes >= _EVENT_CACHE_BYTES):
                self._events.clear()
                self._event_bytes = 0
            self._events[id(ev)] = cached
            self._event_bytes += len(cached[1]) + (len(cached[2]) if cached[2] else 0)
        if prev_kv and cached[2] is not None:
            return cached[2]
        return cached[1]

    def encode(self, watch_id: int, revision: int, events: list, prev_kv: bool,
               lists: dict | None = None) -> Encoded:
        """One watcher's event response. `lists`: the caller's cache of joined event
        lists, for one batch (a pull hands the same list to every watcher of a range, so
        its events' wire form is joined once; kept no longer than the batch)."""
        parts = [self._header(revision, self.member.node.term)]
        if watch_id:
            parts.append(_WATCH_ID_TAG + _varint(watch_id))
        if len(events) == 1:
            parts.append(self._event(events[0], prev_kv))
        else:
            parts.append(self._events_of(events, prev_kv, lists))
        return Encoded(b"".join(parts))

    def _events_of(self, events: list, prev_kv: bool, lists: dict | None) -> bytes:
        key = (id(events), prev_kv)
        cached = lists.get(key) if lists is not None else None
        if cached is None or cached[0] is not events:
            event = self._event
            cached = (events, b"".join([event(ev, prev_kv) for ev in events]))
            if lists is not None:
                lists[key] = cached
        return cached[1]


def pb_event(ev):
    """The event without its prev_kv."""
    out = type(ev)(type=ev.type)
    out.kv.CopyFrom(ev.kv)
    return out


def progress_interval_with_jitter(interval: float) -> float:
    """etcd's GetProgressReportInterval: the interval plus up to a tenth of it."""
    return interval + random.uniform(0, interval / 10)


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, member, hub: WatchHub, *, progress_interval: float,
                 max_request_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.member = member
        self.hub = hub
        self.progress_interval = progress_interval
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.encoder = EventEncoder(member)

    # ------------------------------------------------------------ the stream

    def Watch(self, request_iterator, context):
        hub = self.hub
        stream = hub.new_stream()
        context.add_callback(stream.close)
        reader = threading.Thread(
            target=self._receive, args=(request_iterator, stream, context),
            name="kubekv-watch-recv",
            daemon=True,
        )
        reader.start()
        clock = self.clock
        next_tick = clock() + progress_interval_with_jitter(self.progress_interval)
        try:
            while True:
                outs = stream.pop_many(max(next_tick - clock(), 0.0), BATCH_RESPONSES)
                if not outs:
                    if stream.closed:
                        return
                    if clock() >= next_tick:
                        self._progress_tick(stream)
                        next_tick = clock() + progress_interval_with_jitter(
                            self.progress_interval
                        )
                    continue
                # what is pending goes to the RPC layer as batches (lists) of up to
                # BATCH_BYTES: one hand-over to the event loop and one socket write each
                batch: list = []
                size = 0
                lists: dict = {}
                for out in outs:
                    for resp in self._responses(out, lists):
                        batch.append(resp)
                        size += resp.ByteSize() if not isinstance(resp, Encoded) \
                            else len(resp.data)
                    w = out.watcher
                    if w is not None and out.events:
                        w.progress_due = False  # etcd elides the next progress notification
                    if size >= BATCH_BYTES:
                        yield batch
                        batch = []
                        size = 0
                del lists
                if batch:
                    yield batch
                if (stream.behind and not stream.cut
                        and context.unacknowledged_bytes() > BEHIND_BYTES):
                    stream.linger(BEHIND_LINGER)
        finally:
            hub.close_stream(stream)

    def _progress_tick(self, stream: Stream) -> None:
        for w in list(stream.watchers.values()):
            if w.progress_notify:
                if w.progress_due:
                    self.hub.progress(w)
                w.progress_due = True

    def _receive(self, request_iterator, stream: Stream, context=None) -> None:
        """Reader thread: apply requests in order; a broken stream closes ours."""
        try:
            for req in request_iterator:
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    denied = watch_denied(getattr(self.member, "auth", None), context,
                                          req.create_request)
                    if denied is not None:
                        stream.push(Response(INVALID_WATCH_ID, self.hub.rev, created=True,
                                             canceled=True, cancel_reason=denied))
                        continue
                    self._create(stream, req.create_request)
                elif kind == "cancel_request":
                    self.hub.cancel(stream, req.cancel_request.watch_id)
                elif kind == "progress_request":
                    self.hub.progress_all(stream)
        except Exception as exc:  # the client went away (grpc raises on cancel)
            log.debug("event=watch_recv_ended error=%r", exc)
            self.hub.close_stream(stream)
        # On a clean half-close etcd keeps sending until the client cancels.

    def _create(self, stream: Stream, c: pb.WatchCreateRequest) -> None:
        key = c.key or b"\x00"  # etcd: \x00 is the smallest key
        end: bytes | None = c.range_end
        if not end:
            end = None
        elif end == b"\x00":
            end = b""  # every key >= key
        filters = set(c.filters)
        self.hub.watch(
            stream, c.watch_id, key, end, c.start_revision,
            no_put=_NOPUT in filters, no_delete=_NODELETE in filters, prev_kv=c.prev_kv,
            progress_notify=c.progress_notify, fragment=c.fragment,
        )

    # ------------------------------------------------------------- responses

    def _responses(self, out: Response,
                   lists: dict | None = None) -> Iterator[pb.WatchResponse | Encoded]:
        w = out.watcher
        if (out.events and w is not None and not w.fragment and out.watch_id >= 0
                and not (out.created or out.canceled or out.compact_revision
                         or out.cancel_reason)):
            # the common case, events for one watcher: encoded from shared parts
            yield self.encoder.encode(out.watch_id, out.revision, out.events, w.prev_kv,
                                      lists)
            return
        m = self.member
        resp = pb.WatchResponse(
            watch_id=out.watch_id, created=out.created, canceled=out.canceled,
            compact_revision=out.compact_revision, cancel_reason=out.cancel_reason,
        )
        m.header(resp.header, out.revision)
        w = out.watcher
        if out.events:
            if w is not None and w.prev_kv:
                resp.events.extend(out.events)
            else:
                for ev in out.events:
                    e = resp.events.add()
                    e.type = ev.type
                    e.kv.CopyFrom(ev.kv)
        if w is not None and w.fragment:
            yield from fragments(resp, self.max_request_bytes)
        else:
            yield resp
