"""The watch hub as pure logic: a real MVCC store on a temporary LMDB, no sockets, no threads.

Writes go straight to the store and their events to `hub.notify`, as the committer
does; catch-up runs when the test calls `hub.sync_once()`.
"""

from __future__ import annotations

import lmdb
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import Event
from kubekv_server.api.watch import fragments
from kubekv_server.mvcc import MVCCStore
from kubekv_server.watch import INVALID_WATCH_ID, WatchHub
from kubekv_server.watch.hub import ERR_DUPLICATE_ID, ERR_EMPTY_RANGE, TAKE_MAX_BYTES


class World:
    def __init__(self, path, **hub_opts) -> None:
        self.env = lmdb.open(str(path), map_size=1 << 28, max_dbs=8)
        self.store = MVCCStore(self.env)
        self.hub = WatchHub(self.store, **hub_opts)

    def write(self, *ops, notify: bool = True) -> list:
        """ops: ("put", key, value) / ("del", key); one revision; returns its events."""
        with self.env.begin(write=True) as txn:
            w = self.store.write(txn)
            for op in ops:
                if op[0] == "put":
                    w.put(op[1], op[2])
                else:
                    w.delete_range(op[1], None)
            w.end()
            events = list(w.changes)
        if notify and events:  # one write txn: one revision (as BatchResult.revisions)
            self.hub.notify([(events[0].kv.mod_revision, events, w.changes_bytes)])
        return events

    def put(self, key: bytes, value: bytes = b"v", notify: bool = True) -> list:
        return self.write(("put", key, value), notify=notify)

    def compact(self, rev: int) -> None:
        with self.env.begin(write=True) as txn:
            self.store.compact(txn, rev)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path / "db")
    yield w
    w.env.close()


def drain(stream) -> list:
    out = []
    while (r := stream.pop(0)) is not None:
        out.append(r)
    return out


def evs(resp) -> list[tuple[str, bytes, int]]:
    return [(Event.EventType.Name(e.type), e.kv.key, e.kv.mod_revision) for e in resp.events]


def test_created_then_events_of_each_revision(world):
    hub = world.hub
    s = hub.new_stream()
    w = hub.watch(s, 0, b"a", b"b", 0)
    assert w.id == 0
    world.write(("put", b"a1", b"x"), ("put", b"a2", b"y"), ("put", b"c", b"z"))
    out = drain(s)
    world.put(b"zz")
    assert drain(s) == []
    world.write(("del", b"a1"))
    out += drain(s)
    assert out[0].created and out[0].revision == 1 and out[0].watch_id == 0
    assert [r.revision for r in out[1:]] == [2, 4]
    assert evs(out[1]) == [("PUT", b"a1", 2), ("PUT", b"a2", 2)]
    assert evs(out[2]) == [("DELETE", b"a1", 4)]


def test_a_stream_not_read_gets_each_watchers_missed_revisions_in_one_response(world):
    """Delivery is pulled when the client can take more: what a slow stream missed
    arrives as one response per watcher (whole revisions, in order), like etcd's
    catch-up responses; a reader that keeps up gets one revision per response."""
    hub = world.hub
    s = hub.new_stream()
    a = hub.watch(s, 0, b"a", b"b", 0)
    m = hub.watch(s, 0, b"m", None, 0, no_delete=True)
    late = None
    for i in range(5):
        world.write(("put", b"a-x%d" % i, b"v"), ("put", b"a-y%d" % i, b"v"), ("put", b"m", b"v"))
        if i == 2:
            late = hub.watch(s, 0, b"a", b"b", 0)  # starts after revision 4
    world.write(("del", b"m"))
    out = drain(s)
    assert [r.created for r in out[:3]] == [True] * 3
    by_id = {r.watch_id: r for r in out[3:]}
    assert len(out) == 6 and set(by_id) == {a.id, m.id, late.id}
    assert [e.kv.key for e in by_id[a.id].events] == [
        k for i in range(5) for k in (b"a-x%d" % i, b"a-y%d" % i)]
    assert [e.kv.mod_revision for e in by_id[late.id].events] == [5, 5, 6, 6]
    assert [(e.type, e.kv.mod_revision) for e in by_id[m.id].events] == [
        (Event.PUT, r) for r in range(2, 7)]  # the DELETE filtered out
    assert {r.revision for r in out[3:]} == {7}  # the newest revision pulled
    world.put(b"a1")
    assert [(r.watch_id, evs(r)) for r in drain(s)] == [(a.id, [("PUT", b"a1", 8)]),
                                                       (late.id, [("PUT", b"a1", 8)])]


