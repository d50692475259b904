"""The raft log (kubekv_raft/driver/wal_storage.py) under power cuts: every write it
returned from is there after a cut, whatever the log was doing then.

The log is written in-process on a LazyFS mount (kubekv_testing/lazyfs.py), which keeps
what was not fsynced in memory and loses it at a cut.
"""

from __future__ import annotations

import random
import shutil

import pytest

from kubekv_testing.wal_rewrite_gate import hold_rewrite_at_first_sync


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
    gate, held = hold_rewrite_at_first_sync(monkeypatch)
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


def _log_state(s) -> tuple:  # noqa: ANN001 - a WALStorage
    """What a log holds, as a value: first and last index, every entry, hard state,
    snapshot (metadata and data) and ConfState."""
    first, last = s.first_index(), s.last_index()
    ents = [(e.index, e.term, e.type, e.data) for e in s.entries(first, last + 1)]
    snap = s.snapshot()
    return (first, last, s.term(first - 1), ents, s.hard_state().SerializeToString(),
            snap.SerializeToString(), s.conf_state().SerializeToString())


@pytest.mark.parametrize("seed", range(1, 9))
def test_wal_keeps_every_returned_write_at_every_crash_point(tmp_path, lazy_mounts,
                                                             monkeypatch, seed):
    """After every write call returns, what a power cut would leave (`durable_copy`) is
    recovered and must be the log that call left: its entries (appends, conflicting
    appends, compactions, snapshots taken and received), hard state and ConfState.
    Rewrites of the log's file run beside the writes (a small segment): some copies are
    taken while one is under way, some right after one switched files. Half the copies
    hold some of the pages not yet synced too, as the kernel's write-back may have left
    them. A commit-only hard state (`note_commit`, not synced) may be absent, the last
    synced one or a later commit-only one in its place."""
    from etcdproto.raftpb import raft_pb2 as raftpb
    from kubekv_raft.driver import wal_storage
    from kubekv_raft.driver.wal_storage import WALStorage

    rng = random.Random(seed)
    fs = lazy_mounts("disk")
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 4000)
    monkeypatch.setattr(wal_storage, "PREALLOC_BYTES", 1500)
    path = fs.mountpoint / "log"
    s = WALStorage(str(path))
    term, commit = 1, 0
    hards_since_sync = [s.hard_state().SerializeToString()]  # the hard states a cut may leave
    rewrites = copies_after_switch = 0
    try:
        for step in range(260):
            first, last = s.first_index(), s.last_index()
            synced = True
            roll = rng.random()
            if roll < 0.5 or last < first:  # append, with a hard state half the time
                n = rng.randint(1, 4)
                ents = [raftpb.Entry(index=last + k, term=term,
                                     data=rng.randbytes(rng.choice((5, 60, 900))))
                        for k in range(1, n + 1)]
                hs = None
                if rng.random() < 0.5:
                    commit = max(commit, min(last, commit + rng.randint(0, 3)))
                    hs = raftpb.HardState(term=term, vote=1, commit=commit)
                s.append(ents, hs)
            elif roll < 0.6 and last - commit >= 1:  # a new leader's entries replace a tail
                term += 1
                at = rng.randint(max(commit, first - 1) + 1, last)
                s.append([raftpb.Entry(index=at + k, term=term, data=b"t%d" % term)
                          for k in range(rng.randint(1, 3))],
                         raftpb.HardState(term=term, vote=2, commit=commit))
            elif roll < 0.7 and commit >= first:  # a snapshot, then the log compacted
                at = rng.randint(first, commit)
                if at > s.snapshot().metadata.index:
                    s.create_snapshot(at, raftpb.ConfState(voters=[1, 2, 3]),
                                      b"state@%d" % at)
                    s.compact(at)
            elif roll < 0.75:  # a snapshot from the leader replaces the log
                term += 1
                snap = raftpb.Snapshot(data=b"received@%d" % (last + 5))
                snap.metadata.index, snap.metadata.term = last + 5, term
                snap.metadata.conf_state.voters.extend([1, 2, 3])
                s.apply_snapshot(snap)
                commit = last + 5
                s.set_hard_state(raftpb.HardState(term=term, vote=3, commit=commit))
            elif roll < 0.8:
                s.set_conf_state(raftpb.ConfState(voters=[1, 2, 3], learners=[4 + step]))
            elif roll < 0.9 and commit < last:  # a commit-only hard state: no fsync
                commit += 1
                s.note_commit(raftpb.HardState(term=term, vote=s.hard_state().vote,
                                               commit=commit))
                synced = False
            else:
                s.set_hard_state(raftpb.HardState(term=term, vote=1, commit=commit))
            hard = s.hard_state().SerializeToString()
            hards_since_sync = [hard] if synced else [*hards_since_sync, hard]
            if s._rewriting is not None and rng.random() < 0.5:
                seq = s._seq
                s.wait_rewrite()  # the copy right after the switch: nothing written since
                rewrites += 1
                copies_after_switch += s._seq != seq
            want = _log_state(s)
            copy = tmp_path / f"cut-{step}"
            fs.durable_copy(copy, writeback=rng.choice((0.0, 0.5, 1.0)), seed=step)
            got_log = WALStorage(str(copy / "log"))
            try:
                got = _log_state(got_log)
            finally:
                got_log.close()
            if got[4] != want[4] and got[4] in hards_since_sync:  # a commit-only one lost
                got = got[:4] + (want[4],) + got[5:]
            assert got == want, f"seed {seed}: the log a cut after step {step} leaves"
            shutil.rmtree(copy)
    finally:
        s.close()
    assert copies_after_switch >= 3, (rewrites, copies_after_switch)  # the test saw them
