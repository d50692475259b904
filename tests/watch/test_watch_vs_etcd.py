"""Watches opened from past revisions on a store nobody watched, side by side with etcd.

A member with no watcher keeps no in-memory log of recent revisions (`WatchHub.notify`):
a watcher created then catches up from MVCC history while writes go on, and the log
starts with it. The same writes and watches go to kubekv and to a real etcd 3.5; each
watch must deliver the same events (keys, values, revisions, versions, prev_kv).
"""

from __future__ import annotations

import threading

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import etcd_process, kubekv_process, running
from tests.watch.client import WatchStream

PREFIX = b"sbs/"


def _events(responses: list[pb.WatchResponse], watch_id: int) -> list[tuple]:
    out = []
    for r in responses:
        if r.watch_id != watch_id:
            continue
        for ev in r.events:
            kv, prev = ev.kv, ev.prev_kv
            out.append((ev.type, kv.key, kv.value, kv.create_revision, kv.mod_revision,
                        kv.version, prev.key, prev.value, prev.mod_revision))
    return out


def _write(kv, start: int, n: int) -> int:
    """n writes under PREFIX (puts over 7 keys, every fifth a delete); the last revision."""
    rev = 0
    for i in range(start, start + n):
        key = PREFIX + b"k%d" % (i % 7)
        if i % 5 == 4:
            rev = kv.DeleteRange(pb.DeleteRangeRequest(key=key)).header.revision or rev
        else:
            rev = kv.Put(pb.PutRequest(key=key, value=b"v%d" % i)).header.revision
    return rev


def _watch_until(stream: WatchStream, watch_id: int, last: int) -> list[tuple]:
    stream.wait(lambda rs: any(
        r.watch_id == watch_id and r.events and r.events[-1].kv.mod_revision >= last
        for r in rs), timeout=30)
    return _events(stream.responses, watch_id)


def _scenario(server) -> list[list[tuple]]:
    kv = server.kv
    _write(kv, 0, 40)  # nobody watches
    head = kv.Range(pb.RangeRequest(key=b"x")).header.revision
    stream = WatchStream(server.channel)
    got = []
    try:
        # a watch from the past, with writes going on while it catches up
        writer_done: list[int] = []
        writer = threading.Thread(target=lambda: writer_done.append(_write(kv, 40, 120)))
        stream.create(PREFIX, PREFIX[:-1] + b"0", start_revision=head - 25, prev_kv=True,
                      watch_id=1)
        writer.start()
        writer.join(60)
        assert writer_done, "writer did not finish"
        got.append(_watch_until(stream, 1, writer_done[0]))
        stream.cancel(1)
        stream.wait(lambda rs: any(r.watch_id == 1 and r.canceled for r in rs))
        # alone again: more writes, then a second watch from before them
        mid = kv.Range(pb.RangeRequest(key=b"x")).header.revision
        last = _write(kv, 160, 30)
        stream.create(PREFIX, PREFIX[:-1] + b"0", start_revision=mid - 3, watch_id=2)
        got.append(_watch_until(stream, 2, last))
        # and one from now, which hears only what follows
        stream.create(PREFIX, PREFIX[:-1] + b"0", watch_id=3)
        stream.wait(lambda rs: any(r.watch_id == 3 and r.created for r in rs))
        last = _write(kv, 190, 10)
        got.append(_watch_until(stream, 3, last))
    finally:
        stream.close()
    return got


@pytest.mark.timeout(180)
def test_watches_on_a_store_nobody_watched_match_etcd(tmp_path):
    with running(kubekv_process(tmp_path)) as ours:
        mine = _scenario(ours)
    with running(etcd_process(tmp_path)) as etcd:
        theirs = _scenario(etcd)
    assert [len(w) for w in mine] == [len(w) for w in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a == b
    assert len(mine[0]) > 100 and mine[0][0][4] < mine[0][-1][4]
