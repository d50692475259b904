"""The raft log (kubekv_raft/driver/wal_storage.py) under power cuts: every write it
returned from is there after a cut, whatever the log was doing then.

The log is written in-process on a LazyFS mount (kubekv_testing/lazyfs.py), which keeps
what was not fsynced in memory and loses it at a cut.
"""

from __future__ import annotations

import threading


def test_wal_rewrite_then_a_power_cut(lazy_mounts, monkeypatch):
    """The log's file is rewritten while records are appended, and the power goes before
    the log's next write: every record the log wrote (synced before it returned) is there
    after the cut. The first power-loss soak of three members that failed ("tocommit out
    of range" on the cut follower) fits this: a rewrite's short tail of records reached
    its new file after the fdatasync, so the records it held were lost with the cut."""
    from etcdproto.raftpb import raft_pb2 as raftpb
    from kubekv_raft.driver import wal_storage
    from kubekv_raft.driver.wal_storage import WALStorage

    fs = lazy_mounts("disk")
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 3000)
    gate, held = threading.Event(), threading.Event()
    real_sync = wal_storage.os.fdatasync

    def sync(fd):
        if threading.current_thread().name == "kubekv-wal-rewrite" and not held.is_set():
            held.set()
            assert gate.wait(10)
        real_sync(fd)

    monkeypatch.setattr(wal_storage.os, "fdatasync", sync)
    path = str(fs.mountpoint / "log")
    s = WALStorage(path)
    i = 0
    while not held.is_set():  # until a rewrite is writing its file
        i += 1
        s.append([raftpb.Entry(index=i, term=1, data=b"e%d" % i * 10)],
                 raftpb.HardState(term=1, commit=i - 1))
        if i % 25 == 0:
            s.compact(i - 20)
        assert i < 500
    seq = s._seq
    for j in range(i + 1, i + 4):  # three records appended meanwhile
        s.append([raftpb.Entry(index=j, term=1, data=b"e%d" % j * 10)],
                 raftpb.HardState(term=1, commit=j - 1))
    gate.set()
    s.wait_rewrite()
    assert s._seq == seq + 1  # the rewrite's file is the log, and nothing written since
    first, last = s.first_index(), s.last_index()
    s.close()

    fs.power_cut()

    s = WALStorage(path)
    try:
        assert (s.first_index(), s.last_index()) == (first, last), "a cut lost log records"
        assert [e.data for e in s.entries(first, last + 1)] == \
            [b"e%d" % k * 10 for k in range(first, last + 1)]
        assert s.hard_state() == raftpb.HardState(term=1, commit=last - 1)
    finally:
        s.close()