def test_single_key_from_key_and_filters(world):
    hub = world.hub
    s = hub.new_stream()
    one = hub.watch(s, 0, b"k", None, 0)
    from_key = hub.watch(s, 0, b"m", b"", 0, no_put=True)
    no_del = hub.watch(s, 0, b"k", None, 0, no_delete=True)
    assert (one.id, from_key.id, no_del.id) == (0, 1, 2)
    got = []
    for op in [("put", b"k", b"v"), ("put", b"zzz", b"v"), ("del", b"k"), ("del", b"zzz")]:
        world.write(op)
        got += [(r.revision, r.watch_id, evs(r)) for r in drain(s) if not r.created]
    # the order of different watchers within one revision is unspecified (as in etcd)
    assert [g[1:] for g in sorted(got)] == [
        (0, [("PUT", b"k", 2)]),
        (2, [("PUT", b"k", 2)]),
        (0, [("DELETE", b"k", 4)]),
        (1, [("DELETE", b"zzz", 5)]),
    ]


def test_ids_duplicates_and_empty_range(world):
    hub = world.hub
    s = hub.new_stream()
    assert hub.watch(s, 1, b"a", None, 0).id == 1
    assert hub.watch(s, 1, b"a", None, 0) is None
    assert hub.watch(s, 0, b"b", b"a", 0) is None
    assert hub.watch(s, 0, b"a", None, 0).id == 0
    assert hub.watch(s, 0, b"a", None, 0).id == 2  # skips the client's 1
    out = drain(s)
    assert [(r.watch_id, r.canceled, r.cancel_reason) for r in out] == [
        (1, False, ""),
        (INVALID_WATCH_ID, True, ERR_DUPLICATE_ID),
        (INVALID_WATCH_ID, True, ERR_EMPTY_RANGE),
        (0, False, ""),
        (2, False, ""),
    ]
    assert all(r.created for r in out)


def test_cancel(world):
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"a", None, 0)
    world.put(b"a")
    assert hub.cancel(s, 0)
    assert not hub.cancel(s, 0)  # unknown id: no response, as etcd
    world.put(b"a")
    out = drain(s)
    assert [(r.created, r.canceled, r.revision, len(r.events)) for r in out] == [
        (True, False, 1, 0), (False, False, 2, 1), (False, True, 2, 0)]


def test_start_revision_catches_up_from_history(world):
    for i in range(5):
        world.put(b"h", str(i).encode())  # revisions 2..6
    hub = world.hub
    s = hub.new_stream()
    w = hub.watch(s, 0, b"h", None, 3, prev_kv=True)
    assert w.state == "unsynced"
    world.put(b"h", b"late")  # rev 7 arrives while unsynced: not delivered by notify
    assert hub.sync_once() == 0
    assert w.state == "synced"
    world.put(b"h", b"synced")  # rev 8
    out = drain(s)
    assert out[0].created and out[0].revision == 6
    assert out[1].revision == 7 and [e.kv.mod_revision for e in out[1].events] == [3, 4, 5, 6, 7]
    assert out[1].events[0].prev_kv.mod_revision == 2  # prev_kv read from history
    assert [e.kv.mod_revision for e in out[2].events] == [8]


def test_compacted_start_revision_cancels_with_compact_revision(world):
    for i in range(4):
        world.put(b"c", str(i).encode())
    world.compact(4)
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"c", None, 3)
    ok = hub.watch(s, 0, b"c", None, 4)
    hub.sync_once()
    out = drain(s)
    assert out[0].created and out[1].created
    gone = [r for r in out if r.canceled]
    assert [(r.watch_id, r.compact_revision, r.revision) for r in gone] == [(0, 4, 0)]
    assert [e.kv.mod_revision for r in out if r.watch_id == ok.id for e in r.events] == [4, 5]
    assert hub.cancel(s, 0)  # the id stays taken after a compaction cancel, as in etcd


