"""The watch hub: every watcher of a member, what each watch stream is owed, and catch-up.

etcd's ``watchableStore`` without its goroutines. Watchers are *synced* (they get each
committed revision from ``notify``, which the Raft node calls on the event loop after
each applied batch and which only
appends to outboxes) or *unsynced* (they are behind: created at an old revision,
or demoted because their stream's outbox was full). ``sync_once`` brings unsynced
watchers forward from MVCC history and rejoins them to the synced group; the
owner runs it on a thread of its own whenever ``wakeup`` is called. No method
blocks on a client, so a stalled consumer never slows applying.

One lock guards the groups and every push to an outbox, so a stream sees a
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

from etcdproto.mvccpb.kv_pb2 import Event

from ..mvcc import CompactedError, MVCCStore

# A lagging watcher gets at most this many revisions of history per response.
MAX_REVS_PER_SYNC = 1000
# etcd's maxWatchersPerSync: watchers brought forward by one history read.
MAX_WATCHERS_PER_SYNC = 512
# Revisions kept in memory to close the gap between a history read and `notify`.
RECENT_REVISIONS = 4096
# Responses queued on one stream before its watchers are demoted to catch up later.
DEFAULT_MAX_PENDING = 1024
# A backed-up stream (at least this many responses queued) gets a
# watcher's next revision merged into that watcher's queued response, up to these sizes.
MERGE_AFTER = 32
MERGE_MAX_EVENTS = 1000
MERGE_MAX_BYTES = 1 << 20

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
    # merging (Stream.push_events): still in the outbox, the stream's barrier count when
    # pushed, approximate encoded size of the events
    queued: bool = False
    epoch: int = 0
    size: int = 0


SYNCED, UNSYNCED, DONE = "synced", "unsynced", "done"


class Watcher:
    """One watch: a key or range, the next revision it is owed, and its options."""

    __slots__ = (
        "id", "key", "end", "min_rev", "no_put", "no_delete", "prev_kv", "progress_notify",
        "fragment", "stream", "state", "progress_due", "tail",
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
        self.tail: Response | None = None  # the last events response pushed by notify

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
    """Watchers indexed for matching: single keys by key, ranges by (key, end)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, set[Watcher]] = {}
        self.ranges: dict[tuple[bytes, bytes], set[Watcher]] = {}
        self.size = 0

    def add(self, w: Watcher) -> None:
        if w.end is None:
            self.keys.setdefault(w.key, set()).add(w)
        else:
            self.ranges.setdefault((w.key, w.end), set()).add(w)
        self.size += 1

    def remove(self, w: Watcher) -> None:
        table, k = (self.keys, w.key) if w.end is None else (self.ranges, (w.key, w.end))
        ws = table.get(k)
        if ws is None or w not in ws:
            return
        ws.discard(w)
        if not ws:
            del table[k]
        self.size -= 1

    def matching(self, key: bytes) -> Iterable[Watcher]:
        found = self.keys.get(key)
        if found:
            yield from found
        for (start, end), ws in self.ranges.items():
            if key >= start and (not end or key < end):
                yield from ws

    def __len__(self) -> int:
        return self.size

    def all(self) -> list[Watcher]:
        out = [w for ws in self.keys.values() for w in ws]
        out.extend(w for ws in self.ranges.values() for w in ws)
        return out


