"""One test body for every storage: the log conflict rule, compaction, snapshots, reopen;
then what only the write-ahead log has (torn tails, rewrites, a failed write)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver import wal_storage
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.wal_storage import WALCorruptError, WALStorage
from kubekv_testing.wal_rewrite_gate import hold_rewrite_at_first_sync


def ents(*pairs: tuple[int, int]) -> list[pb.Entry]:
    """Entries from (index, term) pairs, with data naming both."""
    return [pb.Entry(index=i, term=t, data=f"{i}/{t}".encode()) for i, t in pairs]


class Factory:
    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.path = str(tmp_path / "raft")
        self.store = self.open()

    def open(self):
        if self.kind == "memory":
            return MemoryStorage()
        if self.kind == "wal":
            return WALStorage(self.path)
        return LMDBStorage(self.path, map_size=1 << 26)

    def reopen(self):
        """On disk: close and open again from disk. Memory: the same object."""
        if self.kind != "memory":
            self.store.close()
            self.store = self.open()
        return self.store


@pytest.fixture(params=["memory", "lmdb", "wal"])
def fx(request, tmp_path):
    f = Factory(request.param, tmp_path)
    yield f
    f.store.close()


def test_empty(fx):
    s = fx.store
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    assert s.entries(1, 1) == []
    hs, cs = s.initial_state()
    assert hs == pb.HardState() and cs == pb.ConfState()
    with pytest.raises(UnavailableError):
        s.term(1)
    with pytest.raises(UnavailableError):
        s.entries(1, 2)
    with pytest.raises(CompactedError):
        s.entries(0, 1)


def test_append_and_read(fx):
    s = fx.store
    s.append(ents((1, 1), (2, 1), (3, 2)), pb.HardState(term=2, vote=3, commit=2))
    assert (s.first_index(), s.last_index()) == (1, 3)
    assert [s.term(i) for i in (1, 2, 3)] == [1, 1, 2]
    assert s.entries(1, 4) == ents((1, 1), (2, 1), (3, 2))
    assert s.entries(2, 3) == ents((2, 1))
    assert s.hard_state() == pb.HardState(term=2, vote=3, commit=2)
    s = fx.reopen()
    assert s.entries(1, 4) == ents((1, 1), (2, 1), (3, 2))
    assert s.hard_state() == pb.HardState(term=2, vote=3, commit=2)
    assert s.initial_state()[0] == pb.HardState(term=2, vote=3, commit=2)


def test_max_size_keeps_at_least_one(fx):
    s = fx.store
    s.append(ents(*((i, 1) for i in range(1, 11))))
    one = ents((1, 1))[0].ByteSize()
    assert len(s.entries(1, 11, max_size=0)) == 1
    assert len(s.entries(1, 11, max_size=one * 3)) == 3
    assert len(s.entries(1, 11, max_size=one * 3 + 1)) == 3
    assert len(s.entries(1, 11, max_size=None)) == 10


def test_conflict_truncates(fx):
    s = fx.store
    s.append(ents((1, 1), (2, 1), (3, 1), (4, 1)))
    s.append(ents((3, 2)))
    assert s.last_index() == 3
    assert s.entries(1, 4) == ents((1, 1), (2, 1), (3, 2))
    s.append(ents((4, 2), (5, 2)))
    assert s.entries(3, 6) == ents((3, 2), (4, 2), (5, 2))
    with pytest.raises(ValueError):
        s.append(ents((9, 2)))
    s = fx.reopen()
    assert s.entries(1, 6) == ents((1, 1), (2, 1), (3, 2), (4, 2), (5, 2))


def test_compact(fx):
    s = fx.store
    s.append(ents(*((i, i) for i in range(1, 6))))
    s.compact(3)
    assert (s.first_index(), s.last_index()) == (4, 5)
    assert s.term(3) == 3
    with pytest.raises(CompactedError):
        s.term(2)
    with pytest.raises(CompactedError):
        s.entries(3, 5)
    with pytest.raises(CompactedError):
        s.compact(2)
    with pytest.raises(UnavailableError):
        s.compact(9)
    assert s.entries(4, 6) == ents((4, 4), (5, 5))
    # entries older than the compaction point are ignored on append
    s.append(ents((2, 2), (3, 3), (4, 7)))
    assert s.entries(4, 5) == ents((4, 7))
    s = fx.reopen()
    assert (s.first_index(), s.last_index(), s.term(3)) == (4, 4, 3)
    s.compact(4)
    assert (s.first_index(), s.last_index(), s.term(4)) == (5, 4, 7)
    s = fx.reopen()
    assert (s.first_index(), s.last_index(), s.term(4)) == (5, 4, 7)
    s.append(ents((5, 7)))
    assert s.entries(5, 6) == ents((5, 7))


def test_snapshots(fx):
    s = fx.store
    s.append(ents(*((i, 1) for i in range(1, 6))), pb.HardState(term=1, commit=5))
    cs = pb.ConfState(voters=[1, 2, 3])
    snap = s.create_snapshot(4, cs, b"state@4")
    assert snap.metadata.index == 4 and snap.metadata.term == 1
    assert s.snapshot() == snap
    with pytest.raises(SnapshotOutOfDateError):
        s.create_snapshot(3, cs, b"old")
    incoming = pb.Snapshot(data=b"state@10")
    incoming.metadata.index, incoming.metadata.term = 10, 3
    incoming.metadata.conf_state.CopyFrom(pb.ConfState(voters=[1, 2], learners=[4]))
    s.apply_snapshot(incoming)
    with pytest.raises(SnapshotOutOfDateError):
        s.apply_snapshot(incoming)
    for reopen in (False, True):
        st = fx.reopen() if reopen else s
        assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 3)
        assert st.snapshot() == incoming
        hs, cs2 = st.initial_state()
        assert hs.commit == 10 and list(cs2.learners) == [4]
    s = fx.store
    s.append(ents((11, 3)))
    s.set_hard_state(pb.HardState(term=3, vote=1, commit=11))
    s.set_conf_state(pb.ConfState(voters=[1, 2, 4]))
    s = fx.reopen()
    assert s.entries(11, 12) == ents((11, 3))
    hs, cs3 = s.initial_state()
    assert hs == pb.HardState(term=3, vote=1, commit=11) and list(cs3.voters) == [1, 2, 4]


@pytest.mark.parametrize("kind", ["lmdb", "wal"])
def test_writer_and_readers_in_threads(tmp_path, kind):
    """One writer thread appends while reader threads read; every read is consistent."""
    s = (LMDBStorage(str(tmp_path / "r"), map_size=1 << 26) if kind == "lmdb"
         else WALStorage(str(tmp_path / "r")))
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        for i in range(1, 201):
            s.append(ents((i, 1)), pb.HardState(term=1, commit=i))
        done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                last = s.last_index()
                if last:
                    assert s.entries(1, last + 1)[-1].index == last
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert s.last_index() == 200 and s.hard_state().commit == 200
    s.close()


def _wal_file(path) -> str:
    """The log's current file: the newest (a rewrite's old one may still be going, on a
    thread of its own; `close` waits for it)."""
    import os
    return os.path.join(path, max(n for n in os.listdir(path) if n.endswith(".wal")))


def test_wal_torn_tail_is_cut_and_the_acknowledged_prefix_kept(tmp_path):
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.append(ents((1, 1), (2, 1)), pb.HardState(term=1, commit=1))
    s.append(ents((3, 1)), pb.HardState(term=1, commit=2))
    size = s._size
    s.close()
    f = _wal_file(path)
    good = open(f, "rb").read()[:size]  # the records, without the preallocated tail
    for cut in (1, 5, 9, 20):  # a later write torn at several points
        with open(f, "wb") as out:
            out.write(good + wal_storage._record(2, b"\x00" * 40)[:cut])
        s = WALStorage(path)
        assert s.last_index() == 3 and s.hard_state() == pb.HardState(term=1, commit=2)
        s.append(ents((4, 1)))  # appends after the cut point, not after the garbage
        s.close()
        s = WALStorage(path)
        assert [e.index for e in s.entries(1, 5)] == [1, 2, 3, 4]
        s.close()
        with open(f, "wb") as out:
            out.write(good)


def test_wal_bad_crc_ends_the_log_there(tmp_path):
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.append(ents((1, 1)))
    size = s._size
    s.append(ents((2, 1)))
    s.close()
    f = _wal_file(path)
    data = bytearray(open(f, "rb").read())
    data[size + 12] ^= 0xFF  # a flipped byte in the second record's payload
    open(f, "wb").write(bytes(data))
    s = WALStorage(path)
    assert s.last_index() == 1
    s.close()


def test_wal_without_a_state_record_is_refused(tmp_path):
    path = tmp_path / "w"
    path.mkdir()
    (path / "0000000000000001.wal").write_bytes(b"garbage that is no record at all")
    with pytest.raises(WALCorruptError):
        WALStorage(str(path))


def _settle(s: WALStorage) -> None:
    """Until no rewrite is due or being written (rewrites run beside the writes)."""
    for _ in range(20):
        s.wait_rewrite()
        if s._size < wal_storage.SEGMENT_BYTES or s._size < 2 * s._live:
            return
        s.set_hard_state(s.hard_state())  # a write: starts the rewrite that is due
    raise AssertionError("the log never settled")


def _then_reopened(s: WALStorage, path: str) -> Iterator[WALStorage]:
    """`s`, then (once the caller has closed it) the log opened again from its files:
    one process at a time, as a member has it, so start-up's removal of older files
    never meets a rewrite's unlink of the same file."""
    yield s
    yield WALStorage(path)