def test_stream_behind_the_log_is_demoted_and_catches_up_without_gaps(tmp_path):
    world = World(tmp_path / "db", recent_revisions=3)
    hub = world.hub
    slow = hub.new_stream()
    fast = hub.new_stream()
    ws = hub.watch(slow, 0, b"k", b"l", 0)
    hub.watch(fast, 0, b"k", b"l", 0)
    fast_revs = []
    for i in range(10):
        world.put(b"k%d" % i)
        fast_revs += [e.kv.mod_revision for r in drain(fast) for e in r.events]
    assert slow.pending() == 1  # the created response only: the committer queued nothing
    got = drain(slow)
    assert ws.state == "unsynced"  # the log no longer reaches back to revision 2
    while True:
        got.extend(drain(slow))
        if hub.sync_once() == 0 and slow.pending() == 0 and ws.state == "synced":
            break
    world.put(b"k-after")
    got.extend(drain(slow))
    revs = [e.kv.mod_revision for r in got for e in r.events]
    assert revs == list(range(2, 13))
    fast_revs += [e.kv.mod_revision for r in drain(fast) for e in r.events]
    assert fast_revs == list(range(2, 13))


def test_joining_a_stream_ahead_of_the_watcher_pushes_the_gap_from_the_log(world):
    hub = world.hub
    s = hub.new_stream()
    world.put(b"j")  # rev 2
    ahead = hub.watch(s, 0, b"j", None, 0)
    behind = hub.watch(s, 0, b"j", None, 2)
    real_read = world.store.read

    def read_then_commit():
        r = real_read()
        world.put(b"j", b"during")  # rev 3: notified after the history snapshot
        drain(s)  # ...and already pulled by the stream's synced watcher
        world.store.read = real_read
        return r

    world.store.read = read_then_commit
    hub.sync_once()
    assert behind.state == "synced" and s.pos == 3
    world.put(b"j", b"after")  # rev 4
    got = [(r.watch_id, [e.kv.mod_revision for e in r.events]) for r in drain(s)]
    assert got == [(behind.id, [2]), (behind.id, [3]), (ahead.id, [4]), (behind.id, [4])]


def test_join_replays_revisions_notified_after_the_history_read(world):
    hub = world.hub
    world.put(b"g")
    s = hub.new_stream()
    w = hub.watch(s, 0, b"g", None, 2)
    # Revisions committed to the store but not yet notified when the history is read...
    real_read = world.store.read

    def read_then_commit():
        r = real_read()
        world.put(b"g", b"during")  # notify runs after the snapshot was taken
        world.store.read = real_read
        return r

    world.store.read = read_then_commit
    hub.sync_once()
    assert w.state == "synced"
    got = [e.kv.mod_revision for r in drain(s) for e in r.events]
    assert got == [2, 3]


def test_progress_all_waits_for_every_watcher_to_be_synced(world):
    world.put(b"p")
    hub = world.hub
    s = hub.new_stream()
    hub.progress_all(s)
    assert drain(s) == []  # no watchers: nothing, as etcd 3.5
    hub.watch(s, 0, b"p", None, 0)
    hub.watch(s, 0, b"p", None, 2)
    drain(s)
    hub.progress_all(s)
    assert drain(s) == []  # deferred: one watcher is still catching up
    hub.sync_once()
    out = drain(s)
    assert [(r.watch_id, r.revision, len(r.events)) for r in out] == [(1, 2, 1), (-1, 2, 0)]


def test_progress_only_for_synced_watchers(world):
    hub = world.hub
    world.put(b"x")
    s = hub.new_stream()
    synced = hub.watch(s, 0, b"x", None, 0, progress_notify=True)
    behind = hub.watch(s, 0, b"x", None, 1, progress_notify=True)
    drain(s)
    hub.progress(synced)
    hub.progress(behind)
    assert [(r.watch_id, r.revision, r.events) for r in drain(s)] == [(0, 2, [])]


