"""The watch hub: every watcher of a member, what each watch stream is owed, and catch-up.

etcd's ``watchableStore`` without its goroutines. Watchers are *synced* (their
stream pulls each committed revision from the hub's in-memory log) or *unsynced*
(they are behind: created at an old revision, or their stream fell further behind
than the log reaches). ``sync_once`` brings unsynced watchers forward from MVCC
history and rejoins them to the synced group; the owner runs it on a thread of its
own whenever ``wakeup`` is called.

Delivery to synced watchers is pulled, not pushed: ``notify`` (called on the event
loop after each applied batch) only appends the revision to the log and wakes the
streams that have a matching watcher, so its cost does not grow with the number of
watchers (with no watcher at all it keeps no log, only the revision). A stream's
sender, whenever its client can take more, turns everything it has not yet seen into
one response per watcher (`Stream.pop_many`). A fast
client gets one revision per response; a slow one gets every revision it missed in
one response, as etcd's slow watchers do through catch-up. No method blocks on a
client, so a stalled consumer never slows applying.

One lock guards the groups, the log and every stream's queue, so a stream sees a
watch's ``created`` response before its events, events in revision order with no
gap or duplicate, and a progress notification only after every event at or
below its revision.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter

from etcdproto.mvccpb.kv_pb2 import Event
from kubekv_server.mvcc import CompactedError, MVCCStore

# A lagging watcher gets at most this many revisions of history per response.
MAX_REVS_PER_SYNC = 1000
# etcd's maxWatchersPerSync: watchers brought forward by one history read.
MAX_WATCHERS_PER_SYNC = 512
# Revisions kept in memory for streams to pull from (trimmed back to this many, or
# to this many bytes of events, when over by a TRIM_STEP-th); a stream further behind
# has its watchers catch up from MVCC history instead.
RECENT_REVISIONS = 4096
RECENT_BYTES = 32 << 20
# The log is trimmed once it is over a budget by 1/TRIM_STEP of it: freeing 64
# revisions' events takes ~0.04 ms, where trimming only when twice over freed 4,096 at
# once, ~2 ms with the loop and the hub's lock held, every 0.4 s at 10k Puts/s.
TRIM_STEP = 64
# The encoded size of a revision logged for the streams: (revision, events, size).
_SIZE = itemgetter(2)
# Responses (created, canceled, progress, catch-up) queued on one stream before its
# unsynced watchers wait for it to drain.
DEFAULT_MAX_PENDING = 1024
# ... and bytes of catch-up events queued on one stream before they wait: a stalled
# client's catch-up is read from history a little at a time as it drains, instead of
# the whole backlog landing in its queue (which held ~1,000 responses of up to 1,000
# revisions each). etcd's victims hold one event batch per watcher instead.
MAX_PENDING_BYTES = 4 << 20
# One catch-up read from history stops at the first revision boundary past this many
# bytes of events (a revision is never split), besides MAX_REVS_PER_SYNC: the read is
# held in memory at once, and becomes one response.
CATCHUP_READ_BYTES = 1 << 20
# One pull turns at most this many events (or bytes) of the log into responses; a
# single revision is never split.
PULL_MAX_EVENTS = 1000
PULL_MAX_BYTES = 1 << 20
# One `take` turns at most this many bytes of the log into responses (past the first
# pull); the rest stays in the log for the next one, so a client that was stalled
# far behind is not handed its whole backlog, as responses, at once when it resumes.
TAKE_MAX_BYTES = 1 << 20

INVALID_WATCH_ID = -1

ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"

_PUT = Event.PUT
_DELETE = Event.DELETE


@dataclass(slots=True)
class Response:
    """A WatchResponse owed to a stream, before headers, prev_kv trimming and fragmenting."""

    watch_id: int
    revision: int
    events: list = field(default_factory=list)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    watcher: Watcher | None = None  # for prev_kv, fragment and progress bookkeeping
    # a progress notification: the stream's events up to `revision` are sent first;
    # dropped if one of the stream's watchers fell behind since (`Stream.unsyncs`)
    flush: bool = False
    epoch: int = 0
    size: int = 0  # bytes of catch-up events counted in the stream's queued_bytes


SYNCED, UNSYNCED, DONE = "synced", "unsynced", "done"


class Watcher:
    """One watch: a key or range, the next revision it is owed, and its options."""

    __slots__ = (
        "id", "key", "end", "min_rev", "no_put", "no_delete", "prev_kv", "progress_notify",
        "fragment", "stream", "state", "progress_due", "known",
    )

    def __init__(self, stream: Stream, watch_id: int, key: bytes, end: bytes | None,
                 min_rev: int, *, no_put: bool = False, no_delete: bool = False,
                 prev_kv: bool = False, progress_notify: bool = False,
                 fragment: bool = False) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = key
        self.end = end  # None: the key alone; b"": every key >= key
        self.min_rev = min_rev
        self.no_put = no_put
        self.no_delete = no_delete
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.state = UNSYNCED
        # etcd's per-watch progress flag: no events sent since the last tick
        self.progress_due = True
        # the revision the client already has (its start revision - 1; 0 for a watch
        # from now): no progress notification reports less. A client resuming a watch
        # on a member that has not applied that far yet would see its revision go back
        # (etcd-io/etcd#20221; etcd's fix waits for the start revision itself, this
        # waits only for what the client has, so a quiet watch from R+1 still hears R)
        self.known = 0

    def matches(self, key: bytes) -> bool:
        end = self.end
        if end is None:
            return key == self.key
        return key >= self.key and (not end or key < end)

    def filter(self, events: list) -> list:
        if not (self.no_put or self.no_delete):
            return events
        drop = _PUT if self.no_put else None
        drop_del = _DELETE if self.no_delete else None
        return [e for e in events if e.type != drop and e.type != drop_del]

    def __repr__(self) -> str:
        return f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r}, " \
               f"min_rev={self.min_rev}, state={self.state})"


class WatcherGroup:
    """Which streams have synced watchers on which keys and ranges (for waking them)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, dict[Stream, int]] = {}
        self.ranges: dict[tuple[bytes, bytes], dict[Stream, int]] = {}
        self.size = 0

    def _slot(self, w: Watcher) -> tuple[dict, object]:
        return (self.keys, w.key) if w.end is None else (self.ranges, (w.key, w.end))

    def add(self, w: Watcher) -> None:
        table, k = self._slot(w)
        streams = table.setdefault(k, {})
        streams[w.stream] = streams.get(w.stream, 0) + 1
        self.size += 1

    def remove(self, w: Watcher) -> None:
        table, k = self._slot(w)
        streams = table[k]
        n = streams[w.stream] - 1
        if n:
            streams[w.stream] = n
        else:
            del streams[w.stream]
            if not streams:
                del table[k]
        self.size -= 1

    def streams_matching(self, key: bytes) -> Iterable[Stream]:
        found = self.keys.get(key)
        if found:
            yield from found
        for (start, end), streams in self.ranges.items():
            if key >= start and (not end or key < end):
                yield from streams

    def streams(self) -> set[Stream]:
        out = {s for d in self.keys.values() for s in d}
        out.update(s for d in self.ranges.values() for s in d)
        return out

    def __len__(self) -> int:
        return self.size