def test_wal_rewrites_its_file_from_the_live_state(tmp_path, monkeypatch):
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 2000)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
    for i in range(1, 101):
        s.append([pb.Entry(index=i, term=1, data=b"x" * 50)], pb.HardState(term=1, commit=i))
        if i % 20 == 0:
            s.create_snapshot(i - 5, pb.ConfState(voters=[1, 2, 3]), b"snap")
            s.compact(i - 10)
    _settle(s)
    first_file = s._seq
    assert first_file > 1  # rewritten more than once
    assert s._size < 2 * 2000 + 2000
    s.close()
    import os
    assert len([n for n in os.listdir(path) if n.endswith(".wal")]) == 1
    s = WALStorage(path)
    assert (s.first_index(), s.last_index()) == (91, 100)
    assert s.hard_state() == pb.HardState(term=1, commit=100)
    assert s.snapshot().metadata.index == 95 and s.snapshot().data == b"snap"
    assert list(s.conf_state().voters) == [1, 2, 3]
    s.close()


def test_wal_rewrite_cut_short_leaves_the_old_file(tmp_path):
    path = tmp_path / "w"
    s = WALStorage(str(path))
    s.append(ents((1, 1)))
    s.close()
    (path / "0000000000000002.wal.tmp").write_bytes(b"half a rewrite")
    s = WALStorage(str(path))
    assert s.last_index() == 1 and not (path / "0000000000000002.wal.tmp").exists()
    s.close()