def test_progress_never_reports_less_than_the_client_already_has(world):
    """A watch resumed on a member that has not applied as far as its client has seen
    (etcd-io/etcd#20221): no progress notification reports a revision below its start
    revision - 1, and a requested one waits until the member gets there."""
    hub = world.hub
    world.put(b"a")  # revision 2
    s = hub.new_stream()
    w = hub.watch(s, 0, b"k", None, 5, progress_notify=True)  # the client has seen 4
    drain(s)
    hub.progress(w)
    hub.progress_all(s)
    world.put(b"a")  # 3
    hub.progress(w)
    assert drain(s) == []  # the member is at 2, then 3: below what the client has
    world.put(b"a")  # 4: the requested progress goes out now, at 4
    hub.progress(w)
    out = [(r.watch_id, r.revision, r.events) for r in drain(s)]
    assert out == [(-1, 4, []), (0, 4, [])]
    world.put(b"k")  # 5: the watch's first event
    assert [evs(r) for r in drain(s)] == [[("PUT", b"k", 5)]]
    quiet = hub.watch(s, 0, b"q", None, 6, progress_notify=True)  # from R+1 at R
    drain(s)
    hub.progress(quiet)
    assert [(r.watch_id, r.revision) for r in drain(s)] == [(1, 5)]  # as etcd 3.5.1


def test_close_stream_removes_watchers(world):
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"a", None, 0)
    hub.watch(s, 0, b"a", None, 1)
    hub.close_stream(s)
    assert len(hub.synced) == 0 and not hub.unsynced
    world.put(b"a")
    assert s.closed and s.pending() == 2  # the created responses only


def test_fragments_split_like_etcd():
    resp = pb.WatchResponse(watch_id=3)
    resp.header.revision = 9
    for i in range(10):
        ev = resp.events.add()
        ev.kv.key = b"k%d" % i
        ev.kv.value = b"x" * 100
        ev.kv.mod_revision = 9
    limit = 350
    parts = list(fragments(resp, limit))
    assert len(parts) > 1
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(p.ByteSize() < limit for p in parts)
    assert [e.kv.key for p in parts for e in p.events] == [e.kv.key for e in resp.events]
    one = pb.WatchResponse()
    one.events.add().kv.value = b"x" * 1000
    assert list(fragments(one, limit)) == [one]  # a single event is never split


def test_progress_notification_comes_after_the_events_it_vouches_for(world):
    hub = world.hub
    s = hub.new_stream()
    a = hub.watch(s, 0, b"a", None, 0)
    drain(s)
    world.put(b"a")
    hub.progress(a)
    world.put(b"a")
    hub.progress_all(s)
    out = [(r.watch_id, r.revision, [e.kv.mod_revision for e in r.events]) for r in drain(s)]
    assert out == [(0, 2, [2]), (0, 2, []), (0, 3, [3]), (-1, 3, [])]


def test_cancel_delivers_what_was_committed_before_it(world):
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"a", None, 0)
    hub.watch(s, 0, b"a", None, 0)
    drain(s)
    world.put(b"a")
    hub.cancel(s, 0)
    world.put(b"a")
    out = [(r.watch_id, r.canceled, [e.kv.mod_revision for e in r.events]) for r in drain(s)]
    assert out == [(0, False, [2]), (1, False, [2]), (0, True, []), (1, False, [3])]


def test_progress_queued_before_a_restore_waits_for_the_catch_up(world):
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"r", None, 0)
    drain(s)
    world.put(b"r")  # rev 2: logged, not yet pulled
    hub.progress_all(s)  # queued at rev 2
    hub.restored()  # a snapshot was installed: every watcher catches up from history
    hub.sync_once()
    out = [(r.watch_id, r.revision, [e.kv.mod_revision for e in r.events]) for r in drain(s)]
    assert out == [(0, 2, [2]), (-1, 2, [])]


def test_log_is_bounded_in_revisions_and_bytes(tmp_path):
    world = World(tmp_path / "db", recent_revisions=8, recent_bytes=3000)
    hub = world.hub
    s = hub.new_stream()
    w = hub.watch(s, 0, b"b", b"c", 0)
    for i in range(20):
        world.put(b"b%d" % i, b"x" * 10)
    assert 8 <= len(hub._log) <= 9  # trimmed once over by a 64th (at least one revision)
    assert hub._log_first + len(hub._log) - 1 == hub.rev
    for i in range(6):
        world.put(b"b-big%d" % i, b"x" * 1000)  # ~1 KB each: the byte budget binds
    assert sum(e[2] for e in hub._log) == hub._log_bytes <= 3000 + 3000 // 64
    assert hub._log[-1][0] == hub.rev
    drain(s)  # the stream is behind the log: its watcher catches up from history
    assert w.state == "unsynced"
    got = []
    while hub.sync_once() or w.state != "synced":
        got += drain(s)
    got += drain(s)
    assert [e.kv.mod_revision for r in got for e in r.events] == list(range(2, 28))