class Stream:
    """The hub's side of one watch stream: its watchers and an outbox of responses."""

    def __init__(self, max_pending: int) -> None:
        self.watchers: dict[int, Watcher] = {}
        self.next_id = 0
        self.max_pending = max_pending
        self.deferred_progress = False
        self.closed = False
        self._out: deque = deque()
        self._cond = threading.Condition(threading.Lock())
        self.on_drain: Callable[[], None] | None = None
        # bumped by every push but push_events': nothing is merged across it
        self._epoch = 0
        self._merge_after = MERGE_AFTER  # never reached when max_pending is below it

    @property
    def full(self) -> bool:
        return len(self._out) >= self.max_pending

    def push(self, resp: Response) -> None:
        with self._cond:
            self._epoch += 1
            resp.queued = True
            self._out.append(resp)
            self._cond.notify()

    def push_events(self, w: Watcher, rev: int, events: list, size: int) -> bool:
        """notify's push of one revision's events for a synced watcher. On a backed-up
        stream they join the watcher's response still waiting in the outbox, if nothing
        but other watchers' events was pushed since (so no response of this watch,
        progress notification or catch-up is overtaken), as etcd's catch-up responses
        hold many revisions. False when the stream is full and nothing could merge."""
        with self._cond:
            t = w.tail
            out = self._out
            if (t is not None and t.queued and t.epoch == self._epoch
                    and len(out) >= self._merge_after
                    and len(t.events) + len(events) <= MERGE_MAX_EVENTS
                    and t.size + size <= MERGE_MAX_BYTES):
                t.events = t.events + events  # a new list: event lists may be shared
                t.revision = rev
                t.size += size
                return True
            if len(out) >= self.max_pending:
                return False
            w.tail = resp = Response(w.id, rev, events, watcher=w, queued=True,
                                     epoch=self._epoch, size=size)
            out.append(resp)
            self._cond.notify()
            return True

    def pop(self, timeout: float | None = None) -> Response | None:
        """The next response; None on timeout or when closed (see `closed`)."""
        with self._cond:
            if not self._out and not self.closed:
                self._cond.wait(timeout)
            if not self._out:
                return None
            was_full = len(self._out) >= self.max_pending
            resp = self._out.popleft()
            resp.queued = False
            drained = was_full or len(self._out) == self.max_pending // 2
        if drained and self.on_drain is not None:
            self.on_drain()
        return resp

    def pop_many(self, timeout: float | None, limit: int) -> list[Response]:
        """Up to `limit` responses, waiting up to `timeout` for the first; [] on timeout
        or when closed."""
        with self._cond:
            if not self._out and not self.closed:
                self._cond.wait(timeout)
            before = len(self._out)
            if not before:
                return []
            n = min(limit, before)
            popleft = self._out.popleft
            out = [popleft() for _ in range(n)]
            for resp in out:
                resp.queued = False
            half = self.max_pending // 2
            drained = before >= self.max_pending or before - n <= half < before
        if drained and self.on_drain is not None:
            self.on_drain()
        return out

    def pending(self) -> int:
        return len(self._out)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class WatchHub:
    """All watchers of a member (see the module docstring). Thread-safe."""

    def __init__(self, store: MVCCStore, *, max_pending: int = DEFAULT_MAX_PENDING,
                 recent_revisions: int = RECENT_REVISIONS,
                 max_revs_per_sync: int = MAX_REVS_PER_SYNC) -> None:
        self.store = store
        self.max_pending = max_pending
        self.max_revs_per_sync = max_revs_per_sync
        self._lock = threading.Lock()
        self.synced = WatcherGroup()
        self.unsynced: set[Watcher] = set()
        self.rev = store.revisions()[0]
        self._recent: deque[tuple[int, list]] = deque(maxlen=recent_revisions)
        # called (without the lock) when unsynced watchers may make progress
        self.wakeup: Callable[[], None] = lambda: None

    # ------------------------------------------------------------- streams

    def new_stream(self) -> Stream:
        s = Stream(self.max_pending)
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
            self.rev = max(self.rev, current)

    def restored(self) -> None:
        """The store was replaced by a snapshot: every watcher catches up from its history."""
        with self._lock:
            for w in self.synced.all():
                self.synced.remove(w)
                w.state = UNSYNCED
                self.unsynced.add(w)
            self._recent.clear()
            self.rev = self.store.revisions()[0]
        self.wakeup()

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
                w.state = SYNCED
                self.synced.add(w)
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
            self._remove(w)
            stream.push(Response(watch_id, self.rev, canceled=True))
            self._retry_deferred_progress(stream)
        return True

    def _remove(self, w: Watcher) -> None:
        if w.state == SYNCED:
            self.synced.remove(w)
        elif w.state == UNSYNCED:
            self.unsynced.discard(w)
        w.state = DONE

    # -------------------------------------------------------------- notify

    def notify(self, events: list) -> None:
        """Committer thread: fan out the events of applied revisions to synced watchers."""
        if not events:
            return
        demoted = False
        with self._lock:
            for rev, evs in _by_revision(events):
                if rev <= self.rev:
                    continue  # already seen (replay)
                self._recent.append((rev, evs))
                self.rev = rev
                if not self.synced.size:
                    continue
                size = sum(ev.ByteSize() for ev in evs)
                owed: dict[Watcher, list] = {}
                for ev in evs:
                    for w in self.synced.matching(ev.kv.key):
                        lst = owed.get(w)
                        if lst is None:
                            owed[w] = [ev]
                        else:
                            lst.append(ev)
                for w, wevs in owed.items():
                    if rev < w.min_rev:
                        continue
                    wevs = w.filter(wevs)
                    if not wevs:
                        continue
                    if not w.stream.push_events(w, rev, wevs, size):
                        # etcd's victim: catch up from history once the stream drains
                        self.synced.remove(w)
                        w.state = UNSYNCED
                        w.min_rev = rev
                        self.unsynced.add(w)
                        demoted = True
                        continue
                    w.min_rev = rev + 1
        if demoted:
            self.wakeup()

    # ------------------------------------------------------------ progress

    def progress(self, w: Watcher) -> None:
        """etcd's RequestProgress: an empty response at the current revision, if synced."""
        with self._lock:
            if w.state == SYNCED and not w.stream.full:
                w.stream.push(Response(w.id, self.rev))

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
        stream.deferred_progress = False
        if stream.watchers:
            stream.push(Response(INVALID_WATCH_ID, self.rev))

    # ------------------------------------------------------------ catch-up

    def sync_once(self) -> int:
        """Bring unsynced watchers forward from MVCC history.

        Returns how many watchers are still behind and could go on now (their
        stream is not full); the owner calls again at once while that is non-zero.

        The history is read without the lock; the lock is only held to hand the
        result over, and to close the gap to `notify` from recent revisions.
        """
        with self._lock:
            batch = [(w, w.min_rev) for w in self.unsynced if not w.stream.full]
            batch = batch[:MAX_WATCHERS_PER_SYNC]
        if not batch:
            return 0
        owed: dict[Watcher, list] = {}
        with self.store.read() as r:
            current, compacted = r.current_revision, r.compact_revision
            live = [(w, m) for w, m in batch if m >= compacted]
            if live:
                start = min(m for _, m in live)
                stop = min(current, start + self.max_revs_per_sync - 1)
                history = list(r.history(start, stop))
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
                        stream.push(Response(w.id, current, wevs, watcher=w))
                    w.min_rev = stop + 1
                    reached = stop
                if reached < current or not self._join(w, reached):
                    continue
                self._retry_deferred_progress(stream)
            return sum(1 for w in self.unsynced if not w.stream.full)

    def _join(self, w: Watcher, reached: int) -> bool:
        """Move a watcher that has everything up to `reached` into the synced group.

        Revisions `notify` saw after the history read are replayed from memory; if
        they are no longer there, the watcher stays unsynced for another round.
        """
        if reached < self.rev:
            gap = [(rev, evs) for rev, evs in self._recent if rev > reached]
            if not gap or gap[0][0] != reached + 1:
                w.min_rev = reached + 1
                return False
            for rev, evs in gap:
                wevs = w.filter([e for e in evs if w.matches(e.kv.key)])
                if wevs:
                    w.stream.push(Response(w.id, rev, wevs, watcher=w))
        w.min_rev = max(w.min_rev, self.rev + 1)
        self.unsynced.discard(w)
        w.state = SYNCED
        self.synced.add(w)
        return True


def _by_revision(events: list) -> Iterable[tuple[int, list]]:
    """Split revision-ordered events into (revision, events of that revision)."""
    group: list = []
    rev = 0
    for ev in events:
        r = ev.kv.mod_revision
        if r != rev and group:
            yield rev, group
            group = []
        rev = r
        group.append(ev)
    if group:
        yield rev, group


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