def test_wal_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.append(ents((1, 1)))
    real_write = wal_storage.os.pwrite
    calls = []

    def half_then_full(fd, data, offset):
        calls.append(1)
        if len(calls) == 1:
            real_write(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(28, "No space left on device")
        return real_write(fd, data, offset)

    monkeypatch.setattr(wal_storage.os, "pwrite", half_then_full)
    with pytest.raises(OSError):
        s.append(ents((2, 1)))
    assert s.last_index() == 1  # memory follows only durable writes
    assert os.path.getsize(_wal_file(path)) == s._size  # the half record and the tail
    s.append(ents((2, 2)))
    assert os.path.getsize(_wal_file(path)) == s._size + wal_storage.PREALLOC_BYTES
    monkeypatch.undo()
    s.close()
    s = WALStorage(path)
    assert [(e.index, e.term) for e in s.entries(1, 3)] == [(1, 1), (2, 2)]
    s.close()


def test_wal_note_commit_is_written_without_a_sync_and_read_back(tmp_path, monkeypatch):
    """A commit-only hard state reaches the file (a process crash keeps it) without an
    fdatasync (etcd syncs a HardState only when MustSync)."""
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.append(ents((1, 1), (2, 1)), pb.HardState(term=1, vote=1, commit=0))
    syncs = []
    monkeypatch.setattr(wal_storage.os, "fdatasync", lambda fd: syncs.append(fd))
    s.note_commit(pb.HardState(term=1, vote=1, commit=2))
    assert syncs == []
    assert s.hard_state().commit == 2
    monkeypatch.undo()
    s.close()
    s = WALStorage(path)  # reopened as after kill -9: the record is in the file
    assert s.hard_state() == pb.HardState(term=1, vote=1, commit=2)
    s.close()


def test_wal_empty_file_is_an_empty_log_and_gets_its_state_first(tmp_path):
    path = tmp_path / "w"
    path.mkdir()
    (path / "0000000000000003.wal").write_bytes(b"")  # a cut under --unsafe-no-fsync
    s = WALStorage(str(path))
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert (path / "0000000000000003.wal").stat().st_size == 0  # nothing written yet
    s.append(ents((1, 1)), pb.HardState(term=1, commit=1))
    s.close()
    s = WALStorage(str(path))
    assert s.last_index() == 1 and s.hard_state().commit == 1
    s.close()


def test_wal_is_preallocated_and_its_zero_tail_ends_the_log(tmp_path):
    """Records go into space the file already has (an fdatasync then commits no new size):
    the file runs PREALLOC_BYTES past them, zeros, and replay ends at those zeros."""
    path = str(tmp_path / "w")
    s = WALStorage(path)
    s.append(ents((1, 1), (2, 1)), pb.HardState(term=1, commit=1))
    f = _wal_file(path)
    size = s._size
    assert os.path.getsize(f) == size + wal_storage.PREALLOC_BYTES
    s.note_commit(pb.HardState(term=1, commit=2))
    assert os.path.getsize(f) == size + wal_storage.PREALLOC_BYTES  # within the tail
    s.close()
    data = open(f, "rb").read()
    assert data[s._size:].count(0) == len(data) - s._size
    s = WALStorage(path)
    assert s.last_index() == 2 and s.hard_state() == pb.HardState(term=1, commit=2)
    s.append(ents((3, 1)))  # after the records, not after the tail
    s.close()
    s = WALStorage(path)
    assert [e.index for e in s.entries(1, 4)] == [1, 2, 3]
    s.close()


def test_wal_grows_its_preallocation_and_keeps_it_through_a_rewrite(tmp_path, monkeypatch):
    monkeypatch.setattr(wal_storage, "PREALLOC_BYTES", 1000)
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 4000)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    for i in range(1, 101):
        s.append([pb.Entry(index=i, term=1, data=b"x" * 50)], pb.HardState(term=1, commit=i))
        assert s._size <= s._alloc == os.path.getsize(_wal_file(path)) <= s._size + 1100
        if i % 40 == 0:
            s.compact(i - 5)
    _settle(s)  # the rewrite writes its file on a thread of its own
    assert s._seq > 1  # rewritten
    s.close()
    s = WALStorage(path)
    assert (s.first_index(), s.last_index()) == (76, 100)
    s.close()