def test_no_log_without_watchers_and_a_late_watcher_misses_nothing(world):
    hub = world.hub
    for i in range(5):
        world.put(b"k", str(i).encode())  # revisions 2..6, nobody watching
    assert hub._log == [] and hub._log_first == hub.rev + 1 == 7
    s = hub.new_stream()
    w = hub.watch(s, 0, b"k", None, 4)  # from the past: catches up from history
    assert w.state == "unsynced"
    world.put(b"k", b"while unsynced")  # rev 7: logged, a watcher exists now
    assert [e[0] for e in hub._log] == [7]
    real_read = world.store.read

    def read_then_commit():
        r = real_read()
        world.put(b"k", b"after the read")  # rev 8, after the history snapshot
        world.store.read = real_read
        return r

    world.store.read = read_then_commit
    while hub.sync_once() or w.state != "synced":
        pass
    world.put(b"k", b"synced")  # rev 9
    got = [e.kv.mod_revision for r in drain(s) for e in r.events]
    assert got == [4, 5, 6, 7, 8, 9]
    hub.cancel(s, w.id)
    drain(s)
    world.put(b"k", b"alone again")  # no watcher left: the log is dropped
    assert hub._log == [] and hub._log_first == hub.rev + 1


def test_a_quiet_stream_is_not_demoted_by_a_busy_store(tmp_path):
    """Revisions nobody on a stream wants are skipped, not scanned: a watcher of a quiet
    key stays synced however much else was written since its stream last pulled."""
    world = World(tmp_path / "db", recent_revisions=3)
    hub = world.hub
    quiet, busy = hub.new_stream(), hub.new_stream()
    q = hub.watch(quiet, 0, b"q", None, 0)
    hub.watch(busy, 0, b"b", b"c", 0)
    drain(quiet)
    for i in range(20):
        world.put(b"b%d" % i)
        drain(busy)
    world.put(b"q")  # revision 22, long after the log dropped revision 2
    got = drain(quiet)
    assert q.state == "synced" and not hub.unsynced
    assert [(r.watch_id, [e.kv.mod_revision for e in r.events]) for r in got] == [(0, [22])]
    world.put(b"q")
    assert [e.kv.mod_revision for r in drain(quiet) for e in r.events] == [23]


def test_a_take_stops_at_its_byte_budget_and_the_next_goes_on_without_a_gap(world):
    """A stream far behind gets its backlog a TAKE_MAX_BYTES at a time, and revisions
    committed between two takes do not make it skip the rest of the backlog."""
    hub = world.hub
    s = hub.new_stream()
    hub.watch(s, 0, b"k", b"l", 0)
    assert drain(s)[0].created
    big = b"x" * (256 << 10)
    revs = [world.put(b"k%02d" % i, big)[0].kv.mod_revision for i in range(12)]
    first = s.pop_many(0, 64)
    got = [e.kv.mod_revision for r in first for e in r.events]
    assert got and got[-1] < revs[-1]  # 3 MiB of backlog: not all in one take
    assert sum(len(e.kv.value) for r in first for e in r.events) <= 2 * TAKE_MAX_BYTES
    revs.append(world.put(b"k99", b"late")[0].kv.mod_revision)
    for r in drain(s):
        got += [e.kv.mod_revision for e in r.events]
    assert got == revs


def test_catch_up_reads_history_a_bounded_number_of_bytes_at_a_time(tmp_path):
    """A watcher catching up from history gets responses of about CATCHUP_READ_BYTES, and
    its stream's queue stops taking catch-up at max_pending_bytes until it drains."""
    w = World(tmp_path / "db", catchup_read_bytes=100_000, max_pending_bytes=250_000)
    hub = w.hub
    big = b"x" * 40_000
    revs = [w.put(b"k%02d" % i, big)[0].kv.mod_revision for i in range(20)]
    s = hub.new_stream()
    hub.watch(s, 0, b"k", b"l", revs[0])
    while hub.sync_once():
        pass
    assert s.full  # 250 kB queued: the catch-up waits
    queued = list(s._out)
    assert [len(r.events) for r in queued[1:]] == [3, 3, 3]  # past 100 kB at a boundary
    got = []
    for _ in range(20):
        for r in drain(s):
            got += [e.kv.mod_revision for e in r.events]
        if not hub.sync_once() and not s.pending():
            break
    assert got == revs
    w.env.close()
