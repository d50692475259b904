"""Durable Raft state in an LMDB environment of its own: the log, hard state, conf state
and snapshot metadata.

`LMDBStorage` implements the core's `Storage` (kubekv_raft/core/storage.py) and fsyncs once
per write call, so a Ready batch costs one fsync (group commit). It keeps the same
compaction point as MemoryStorage.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from kubekv_raft.driver.durable_dirs import fsync_dir, make_dirs

__all__ = ["LMDBStorage"]


_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_K_HARD = b"hard_state"
_K_CONF = b"conf_state"
_K_SNAP_META = b"snapshot_meta"
_K_SNAP_DATA = b"snapshot_data"
_K_COMPACTED = b"compacted"  # (index, term) of the last discarded entry


class LMDBStorage:
    """Storage in its own LMDB environment; each write call is one fsynced transaction.

    Safe for one writer thread and any number of reader threads: every call opens
    its own LMDB transaction, and LMDB serialises writers.
    """

    def __init__(self, path: str, map_size: int = 64 << 30, fsync: bool = True) -> None:
        import lmdb  # storage is I/O; the pure core never imports this module

        self.path = path
        make_dirs(path, sync=fsync)
        created = not os.path.exists(os.path.join(path, "data.mdb"))
        self._env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=4,
            lock=True,
            sync=fsync,  # False only for etcd's --unsafe-no-fsync
            metasync=fsync,
            writemap=False,
            subdir=True,
        )
        if created and fsync:  # the new files' names (LMDB syncs their data, not these)
            fsync_dir(path)
        self._entries = self._env.open_db(b"entries")
        self._meta = self._env.open_db(b"meta")
        # called with the seconds each fsynced write took (metrics)
        self.on_sync: Callable[[float], None] | None = None
        # first_index() and last_index() as of the last committed write: Raft asks for
        # them on every proposal and Ready, and only this object's writes change them
        with self._env.begin() as txn:
            self._first = self._compacted(txn)[0] + 1
            self._last_index = self._last(txn)

    @contextlib.contextmanager
    def _write(self):  # type: ignore[no-untyped-def]
        """A write transaction; committing it is one fsync, timed for `on_sync`."""
        start = time.perf_counter()
        with self._env.begin(write=True) as txn:
            yield txn
        if self.on_sync is not None:
            self.on_sync(time.perf_counter() - start)

    # -- helpers -----------------------------------------------------------
    def _get_meta(self, txn, key: bytes, cls):  # type: ignore[no-untyped-def]
        raw = txn.get(key, db=self._meta)
        m = cls()
        if raw is not None:
            m.ParseFromString(raw)
        return m

    def _compacted(self, txn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        raw = txn.get(_K_COMPACTED, db=self._meta)
        return _U64x2.unpack(raw) if raw is not None else (0, 0)

    def _last(self, txn) -> int:  # type: ignore[no-untyped-def]
        cur = txn.cursor(db=self._entries)
        if cur.last():
            return _U64.unpack(cur.key())[0]
        return self._compacted(txn)[0]

    # -- read side ---------------------------------------------------------
    def initial_state(self) -> tuple[pb.HardState, pb.ConfState]:
        """Hard state and membership to restart from."""
        with self._env.begin() as txn:
            return (
                self._get_meta(txn, _K_HARD, pb.HardState),
                self._get_meta(txn, _K_CONF, pb.ConfState),
            )

    def hard_state(self) -> pb.HardState:
        """The last hard state written."""
        with self._env.begin() as txn:
            return self._get_meta(txn, _K_HARD, pb.HardState)

    def conf_state(self) -> pb.ConfState:
        """The last membership written."""
        with self._env.begin() as txn:
            return self._get_meta(txn, _K_CONF, pb.ConfState)

    def first_index(self) -> int:
        """Index of the first entry still held."""
        return self._first

    def last_index(self) -> int:
        """Index of the last entry held."""
        return self._last_index

    def term(self, i: int) -> int:
        """Term of entry i (the compaction point's term for i == first_index() - 1)."""
        with self._env.begin() as txn:
            ci, ct = self._compacted(txn)
            if i < ci:
                raise CompactedError(f"index {i} compacted (first is {ci + 1})")
            if i == ci:
                return ct
            raw = txn.get(_U64.pack(i), db=self._entries)
            if raw is None:
                raise UnavailableError(f"index {i} past last {self._last(txn)}")
            e = pb.Entry()
            e.ParseFromString(raw)
            return e.term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[pb.Entry]:
        """Entries [lo, hi), size-limited but never empty when lo < hi."""
        with self._env.begin() as txn:
            ci, _ = self._compacted(txn)
            if lo <= ci:
                raise CompactedError(f"index {lo} compacted (first is {ci + 1})")
            last = self._last(txn)
            if hi > last + 1:
                raise UnavailableError(f"entries up to {hi} asked, last is {last}")
            out: list[pb.Entry] = []
            if lo >= hi:
                return out
            size = 0
            cur = txn.cursor(db=self._entries)
            if not cur.set_key(_U64.pack(lo)):
                raise UnavailableError(f"entry {lo} missing")
            for key, raw in cur:
                if _U64.unpack(key)[0] >= hi:
                    break
                size += len(raw)
                if out and max_size is not None and size > max_size:
                    break
                e = pb.Entry()
                e.ParseFromString(raw)
                out.append(e)
            return out

    def snapshot(self) -> pb.Snapshot:
        """The most recent snapshot (metadata plus whatever data it was recorded with)."""
        with self._env.begin() as txn:
            snap = pb.Snapshot(data=txn.get(_K_SNAP_DATA, db=self._meta) or b"")
            snap.metadata.CopyFrom(self._get_meta(txn, _K_SNAP_META, pb.SnapshotMetadata))
            return snap

    # -- write side --------------------------------------------------------
    def append(self, entries: list[pb.Entry], hard_state: pb.HardState | None = None) -> None:
        """Append entries (replacing any at or after entries[0].index) and hard_state; one fsync."""
        last = self._last_index
        with self._write() as txn:
            if entries:
                ci, _ = self._compacted(txn)
                if entries[-1].index > ci:
                    if entries[0].index <= ci:
                        entries = entries[ci + 1 - entries[0].index :]
                    start = entries[0].index
                    last = self._last(txn)
                    if start > last + 1:
                        raise ValueError(f"gap: appending {start} after last {last}")
                    cur = txn.cursor(db=self._entries)
                    if start <= last and cur.set_range(_U64.pack(start)):
                        for key in list(cur.iternext(values=False)):
                            txn.delete(key, db=self._entries)
                    cur.putmulti(
                        ((_U64.pack(e.index), e.SerializeToString()) for e in entries),
                        append=True,
                    )
                    last = entries[-1].index
            if hard_state is not None:
                txn.put(_K_HARD, hard_state.SerializeToString(), db=self._meta)
        self._last_index = last  # once committed, as a reader's transaction would see it

    def set_hard_state(self, hs: pb.HardState) -> None:
        """Record term, vote and commit; one fsync."""
        with self._write() as txn:
            txn.put(_K_HARD, hs.SerializeToString(), db=self._meta)

    def set_conf_state(self, cs: pb.ConfState) -> None:
        """Record the membership to restart from; one fsync."""
        with self._write() as txn:
            txn.put(_K_CONF, cs.SerializeToString(), db=self._meta)

    def compact(self, index: int) -> None:
        """Discard entries <= index, keeping index's term as the new compaction point."""
        with self._write() as txn:
            ci, _ = self._compacted(txn)
            if index <= ci:
                raise CompactedError(f"index {index} already compacted")
            raw = txn.get(_U64.pack(index), db=self._entries)
            if raw is None:
                raise UnavailableError(f"compact {index} past last {self._last(txn)}")
            e = pb.Entry()
            e.ParseFromString(raw)
            cur = txn.cursor(db=self._entries)
            doomed = []
            if cur.first():
                for key in cur.iternext(values=False):
                    if _U64.unpack(key)[0] > index:
                        break
                    doomed.append(key)
            for key in doomed:
                txn.delete(key, db=self._entries)
            txn.put(_K_COMPACTED, _U64x2.pack(index, e.term), db=self._meta)
            # Everything up to the compaction point is committed (only applied entries are
            # compacted); a commit index written lazily (Runner) may lag it: raise it, or a
            # restart would find the commit below the log's first index.
            hs = self._get_meta(txn, _K_HARD, pb.HardState)
            if hs.commit < index:
                hs.commit = index
                txn.put(_K_HARD, hs.SerializeToString(), db=self._meta)
        self._first = index + 1

    def create_snapshot(
        self, index: int, conf_state: pb.ConfState | None = None, data: bytes = b""
    ) -> pb.Snapshot:
        """Record a snapshot of the application's state as of applied index `index`.

        `data` may be the state itself or a handle the transport resolves to a stream.
        """
        with self._write() as txn:
            old = self._get_meta(txn, _K_SNAP_META, pb.SnapshotMetadata)
            if index <= old.index:
                raise SnapshotOutOfDateError(f"snapshot {index} not newer")
            ci, ct = self._compacted(txn)
            if index == ci:
                term = ct
            else:
                raw = txn.get(_U64.pack(index), db=self._entries)
                if raw is None or index < ci:
                    raise UnavailableError(f"snapshot {index} not in the log")
                e = pb.Entry()
                e.ParseFromString(raw)
                term = e.term
            snap = pb.Snapshot(data=data)
            snap.metadata.index = index
            snap.metadata.term = term
            if conf_state is not None:
                snap.metadata.conf_state.CopyFrom(conf_state)
            txn.put(_K_SNAP_META, snap.metadata.SerializeToString(), db=self._meta)
            txn.put(_K_SNAP_DATA, data, db=self._meta)
            if conf_state is not None:
                txn.put(_K_CONF, conf_state.SerializeToString(), db=self._meta)
            return snap

    def apply_snapshot(self, snapshot: pb.Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader; one fsync."""
        md = snapshot.metadata
        with self._write() as txn:
            old = self._get_meta(txn, _K_SNAP_META, pb.SnapshotMetadata)
            ci, _ = self._compacted(txn)
            if md.index <= old.index or md.index <= ci:
                raise SnapshotOutOfDateError(f"snapshot {md.index} not newer")
            txn.drop(self._entries, delete=False)
            txn.put(_K_COMPACTED, _U64x2.pack(md.index, md.term), db=self._meta)
            txn.put(_K_SNAP_META, md.SerializeToString(), db=self._meta)
            txn.put(_K_SNAP_DATA, snapshot.data, db=self._meta)
            txn.put(_K_CONF, md.conf_state.SerializeToString(), db=self._meta)
            hs = self._get_meta(txn, _K_HARD, pb.HardState)
            if hs.commit < md.index:
                hs.commit = md.index
                txn.put(_K_HARD, hs.SerializeToString(), db=self._meta)
        self._first = md.index + 1
        self._last_index = md.index

    def close(self) -> None:
        """Close the environment; the object is unusable afterwards."""
        self._env.close()