def test_wal_old_file_already_gone_or_not_removable_is_no_error(tmp_path, caplog):
    """A rewrite's old file, removed on a thread of its own: gone already is done; any
    other failure is one log line (the content is in the new file; start-up removes it)."""
    WALStorage._unlink_old(str(tmp_path / "0000000000000001.wal"))  # never there
    stuck = tmp_path / "0000000000000002.wal"
    stuck.mkdir()  # unlink(2) refuses a directory
    with caplog.at_level("WARNING", logger=wal_storage.__name__):
        WALStorage._unlink_old(str(stuck))
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=wal_unlink_failed"]
    assert stuck.exists()


def test_wal_without_fsync_is_not_preallocated(tmp_path):
    path = str(tmp_path / "w")
    s = WALStorage(path, fsync=False)
    s.append(ents((1, 1)))
    assert os.path.getsize(_wal_file(path)) == s._size
    s.close()


def test_wal_file_of_zeros_is_refused(tmp_path):
    """Every file is created whole with a synced STATE record before its tail is
    preallocated, so zeros from the start are not a log this wrote: refused, not read
    as an empty log (a member would come back empty)."""
    path = tmp_path / "w"
    path.mkdir()
    (path / "0000000000000002.wal").write_bytes(bytes(4096))
    with pytest.raises(WALCorruptError, match="no valid state record"):
        WALStorage(str(path))