class Stream:
    """The hub's side of one watch stream: its watchers, a queue of responses, and how
    far its synced watchers have been served from the hub's log."""

    def __init__(self, hub: WatchHub, max_pending: int) -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self.next_id = 0
        self.max_pending = max_pending
        self.deferred_progress = False
        self.closed = False
        self._out: deque = deque()
        self._cond = threading.Condition(threading.Lock())
        self.on_drain: Callable[[], None] | None = None
        # synced watchers by (key, end), as ordered sets; every revision up to `pos`
        # has been turned into responses for them; `notified`: the last revision
        # with an event one of them may want, `first_pending` the first such after
        # `pos` (0: none), so a pull skips the revisions nobody here wants
        self.synced: dict[tuple, dict[Watcher, None]] = {}
        self.pos = hub.rev
        self.notified = 0
        self.first_pending = 0
        # the last pull gave a watcher more than one revision: the client is behind
        self.behind = False
        # the last take stopped at TAKE_MAX_BYTES: more of the log is waiting already
        self.cut = False
        self.unsyncs = 0  # how often one of its watchers became unsynced
        self.max_pending_bytes = hub.max_pending_bytes
        self.queued_bytes = 0  # catch-up event bytes in _out (Response.size)
        self._closed = threading.Event()

    @property
    def full(self) -> bool:
        return (len(self._out) >= self.max_pending
                or self.queued_bytes >= self.max_pending_bytes)

    def push(self, resp: Response) -> None:
        with self._cond:
            self._out.append(resp)
            self.queued_bytes += resp.size
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _ready(self) -> bool:
        return bool(self._out) or self.notified > self.pos

    def pop(self, timeout: float | None = None) -> Response | None:
        """The next response; None on timeout or when closed (see `closed`)."""
        out = self.pop_many(timeout, 1)
        return out[0] if out else None

    def pop_many(self, timeout: float | None, limit: int) -> list[Response]:
        """Up to `limit` queued responses, or the responses for every revision this
        stream has not seen yet; waits up to `timeout` for either. [] on timeout or when
        closed."""
        with self._cond:
            if not self._ready() and not self.closed:
                self._cond.wait(timeout)
        return self.hub.take(self, limit)

    def pending(self) -> int:
        return len(self._out)

    def linger(self, seconds: float) -> None:
        """Wait (unless closed) so that a client that is behind gets bigger responses."""
        self._closed.wait(seconds)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._closed.set()
            self._cond.notify_all()


