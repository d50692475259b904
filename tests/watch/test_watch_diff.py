"""Watch responses of kubekv and real etcd 3.5 side by side: same requests, same answers.

Compared: created/canceled flags, watch ids (server- and client-chosen), cancel
reasons, compact_revision, header revisions, events, prev_kv and fragments. The
order of different watches' responses within one revision is free in etcd (map
order), so responses are compared per watch id, plus the order of `created`.
"""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import etcd_process, kubekv_process
from tests.watch.client import WatchStream, by_watch, normalize

MAX_REQUEST_BYTES = "4096"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watchdiff")
    procs = [
        etcd_process(tmp, "--max-request-bytes", MAX_REQUEST_BYTES),
        kubekv_process(tmp, "--max-request-bytes", MAX_REQUEST_BYTES),
    ]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


def both(servers, scenario):
    results = [scenario(p) for p in servers]
    assert results[1] == results[0], _debug_dump(results)
    return results[0]


def base_revision(proc) -> int:
    return proc.kv.Range(pb.RangeRequest(key=b"x")).header.revision


def test_create_variants_ids_cancel_history_prev_kv(servers):
    def scenario(proc):
        kv = proc.kv
        pfx = b"s1/"
        r0 = base_revision(proc)
        for i in range(3):
            kv.Put(pb.PutRequest(key=pfx + b"a", value=str(i).encode()))
        ws = WatchStream(proc.channel)
        try:
            ws.create(pfx + b"a", start_revision=r0 + 1)
            ws.create(pfx + b"a", start_revision=r0 + 2, prev_kv=True)
            ws.create(pfx + b"a", watch_id=1)  # taken: duplicate id
            ws.create(pfx + b"b", range_end=pfx + b"a")  # empty range
            ws.create(pfx + b"a", watch_id=7, filters=[pb.WatchCreateRequest.NOPUT])
            ws.create(pfx, range_end=b"\x00", filters=[pb.WatchCreateRequest.NODELETE])
            # history is delivered asynchronously (etcd: within 100 ms)
            ws.wait(lambda rs: {r.watch_id for r in rs if r.events} == {0, 1})
            ws.cancel(0)
            ws.cancel(42)  # unknown: no answer
            ws.create(pfx, range_end=pfx[:-1] + b"0", prev_kv=True)  # prefix
            ws.wait(lambda rs: sum(r.created for r in rs) == 7 and any(r.canceled for r in rs))
            kv.Put(pb.PutRequest(key=pfx + b"a", value=b"new"))
            kv.DeleteRange(pb.DeleteRangeRequest(key=pfx + b"a"))
            ws.progress()
            out = ws.wait(lambda rs: any(r.watch_id == -1 and not r.created for r in rs))
        finally:
            ws.close()
        created = [normalize(r) for r in out if r.created]
        return created, by_watch(r for r in out if not r.created)

    created, per_watch = both(servers, scenario)
    assert len(created) == 7
    assert sorted(per_watch) == [-1, 0, 1, 2, 3, 7]


def test_compacted_start_revision(servers):
    def scenario(proc):
        kv = proc.kv
        r0 = base_revision(proc)
        for i in range(4):
            kv.Put(pb.PutRequest(key=b"s2/c", value=str(i).encode()))
        kv.Compact(pb.CompactionRequest(revision=r0 + 3))
        ws = WatchStream(proc.channel)
        try:
            ws.create(b"s2/c", start_revision=r0 + 1)
            ws.create(b"s2/c", start_revision=r0 + 3, prev_kv=True)
            out = ws.wait(lambda rs: any(r.canceled for r in rs) and len(rs) >= 4)
            ws.cancel(0)  # a compacted watch's id can still be canceled
            ws.create(b"s2/c", watch_id=0)  # ...and only then reused
            out = ws.wait_count(6)
        finally:
            ws.close()
        return [normalize(r).replace(str(r0), "R0") for r in out if r.created], by_watch(out)

    both(servers, scenario)