@pytest.mark.parametrize("bound", [("CACHE_BYTES", 500), ("CACHE_ENTRIES", 10)])
def test_wal_reads_entries_back_from_the_file_beyond_its_cache(tmp_path, monkeypatch, bound):
    """Either bound of the cache (bytes, or entries: the collector's work) evicts."""
    monkeypatch.setattr(wal_storage, *bound)
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 2000)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    for i in range(1, 201):
        s.append([pb.Entry(index=i, term=1 + i // 50, data=b"%d" % i * 20)])
        if i == 60:
            s.append([pb.Entry(index=55, term=9, data=b"conflict")])  # replaces 55..60
            s.append([pb.Entry(index=i, term=9, data=b"%d" % i * 20)
                      for i in range(56, 61)])
        if i == 100:
            s.compact(52)
    _settle(s)
    assert s._seq > 1  # the file was rewritten meanwhile: offsets moved with it
    assert sum(e is not None for e in s._ents) < 20  # most entries only in the file
    assert len(s._ents) - s._evict <= wal_storage.CACHE_ENTRIES

    def expect(i: int) -> tuple[int, bytes]:
        if i == 55:
            return 9, b"conflict"
        return (9 if 55 < i <= 60 else 1 + i // 50), b"%d" % i * 20

    for store in _then_reopened(s, path):
        got = store.entries(53, 201)
        assert [(e.term, e.data) for e in got] == [expect(i) for i in range(53, 201)]
        assert [store.term(i) for i in range(53, 201)] == [expect(i)[0] for i in range(53, 201)]
        assert 1 <= len(store.entries(53, 201, max_size=100)) < 10
        # entries() slices the cache from _evict on: all objects there, the same entries
        assert all(e is not None for e in store._ents[store._evict:])
        assert store._evict < len(store._ents) - 6
        assert [(e.term, e.data) for e in store.entries(195, 201)] == \
            [expect(i) for i in range(195, 201)]
        assert store.last_index() == store._ci + len(store._terms) == 200
        store.close()


def test_wal_writes_go_on_during_a_rewrite_and_land_in_the_new_file(tmp_path, monkeypatch):
    """A rewrite writes its file beside the log's writes (held here at its first sync):
    appends, a conflict's replacement, a compaction and hard states made meanwhile are
    copied after its STATE record, read back from the new file, and replayed."""
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 3000)
    monkeypatch.setattr(wal_storage, "CACHE_ENTRIES", 4)  # reads come from the file
    gate, held = hold_rewrite_at_first_sync(monkeypatch)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    data = {}

    def put(i: int, term: int, tag: bytes = b"") -> None:
        data[i] = (term, b"%d-%d%s" % (i, term, tag) * 8)
        s.append([pb.Entry(index=i, term=term, data=data[i][1])],
                 pb.HardState(term=term, commit=i - 1))

    i = 0
    while not held.is_set():  # until a rewrite is writing its file
        i += 1
        put(i, 1)
        if i % 25 == 0:
            s.compact(i - 20)
        assert i < 500
    seq, at_start = s._seq, i
    for j in range(i + 1, i + 11):  # appends meanwhile
        put(j, 1)
    s.append([pb.Entry(index=i + 6, term=2, data=b"conflict")])  # replaces i+6..i+10
    data[i + 6] = (2, b"conflict")
    for j in range(i + 7, i + 12):
        data.pop(j, None)
        put(j, 2, b"new")
    s.compact(at_start - 5)  # drops entries the STATE record holds
    s.set_hard_state(pb.HardState(term=2, vote=3, commit=i + 8))
    assert s._seq == seq  # still the old file
    gate.set()
    s.wait_rewrite()
    assert s._seq == seq + 1
    first, last = at_start - 4, i + 11
    want = [(data[j][0], data[j][1]) for j in range(first, last + 1)]
    for store in (s, None):
        if store is None:
            s.close()
            store = WALStorage(path)
        assert (store.first_index(), store.last_index()) == (first, last)
        assert [(e.term, e.data) for e in store.entries(first, last + 1)] == want
        assert store.hard_state() == pb.HardState(term=2, vote=3, commit=i + 8)
    store.close()
    assert sorted(n for n in os.listdir(path) if n.endswith(".wal")) == \
        [f"{seq + 1:016x}.wal"]


def test_wal_rewrite_whose_rename_may_not_last_stops_the_log(tmp_path, monkeypatch):
    """The directory's fsync after a rewrite's rename fails: the new file is the log, but
    a power cut could bring the old one back, so no write is taken after it (the member
    stops, as on any failed fsync); what was written is all in the new file."""
    import threading
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 2000)
    real = wal_storage.fsync_dir

    def fsync_dir(path):
        if threading.current_thread().name == "kubekv-wal-rewrite":
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(wal_storage, "fsync_dir", fsync_dir)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    i = compacted = 0
    with pytest.raises(OSError, match="Input/output"):
        while True:
            i += 1
            s.append([pb.Entry(index=i, term=1, data=b"y" * 60)])
            if i % 10 == 0:
                compacted = i - 3
                s.compact(compacted)
            if s._rewriting is not None:
                s.wait_rewrite()
            assert i < 500
    assert s._seq == 2  # it did switch, and refused the next write
    s.close()
    s = WALStorage(path)
    assert (s.first_index(), s.last_index()) == (compacted + 1, i - 1)
    s.close()


def test_wal_files_are_synced_whole_before_they_become_the_log(tmp_path, monkeypatch):
    """The first file and a rewrite's file (its STATE record, then the records appended
    meanwhile) are synced with every byte in them before the rename makes them the log.
    Written through a buffered file object, a part shorter than its buffer reached the
    file only at close, after the fdatasync: a power cut before the log's next write lost
    the records appended during the rewrite, acknowledged ones among them."""
    monkeypatch.setattr(wal_storage, "SEGMENT_BYTES", 3000)
    synced: dict[str, int] = {}  # file name -> its size at its last fdatasync

    def note(fd: int) -> None:
        synced[os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))] = os.fstat(fd).st_size

    gate, held = hold_rewrite_at_first_sync(monkeypatch, note)
    path = str(tmp_path / "w")
    s = WALStorage(path)
    first = f"{1:016x}.wal"
    assert synced[first + ".tmp"] == os.path.getsize(os.path.join(path, first)) > 0
    i = 0
    while not held.is_set():  # until a rewrite is writing its file
        i += 1
        s.append([pb.Entry(index=i, term=1, data=b"e%d" % i * 10)])
        if i % 25 == 0:
            s.compact(i - 20)
        assert i < 500
    seq = s._seq
    for j in range(i + 1, i + 4):  # a short tail: three records appended meanwhile
        s.append([pb.Entry(index=j, term=1, data=b"e%d" % j * 10)])
    gate.set()
    s.wait_rewrite()
    assert s._seq == seq + 1
    name = f"{seq + 1:016x}.wal"
    assert synced[name + ".tmp"] == os.path.getsize(os.path.join(path, name)) == s._size
    s.close()