class WatchHub:
    """All watchers of a member (see the module docstring). Thread-safe."""

    def __init__(self, store: MVCCStore, *, max_pending: int = DEFAULT_MAX_PENDING,
                 recent_revisions: int = RECENT_REVISIONS, recent_bytes: int = RECENT_BYTES,
                 max_revs_per_sync: int = MAX_REVS_PER_SYNC,
                 max_pending_bytes: int = MAX_PENDING_BYTES,
                 catchup_read_bytes: int = CATCHUP_READ_BYTES) -> None:
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.catchup_read_bytes = catchup_read_bytes
        self.max_revs_per_sync = max_revs_per_sync
        self.recent_revisions = recent_revisions
        self.recent_bytes = recent_bytes
        self._trim_revisions = recent_revisions + max(recent_revisions // TRIM_STEP, 1)
        self._trim_bytes = recent_bytes + max(recent_bytes // TRIM_STEP, 1)
        self._lock = threading.Lock()
        self.synced = WatcherGroup()
        self.unsynced: set[Watcher] = set()
        self.rev = store.revisions()[0]
        # the log: (revision, events, encoded size) for revisions _log_first ..
        # self.rev, contiguous; empty means _log_first == self.rev + 1
        self._log: list[tuple[int, list, int]] = []
        self._log_first = self.rev + 1
        self._log_bytes = 0
        self._demoted = False  # a pull demoted watchers: the catch-up thread has work
        # streams whose requested progress waits for this member to reach a revision
        # its watchers' clients already have (`Watcher.known`)
        self._progress_waiting: set[Stream] = set()
        # called (without the lock) when unsynced watchers may make progress
        self.wakeup: Callable[[], None] = lambda: None

    # ------------------------------------------------------------- streams

    def new_stream(self) -> Stream:
        with self._lock:
            s = Stream(self, self.max_pending)
        s.on_drain = self._on_drain
        return s

    def _on_drain(self) -> None:
        if self.unsynced:
            self.wakeup()

    def close_stream(self, stream: Stream) -> None:
        with self._lock:
            for w in stream.watchers.values():
                self._remove(w)
            stream.watchers.clear()
        stream.close()

    def catch_up_revision(self) -> None:
        """Adopt the store's revision (after recovery, which applies without notifying)."""
        current = self.store.revisions()[0]
        with self._lock:
            if current > self.rev:
                self._restart_log(current)

    def restored(self) -> None:
        """The store was replaced by a snapshot: every watcher catches up from its history."""
        with self._lock:
            for s in self.synced.streams():
                for ws in list(s.synced.values()):
                    for w in list(ws):
                        w.min_rev = max(w.min_rev, s.pos + 1)
                        self._unsync(w)
            self._restart_log(self.store.revisions()[0])
        self.wakeup()

    def _restart_log(self, rev: int) -> None:
        """Lock held: the member is at `rev` and the log holds nothing (the next revision
        logged is rev + 1)."""
        self.rev = rev
        self._log.clear()
        self._log_first = rev + 1
        self._log_bytes = 0

    def _add_synced(self, w: Watcher) -> None:
        s = w.stream
        if not s.synced:
            # nothing pending for anyone: the stream starts where this watcher does
            s.pos = min(w.min_rev - 1, self.rev)
            s.first_pending = 0
        s.synced.setdefault((w.key, w.end), {})[w] = None
        self.synced.add(w)
        w.state = SYNCED

    def _unsync(self, w: Watcher) -> None:
        """A synced watcher becomes unsynced (its min_rev already says what it is owed)."""
        s = w.stream
        k = (w.key, w.end)
        ws = s.synced[k]
        del ws[w]
        if not ws:
            del s.synced[k]
        self.synced.remove(w)
        w.state = UNSYNCED
        self.unsynced.add(w)
        s.unsyncs += 1

    # ------------------------------------------------------ create / cancel

    def watch(self, stream: Stream, watch_id: int, key: bytes, end: bytes | None,
              start_rev: int, **opts) -> Watcher | None:
        """etcd's watchStream.Watch + the created response, pushed before any event.

        `end` None watches one key, b"" every key >= `key`. Returns the watcher, or
        None when refused (the response then is created+canceled with the reason).
        """
        with self._lock:
            err = ""
            if end and key >= end:
                err = ERR_EMPTY_RANGE
            elif stream.closed:
                err = ERR_EMPTY_RANGE
            elif watch_id == 0:
                # etcd's AutoWatchID is 0: the lowest free id from the stream's counter
                while stream.next_id in stream.watchers:
                    stream.next_id += 1
                watch_id = stream.next_id
                stream.next_id += 1
            elif watch_id in stream.watchers:
                err = ERR_DUPLICATE_ID
            if err:
                stream.push(Response(INVALID_WATCH_ID, self.rev, created=True, canceled=True,
                                     cancel_reason=err))
                return None
            stream.push(Response(watch_id, self.rev, created=True, watcher=None))
            if start_rev == 0 or start_rev > self.rev:
                w = Watcher(stream, watch_id, key, end, max(start_rev, self.rev + 1), **opts)
                w.known = start_rev - 1 if start_rev else 0
                self._add_synced(w)
            else:
                w = Watcher(stream, watch_id, key, end, start_rev, **opts)
                self.unsynced.add(w)
            stream.watchers[watch_id] = w
        if w.state == UNSYNCED:
            self.wakeup()
        return w

    def cancel(self, stream: Stream, watch_id: int) -> bool:
        """etcd's Cancel: False for an unknown id (no response); else a canceled response."""
        with self._lock:
            w = stream.watchers.pop(watch_id, None)
            if w is None or stream.closed:
                return False
            if (w.state == SYNCED and stream.notified > stream.pos
                    and not any(r.flush for r in stream._out)):
                # what was committed before the cancel is still delivered first (unless
                # a progress notification is queued: it must stay behind the events it
                # vouches for; etcd may drop them too)
                with stream._cond:
                    stream._out.extend(self._materialize(stream, self.rev))
            self._remove(w)
            stream.push(Response(watch_id, self.rev, canceled=True))
            self._retry_deferred_progress(stream)
        return True

    def _remove(self, w: Watcher) -> None:
        if w.state == SYNCED:
            self._unsync(w)
        self.unsynced.discard(w)
        w.state = DONE

    # -------------------------------------------------------------- notify

    def notify(self, revisions: list[tuple[int, list, int]]) -> None:
        """Event loop: log the events of applied revisions, given as (revision, its
        events, their encoded size) in revision order (`BatchResult.revisions`), and
        wake the streams that have a synced watcher for one of them."""
        if not revisions:
            return
        woken: list[Stream] = []
        with self._lock:
            log = self._log
            if not self.synced.size and not self.unsynced:
                # no watcher to pull from the log (etcd's watchableStore keeps no log at
                # all): only the revision moves; a watcher created later starts from now
                # or catches up from MVCC history, and the log starts with it
                if revisions[-1][0] > self.rev:
                    self._restart_log(revisions[-1][0])
                revisions = []
            for entry in revisions:
                rev, evs, size = entry
                if rev <= self.rev:
                    continue  # already seen (replay)
                if rev != self._log_first + len(log):
                    log.clear()  # not contiguous (cannot happen after recovery)
                    self._log_first = rev
                    self._log_bytes = 0
                log.append(entry)
                self._log_bytes += size
                self.rev = rev
                if not self.synced.size:
                    continue
                matching = self.synced.streams_matching
                for ev in evs:
                    for s in matching(ev.kv.key):
                        if s.notified != rev:
                            s.notified = rev
                            if not s.first_pending:
                                s.first_pending = rev
                            woken.append(s)
            if len(log) > self._trim_revisions or self._log_bytes > self._trim_bytes:
                self._trim_log()
            if self._progress_waiting:
                waiting, self._progress_waiting = self._progress_waiting, set()
                for s in waiting:
                    self._retry_deferred_progress(s)
        for s in woken:
            s.wake()

    def _trim_log(self) -> None:
        """Drop the oldest revisions, down to the revision and byte budgets (at least
        the newest revision stays)."""
        log = self._log
        drop = max(len(log) - self.recent_revisions, 0)
        size = self._log_bytes - sum(map(_SIZE, islice(log, drop)))
        while drop < len(log) - 1 and size > self.recent_bytes:
            size -= log[drop][2]
            drop += 1
        del log[:drop]
        self._log_first += drop
        self._log_bytes = size

    # ------------------------------------------------------------ delivery

    def take(self, s: Stream, limit: int) -> list[Response]:
        """A stream sender's next responses: queued ones in order (a progress
        notification after the events it vouches for), then, once the queue is empty,
        every revision the stream has not seen, one response per watcher."""
        with self._lock:
            with s._cond:
                q = s._out
                before = len(q)
                before_bytes = s.queued_bytes
                out: list[Response] = []
                while q and len(out) < limit:
                    r = q.popleft()
                    s.queued_bytes -= r.size
                    if r.flush:
                        out.extend(self._materialize(s, r.revision))
                        if r.watch_id == INVALID_WATCH_ID:
                            if r.epoch != s.unsyncs or any(
                                    w.state != SYNCED for w in s.watchers.values()):
                                s.deferred_progress = True  # sent once all are synced
                                continue
                        elif (r.epoch != s.unsyncs or r.watcher is None
                              or r.watcher.state != SYNCED):
                            continue
                    out.append(r)
                if not q and s.notified > s.pos:
                    out.extend(self._materialize(s, self.rev, TAKE_MAX_BYTES))
                if len(out) > limit:
                    rest = out[limit:]
                    q.extendleft(reversed(rest))
                    s.queued_bytes += sum(r.size for r in rest)
                    del out[limit:]
                after = len(q)
                after_bytes = s.queued_bytes
            self._retry_deferred_progress(s)  # if dropped above and all are synced again
            half = s.max_pending // 2
            half_bytes = s.max_pending_bytes // 2
            drained = (before >= s.max_pending > after or after <= half < before
                       or before_bytes >= s.max_pending_bytes > after_bytes
                       or after_bytes <= half_bytes < before_bytes)
            wake = (drained or self._demoted) and bool(self.unsynced)
            self._demoted = False
        if wake:
            self.wakeup()
        return out

    def _materialize(self, s: Stream, target: int, budget: int = 0) -> list[Response]:
        """Responses for the stream's synced watchers, for revisions s.pos+1 .. target
        of the log. Watchers the log no longer reaches back for are demoted to catch up
        from history. With a `budget`, stops after the pull that reaches that many bytes
        of the log (s.pos then tells where the next call goes on)."""
        out: list[Response] = []
        log = self._log
        behind = False
        used = 0
        s.cut = False
        if s.first_pending > s.pos + 1:
            s.pos = min(s.first_pending - 1, target)  # nothing here wants those revisions
        while s.pos < target:
            if not s.synced:
                s.pos = target
                break
            start = s.pos + 1
            first = self._log_first
            if start < first:
                self._demote_lagging(s, first)
                s.pos = first - 1
                continue
            i = start - first
            j = min(target - first + 1, len(log))
            if i >= j:
                s.pos = target
                break
            k = i + 1
            n_ev, size = len(log[i][1]), log[i][2]
            cap = min(j, i + self.max_revs_per_sync)
            while k < cap:
                _, evs, sz = log[k]
                n_ev += len(evs)
                size += sz
                if n_ev > PULL_MAX_EVENTS or size > PULL_MAX_BYTES:
                    break
                k += 1
            entries = log[i:k]
            stop = entries[-1][0]
            used += size
            for (key, end), ws in s.synced.items():
                if end is None:
                    found = [ev for _, evs, _ in entries for ev in evs if ev.kv.key == key]
                elif end:
                    found = [ev for _, evs, _ in entries for ev in evs
                             if key <= ev.kv.key < end]
                else:
                    found = [ev for _, evs, _ in entries for ev in evs if ev.kv.key >= key]
                if found:
                    if found[0].kv.mod_revision != found[-1].kv.mod_revision:
                        behind = True
                    revs = None
                    for w in ws:
                        wevs = found
                        if w.min_rev > start:
                            if revs is None:
                                revs = [ev.kv.mod_revision for ev in found]
                            cut = bisect.bisect_left(revs, w.min_rev)
                            wevs = found[cut:]
                        if w.no_put or w.no_delete:
                            wevs = w.filter(wevs)
                        if wevs:
                            out.append(Response(w.id, stop, wevs, watcher=w))
                for w in ws:
                    if w.min_rev <= stop:
                        w.min_rev = stop + 1
            s.pos = stop
            if budget and used >= budget:
                s.cut = s.pos < target
                break
        if s.first_pending <= s.pos:
            # stopped short of what was notified (a budget, or a progress target below
            # the log's end): what follows pos is still pending, so a later notify must
            # not move first_pending past it
            s.first_pending = s.pos + 1 if s.notified > s.pos else 0
        s.behind = behind
        return out

    def _demote_lagging(self, s: Stream, first: int) -> None:
        """The stream fell behind the log: watchers owed a revision before `first`
        catch up from history (etcd's victims)."""
        for ws in list(s.synced.values()):
            for w in list(ws):
                nxt = max(w.min_rev, s.pos + 1)
                if nxt < first:
                    w.min_rev = nxt
                    self._unsync(w)
                    self._demoted = True

    # ------------------------------------------------------------ progress

    def progress(self, w: Watcher) -> None:
        """etcd's RequestProgress: an empty response at the current revision, if synced."""
        with self._lock:
            if w.state == SYNCED and not w.stream.full and self.rev >= w.known:
                w.stream.push(Response(w.id, self.rev, watcher=w, flush=True,
                                       epoch=w.stream.unsyncs))

    def progress_all(self, stream: Stream) -> None:
        """etcd 3.5's RequestProgressAll for a WatchProgressRequest.

        One response with watch_id -1 at the current revision once every watcher of
        the stream is synced (deferred until then); nothing for a stream without
        watchers.
        """
        with self._lock:
            stream.deferred_progress = True
            self._retry_deferred_progress(stream)

    def _retry_deferred_progress(self, stream: Stream) -> None:
        if not stream.deferred_progress:
            return
        if any(w.state != SYNCED for w in stream.watchers.values()):
            return
        if any(self.rev < w.known for w in stream.watchers.values()):
            self._progress_waiting.add(stream)  # retried as revisions are applied
            return
        stream.deferred_progress = False
        if stream.watchers:
            stream.push(Response(INVALID_WATCH_ID, self.rev, flush=True,
                                 epoch=stream.unsyncs))

    # ------------------------------------------------------------ catch-up

    def sync_once(self) -> int:
        """Bring unsynced watchers forward from MVCC history.

        Returns how many watchers are still behind and could go on now (their
        stream is not full); the owner calls again at once while that is non-zero.

        The history is read without the lock; the lock is only held to hand the
        result over, and to join the watchers to their streams' pulls from the log.
        """
        with self._lock:
            batch = [(w, w.min_rev) for w in self.unsynced if not w.stream.full]
            batch = batch[:MAX_WATCHERS_PER_SYNC]
        if not batch:
            return 0
        owed: dict[Watcher, list] = {}
        sizes: dict[int, int] = {}
        with self.store.read() as r:
            current, compacted = r.current_revision, r.compact_revision
            live = [(w, m) for w, m in batch if m >= compacted]
            if live:
                start = min(m for _, m in live)
                stop = min(current, start + self.max_revs_per_sync - 1)
                history, sizes, stop = _read_history(r, start, stop, self.catchup_read_bytes)
                # watchers of the same range share one match pass over the history;
                # each takes the tail from its own next revision on (events are in
                # revision order), so the cost is not events x watchers
                ranges: dict[tuple, list] = {}
                for w, m in live:
                    ranges.setdefault((w.key, w.end), []).append((w, m))
                for group in ranges.values():
                    matches = group[0][0].matches
                    found = [ev for ev in history if matches(ev.kv.key)]
                    if not found:
                        continue
                    revs = [ev.kv.mod_revision for ev in found]
                    for w, m in group:
                        i = bisect.bisect_left(revs, m)
                        if i < len(found):
                            owed[w] = found[i:] if i else found
                if any(w.prev_kv for w in owed):
                    _fill_prev_kv(r, owed)
            else:
                stop = current
        with self._lock:
            for w, m in batch:
                if w.state != UNSYNCED or w.min_rev != m:
                    continue  # canceled, or moved on, while the history was read
                stream = w.stream
                if m < compacted:
                    # etcd: compact_revision set, canceled; the id stays taken on the stream
                    self.unsynced.discard(w)
                    w.state = DONE
                    stream.push(Response(w.id, 0, canceled=True, compact_revision=compacted))
                    continue
                if m > stop:
                    reached = current if m > current else stop
                else:
                    wevs = w.filter(owed.get(w, []))
                    if wevs:
                        # (prev_kv, filled in later, is not counted: the bound is loose)
                        stream.push(Response(w.id, current, wevs, watcher=w,
                                             size=sum(sizes[id(ev)] for ev in wevs)))
                    w.min_rev = stop + 1
                    reached = stop
                if reached < current or not self._join(w, reached):
                    continue
                self._retry_deferred_progress(stream)
            return sum(1 for w in self.unsynced if not w.stream.full)

    def _join(self, w: Watcher, reached: int) -> bool:
        """Move a watcher that has everything up to `reached` into its stream's synced
        watchers, which pull revisions after the stream's position from the log.

        Revisions up to that position (which the stream's other watchers already
        have) are pushed from the log; if it no longer holds them, the watcher stays
        unsynced for another round.
        """
        s = w.stream
        if s.synced and reached < s.pos:
            first = self._log_first
            if reached + 1 < first:
                w.min_rev = reached + 1
                return False
            wevs = w.filter([ev for _, evs, _ in self._log[reached + 1 - first:s.pos + 1 - first]
                             for ev in evs if w.matches(ev.kv.key)])
            if wevs:
                s.push(Response(w.id, s.pos, wevs, watcher=w))
            w.min_rev = s.pos + 1
        else:
            w.min_rev = reached + 1
        self.unsynced.discard(w)
        self._add_synced(w)
        if self.rev >= w.min_rev:
            s.notified = max(s.notified, self.rev)
            s.first_pending = min(s.first_pending or w.min_rev, w.min_rev)
            s.wake()
        return True


def _read_history(r, start: int, stop: int, max_bytes: int) -> tuple[list, dict[int, int], int]:
    """Events of revisions start..stop from history, ending early at the first revision
    boundary past `max_bytes`; (events, their sizes by id, the last revision read)."""
    events: list = []
    sizes: dict[int, int] = {}
    used = 0
    last = start - 1
    for ev in r.history(start, stop):
        rev = ev.kv.mod_revision
        if rev != last:
            if used >= max_bytes:
                return events, sizes, last
            last = rev
        n = ev.ByteSize()
        used += n
        sizes[id(ev)] = n
        events.append(ev)
    return events, sizes, stop


def _fill_prev_kv(r, owed: dict[Watcher, list]) -> None:
    """etcd's prev_kv for history events: the key at mod_revision - 1, unless compacted."""
    done: set[int] = set()
    for w, evs in owed.items():
        if not w.prev_kv:
            continue
        for ev in evs:
            if id(ev) in done:
                continue
            done.add(id(ev))
            kv = ev.kv
            if ev.type == _PUT and kv.create_revision == kv.mod_revision:
                continue
            try:
                found = r.range(kv.key, None, rev=kv.mod_revision - 1).kvs
            except CompactedError:
                continue
            if found:
                ev.prev_kv.CopyFrom(found[0])