def test_long_keys(servers):
    """Keys past LMDB's key limit (kubekv stores them as prefix + digest) are watched by
    key and by prefix, from history and live, with prev_kv, as in etcd."""
    head = b"s7/" + b"h" * 500

    def scenario(proc):
        kv = proc.kv
        r0 = base_revision(proc)
        kv.Put(pb.PutRequest(key=head + b"b", value=b"1"))
        kv.Put(pb.PutRequest(key=head + b"a", value=b"1"))
        ws = WatchStream(proc.channel)
        try:
            ws.create(head + b"a")
            ws.create(head, range_end=head + b"c", prev_kv=True, start_revision=r0 + 1)
            ws.wait(lambda rs: sum(len(r.events) for r in rs) == 2)
            kv.Put(pb.PutRequest(key=head + b"a", value=b"2"))
            kv.Put(pb.PutRequest(key=head + b"c" * 900, value=b"outside"))
            kv.DeleteRange(pb.DeleteRangeRequest(key=head, range_end=head + b"c"))
            out = ws.wait(lambda rs: sum(len(r.events) for r in rs) == 7)
        finally:
            ws.close()
        return by_watch(out)

    both(servers, scenario)


def test_fragmented_revision(servers):
    def scenario(proc):
        kv = proc.kv
        # etcd fragments at --max-request-bytes + 512 KiB: 150 values of 3.8 kB exceed it
        for i in range(150):
            kv.Put(pb.PutRequest(key=b"s3/%03d" % i, value=b"v" * 3800))
        ws = WatchStream(proc.channel)
        try:
            ws.create(b"s3/", range_end=b"s30", fragment=True, prev_kv=True)
            ws.create(b"s3/", range_end=b"s30", prev_kv=True)
            ws.wait_count(2)
            kv.DeleteRange(pb.DeleteRangeRequest(key=b"s3/", range_end=b"s30"))
            out = ws.wait(lambda rs: sum(len(r.events) for r in rs) == 300)
        finally:
            ws.close()
        return by_watch(out)

    per_watch = both(servers, scenario)
    assert len(per_watch[0]) > 2  # created + several fragments
    assert len(per_watch[1]) == 2


def test_progress_notify_and_request_revisions(servers):
    def scenario(proc):
        kv = proc.kv
        ws = WatchStream(proc.channel)
        try:
            ws.create(b"s4/k", progress_notify=True)
            ws.wait_count(1)
            kv.Put(pb.PutRequest(key=b"s4/other", value=b"1"))
            rev = kv.Put(pb.PutRequest(key=b"s4/k", value=b"1")).header.revision
            ws.wait_count(2)
            kv.Put(pb.PutRequest(key=b"s4/other", value=b"2"))
            ws.progress()
            out = ws.wait_count(3)
        finally:
            ws.close()
        return [(r.watch_id, r.header.revision - rev, len(r.events)) for r in out]

    assert both(servers, scenario) == [(0, -2, 0), (0, 0, 1), (-1, 1, 0)]


def _debug_dump(results):  # pragma: no cover - used when a comparison fails
    import difflib
    import pprint
    a, b = (pprint.pformat(r, width=200).splitlines() for r in results)
    return "\n".join(difflib.unified_diff(a, b, "etcd", "kubekv", lineterm=""))


def test_a_slow_reader_gets_the_same_events_as_from_etcd(servers):
    """A reader that stalls after every response while 400 revisions are committed:
    response boundaries may differ (both servers batch a lagging watcher's revisions),
    the events, their order, values and prev_kv may not; every response holds whole
    revisions in order."""
    def scenario(proc):
        kv = proc.kv
        pfx = b"slow/"
        ws = WatchStream(proc.channel, delay=0.01)
        try:
            ws.create(pfx, range_end=b"slow0", prev_kv=True)
            ws.wait(lambda rs: any(r.created for r in rs))
            expected = 0
            for i in range(400):
                k = pfx + b"k%02d" % (i % 17)
                if i % 9 == 8:
                    expected += kv.DeleteRange(pb.DeleteRangeRequest(key=k)).deleted
                elif i % 13 == 12:
                    kv.Txn(pb.TxnRequest(success=[
                        pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"t%d" % i)),
                        pb.RequestOp(request_put=pb.PutRequest(key=k + b"x", value=b"u")),
                    ]))
                    expected += 2
                else:
                    kv.Put(pb.PutRequest(key=k, value=b"v%d" % i))
                    expected += 1
            out = ws.wait(lambda rs: sum(len(r.events) for r in rs) >= expected, timeout=60)
        finally:
            ws.close()
        events = []
        for r in out:
            revs = [e.kv.mod_revision for e in r.events]
            assert revs == sorted(revs) and (not revs or r.header.revision >= revs[-1])
            events += [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision, e.kv.version,
                        e.prev_kv.value, e.prev_kv.mod_revision) for e in r.events]
        base = events[0][3]
        return [(t, k, v, rev - base, ver, pv, prev - base if prev else 0)
                for t, k, v, rev, ver, pv, prev in events]

    events = both(servers, scenario)
    assert len(events) > 400
