"""Durable Raft state in an append-only write-ahead log: one fdatasync per write call.

The shape of etcd's WAL (etcd-io/etcd server/storage/wal): CRC-checked records appended
to a file, replayed at start. Raft reads entries from memory: each entry's term and its
place in the file, and the newest `CACHE_BYTES` (at most `CACHE_ENTRIES`) of entries as
objects (what Raft reads to apply and replicate); an older one is read back from the
file (page cache). etcd keeps every entry since the last snapshot on its heap
(MemoryStorage); this keeps ~100 bytes per entry there. A write call (a Ready's entries
and hard state, a compaction, a snapshot) is one record batch and one `fdatasync`;
LMDBStorage pays two device flushes per commit (data pages, then the meta page), which
on the 2-core machines measured 0.42 ms against 0.19 ms for an append and fdatasync.

Records: `>IIB` (payload length, CRC-32 of type and payload, type) then the payload.
Replay executes the records in order, the same mutations the writer made. An empty
file is an empty log (what a power cut under --unsafe-no-fsync leaves: start-up then
refuses the data dir if it held a member, `member/reconcile.py`). A record
that is cut short or fails its CRC ends the log there: it was written after the last
durable write call returned (a write call returns only after its fdatasync), so
nothing acknowledged is behind it; the file is truncated to the good prefix.

The file is preallocated ahead of its records in `PREALLOC_BYTES` steps (etcd's WAL
preallocates each 64 MB segment, `fileutil.Preallocate`): records are written into
space the file already has, so an fdatasync need not also commit a new file size and
new blocks (on the ext4 of the 2-core machines, a 350-byte write and fdatasync took
~85 µs and ~32 µs of CPU there against ~120 µs and ~48 µs when appending). The
preallocated tail reads as zeros, a header no record has (type 0): replay ends there
as at a torn tail. Not under --unsafe-no-fsync, which has no fdatasync to spare.

The file is rewritten when it grows past `SEGMENT_BYTES` and twice the live state
(etcd cuts a new segment and deletes old ones after a snapshot): the new file starts
with one STATE record (hard state, ConfState, snapshot, compaction point and every
entry kept) and is written, synced and renamed over a higher sequence number before
the older file goes, so a crash leaves either file whole. Only taking the STATE record
and switching files hold the write lock: the new file is written and synced on a
thread of its own while the log's writes go on, then the records they appended
meanwhile are copied after it (replay runs records in order, so the STATE record and
the copied records give the state the old file gives) and both synced before the
rename. Writing ~6 MB and its fdatasync under the lock held every append for 60-73 ms
once per ~64 MiB of log (`bench/wal_rewrite.py`).

Safe for writer threads (the log stage appends, the apply thread compacts and
snapshots: `_write_lock` orders them, file and memory alike) and reader threads (the
Raft core on the event loop: `_mem_lock` is held only for memory, never across I/O,
and memory changes only after the write is durable; `first_index` and `last_index`,
asked per message, read one attribute each without it).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from kubekv_raft.driver.durable_dirs import fsync_dir, make_dirs

log = logging.getLogger(__name__)

__all__ = ["WALStorage", "WALCorruptError", "SEGMENT_BYTES", "CACHE_BYTES", "PREALLOC_BYTES"]

# Rewrite the file once it is this large (etcd's wal.SegmentSizeBytes) and more than
# twice the bytes still live: bounds the disk a long-running member's log takes.
SEGMENT_BYTES = 64 << 20
# The newest entries kept as objects (Raft applies and replicates from them); older
# ones are read back from the file. Bounds the heap the log takes to this plus ~100
# bytes per entry since the last snapshot (etcd: every entry, --snapshot-count of them).
CACHE_BYTES = 8 << 20
# ... and at most this many entries: each cached entry is an object that every full
# pass of Python's garbage collector visits with the GIL held. 8 MiB of 300-byte Puts
# was ~28,000 entries, and full passes stopped the member for 30-57 ms at 64 Puts in
# flight (bench/profile_server.md, "Stalls that stopped every write"). 4,096 entries
# is a few hundred ms of writes at the rates measured, which is what applying and
# replicating read.
CACHE_ENTRIES = 4096
# A record larger than this is not one we wrote: a length field from a torn write.
# Bounds what replay allocates (etcd's WAL refuses frames over its max too).
MAX_RECORD_BYTES = 1 << 30
# A rewrite reads the kept entries in one read of their span of the file, unless the
# span holds more than twice their bytes plus this (other records between them: hard
# states, entries a new leader replaced): bounds what that read allocates beyond them.
SPAN_SLACK_BYTES = 1 << 20
# How far the file is allocated ahead of its records (see the module docstring).
PREALLOC_BYTES = 4 << 20

_HEAD = struct.Struct(">IIB")
_U32 = struct.Struct(">I")
_U64x2 = struct.Struct(">QQ")
_SUFFIX = ".wal"

_STATE, _ENTRIES, _HARD, _CONF, _SNAPSHOT, _COMPACT, _INSTALL = range(1, 8)


class WALCorruptError(Exception):
    """The log cannot be read back (a damaged record before the last one)."""


def _pack_list(items: list[bytes]) -> bytes:
    # one join over the length prefixes and the items, no concatenated copy of each
    # item first: ~3x faster for a rewrite's 18,000 entries (5.6 -> 1.9 ms)
    parts: list[bytes] = []
    add, pack = parts.append, _U32.pack
    for b in items:
        add(pack(len(b)))
        add(b)
    return b"".join(parts)


def _unpack_list(payload: bytes) -> Iterator[bytes]:
    pos, end = 0, len(payload)
    while pos < end:
        (n,) = _U32.unpack_from(payload, pos)
        pos += 4
        yield payload[pos : pos + n]
        pos += n


def _offsets(items: list[bytes], base: int) -> list[int]:
    """Where each item of `_pack_list(items)` starts, for that payload at offset `base`."""
    out, pos = [], base
    for b in items:
        pos += 4
        out.append(pos)
        pos += len(b)
    return out


def _read_blobs(fd: int, offs: list[int], sizes: list[int], size: int, live: int,
                one: Callable[[int], bytes]) -> list[bytes]:
    """The encoded entries at `offs` (`sizes` bytes each) of a file of `size` bytes
    (`fd`), in order: sliced from one read of the span they lie in (appended in index
    order, their offsets rise) rather than read back one `pread` each, which was most of
    a rewrite's time (18,000 entries: 73 ms); one at a time (`one(k)`) where the file
    does not hold that span whole or it holds far more than their `live` bytes besides."""
    if not offs:
        return []
    lo, hi = offs[0], offs[-1] + sizes[-1]
    if lo <= hi <= size and hi - lo <= 2 * live + SPAN_SLACK_BYTES:
        span = os.pread(fd, hi - lo, lo)
        if len(span) == hi - lo:
            return [span[o - lo:o - lo + sz] for o, sz in zip(offs, sizes, strict=True)]
    return [one(k) for k in range(len(offs))]


def _record(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload, kind), kind) + payload


def _state(head: list[bytes], blobs: list[bytes], at: int) -> tuple[bytes, list[int]]:
    """A STATE record of `head` (`WALStorage._state_head`) and the entries' `blobs`, to
    be written at file offset `at`, and where each entry's bytes will be in that file."""
    parts = head + blobs
    return _record(_STATE, _pack_list(parts)), _offsets(parts, at + _HEAD.size)[len(head):]


def _write_out(path: str, data: bytes, append: bool, sync: bool) -> None:
    """Write all of `data` to `path` (created anew, or appended to), then fdatasync it if
    `sync`, through the descriptor itself: a buffered file object keeps a write shorter
    than its buffer (8 KiB) in memory until it is closed, after an fdatasync called
    before that, so the bytes would reach the file unsynced."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o666)
    try:
        view, done = memoryview(data), 0
        while done < len(view):
            done += os.write(fd, view[done:])
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


class WALStorage:
    """The Raft log, hard state, ConfState and snapshot in `<path>/<seq>.wal`."""

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync  # False only for etcd's --unsafe-no-fsync
        self._write_lock = threading.Lock()
        self._mem_lock = threading.Lock()
        self._hard = pb.HardState()
        self._conf = pb.ConfState()
        self._snap = pb.Snapshot()
        self._ci = 0  # compaction point: index and term of the last entry discarded
        self._ct = 0
        # entries _ci+1 .. in order: term, offset and encoded size in the current file, and
        # the object while cached (None once evicted: read back from the file)
        self._terms: list[int] = []
        self._offs: list[int] = []
        self._sizes: list[int] = []
        self._ents: list[pb.Entry | None] = []
        self._last = 0  # _ci + len(_terms), kept so the loop reads it without the lock
        self._live = 0  # bytes of the entries kept
        self._cached = 0  # bytes of the entries kept as objects
        self._evict = 0  # position of the oldest entry that may still be cached
        self._rfd = -1  # the current file, for reading entries back
        self._alloc = 0  # the current file's length: _size plus its preallocated tail
        self._unlinking: list[threading.Thread] = []  # rewrites' old files going
        self._rewriting: threading.Thread | None = None  # a rewrite writing its file
        # a rewrite's failure after its file became the log's: every write raises it
        self._broken: OSError | None = None
        # called with the seconds each synced write took (metrics)
        self.on_sync: Callable[[float], None] | None = None
        make_dirs(path, sync=fsync)  # the log's directory, durable before its first file
        self._seq, self._size = self._recover()
        self._alloc = self._size
        self._fd = os.open(self._file(self._seq), os.O_WRONLY)
        self._rfd = os.open(self._file(self._seq), os.O_RDONLY)

    # -- files ---------------------------------------------------------------------------
    def _file(self, seq: int) -> str:
        return os.path.join(self.path, f"{seq:016x}{_SUFFIX}")

    def _recover(self) -> tuple[int, int]:
        """Replay the newest file; returns its sequence number and good length."""
        names = sorted(n for n in os.listdir(self.path) if n.endswith(_SUFFIX))
        for n in os.listdir(self.path):
            if n.endswith(_SUFFIX + ".tmp"):  # a rewrite cut short: the old file stands
                os.unlink(os.path.join(self.path, n))
        if not names:
            self._write_file(1, self._state_record(0)[0])
            return 1, os.path.getsize(self._file(1))
        newest = names[-1]
        seq = int(newest[: -len(_SUFFIX)], 16)
        with open(self._file(seq), "rb") as f:
            data = f.read()
        good = self._replay(data)
        if good == 0 and data:  # every file is created with a STATE record before its tail
            raise WALCorruptError(f"{self._file(seq)}: no valid state record at its start")
        if good < len(data):  # a torn tail (written after the last durable write returned)
            # or the preallocated one: the next write preallocates again
            with open(self._file(seq), "r+b") as f:
                f.truncate(good)
                if self.fsync:
                    os.fdatasync(f.fileno())
        for n in names[:-1]:  # older files a finished rewrite left (their content is in it)
            os.unlink(os.path.join(self.path, n))
        return seq, good

    def _replay(self, data: bytes) -> int:
        """Execute the records of `data`; returns the length of its valid prefix."""
        pos, end = 0, len(data)
        while pos + _HEAD.size <= end:
            n, crc, kind = _HEAD.unpack_from(data, pos)
            if kind == 0:  # the preallocated tail: no record has type 0
                break
            if n > MAX_RECORD_BYTES or pos + _HEAD.size + n > end:
                break
            payload = data[pos + _HEAD.size : pos + _HEAD.size + n]
            if zlib.crc32(payload, kind) != crc or (pos == 0) != (kind == _STATE):
                break
            self._execute(kind, payload, pos + _HEAD.size)
            pos += _HEAD.size + n
        return pos

    def _write_file(self, seq: int, content: bytes) -> None:
        """Create file `seq` whole and durable (tmp, fsync, rename, fsync the directory)."""
        tmp = self._file(seq) + ".tmp"
        _write_out(tmp, content, append=False, sync=self.fsync)
        os.replace(tmp, self._file(seq))
        if self.fsync:
            fsync_dir(self.path)

    def _state_record(self, at: int) -> tuple[bytes, list[int]]:
        """Mem-current: a STATE record to be written at file offset `at`, and where each
        kept entry's bytes will be in that file."""
        return _state(self._state_head(), self._blobs(), at)

    def _state_head(self) -> list[bytes]:
        """Mem-current: what a STATE record holds besides the entries (hard state,
        ConfState, snapshot, compaction point), serialized."""
        return [self._hard.SerializeToString(), self._conf.SerializeToString(),
                self._snap.SerializeToString(), _U64x2.pack(self._ci, self._ct)]

    def _blobs(self) -> list[bytes]:
        """Every kept entry's encoded bytes, in order (`_read_blobs`)."""
        if not self._offs:  # (start-up writes a first file before it has a size)
            return []
        return _read_blobs(self._rfd, self._offs, self._sizes, self._size, self._live,
                           self._blob)

    def _blob(self, k: int) -> bytes:
        """The encoded entry at position k (from the cache, or read back from the file)."""
        e = self._ents[k]
        if e is not None:
            return e.SerializeToString()
        return os.pread(self._rfd, self._sizes[k], self._offs[k])

    def _entry(self, k: int) -> pb.Entry:
        e = self._ents[k]
        if e is None:
            e = pb.Entry.FromString(os.pread(self._rfd, self._sizes[k], self._offs[k]))
        return e

    def _append_records(self, records: list[bytes], sync: bool = True) -> int:
        """Write-lock held: append records, one fdatasync (unless not `sync`); the file
        offset they start at. `on_sync` times the calls that synced (etcd's
        wal_fsync_duration_seconds observes fsyncs only: not a commit record's write,
        nothing under --unsafe-no-fsync)."""
        if self._broken is not None:
            raise self._broken
        synced = self.fsync and sync
        start = time.perf_counter() if synced else 0.0
        at = self._size
        if self._size == 0:  # an empty file (its content lost to a cut): state first
            state, offs = self._state_record(0)
            records = [state, *records]
            at = len(state)
            with self._mem_lock:
                self._offs = offs
        buf = memoryview(b"".join(records))
        if self._size + len(buf) > self._alloc and self.fsync:
            self._preallocate(self._size + len(buf) + PREALLOC_BYTES)
        try:
            done, pos = 0, self._size
            while done < len(buf):
                done += os.pwrite(self._fd, buf[done:], pos + done)
            if synced:
                os.fdatasync(self._fd)
        except OSError:
            # nothing of this call may stay behind: a later record after a half-written
            # one would be cut off at replay (a full disk must not cost acknowledged
            # writes); the preallocated tail goes too, the next write makes it again
            os.ftruncate(self._fd, self._size)
            self._alloc = self._size
            raise
        self._size += len(buf)
        self._alloc = max(self._alloc, self._size)
        if synced and self.on_sync is not None:
            self.on_sync(time.perf_counter() - start)
        return at

    def _preallocate(self, length: int) -> None:
        """Write-lock held: make the file `length` bytes long, zeros beyond its records
        (best effort: a file system without fallocate, or a full disk, leaves it as it
        is and the write extends the file, as before)."""
        try:
            os.posix_fallocate(self._fd, self._alloc, length - self._alloc)
        except OSError:
            return
        self._alloc = length

    def _maybe_rewrite(self) -> None:
        """Write-lock held, memory current: start a new file from the live state, written
        beside the log's writes (`_rewrite`), unless one is being written."""
        if self._rewriting is not None or self._size < SEGMENT_BYTES \
                or self._size < 2 * self._live:
            return
        # what the STATE record holds besides the entries, and where the entries are; their
        # bytes are read on the rewrite's thread (the file's first `_size` bytes stay as
        # they are: records are only ever appended after them)
        head = self._state_head()
        t = threading.Thread(target=self._rewrite,
                             args=(self._seq + 1, self._size, head, list(self._offs),
                                   list(self._sizes), self._live),
                             name="kubekv-wal-rewrite", daemon=True)
        self._rewriting = t
        t.start()

    def _rewrite(self, seq: int, base: int, head: list[bytes], old_offs: list[int],
                 sizes: list[int], live: int) -> None:
        """Rewrite thread: file `seq` from a STATE record of the log as the current file's
        first `base` bytes leave it (`head`, then its entries, at `old_offs` there), then,
        under the write lock, the records appended since, and the switch. Any failure
        leaves the current file as it is (a later write tries again)."""
        tmp = self._file(seq) + ".tmp"
        try:
            try:
                rfd = os.open(self._file(seq - 1), os.O_RDONLY)
                try:
                    blobs = _read_blobs(rfd, old_offs, sizes, base, live,
                                        lambda k: os.pread(rfd, sizes[k], old_offs[k]))
                finally:
                    os.close(rfd)
                content, new_offs = _state(head, blobs, 0)
                del blobs
                _write_out(tmp, content, append=False, sync=self.fsync)
            except OSError as exc:
                log.warning("event=wal_rewrite_failed error=%s", exc)
                self._remove(tmp)
                return
            with self._write_lock:
                if self._fd < 0 or self._seq != seq - 1:  # closed meanwhile
                    self._remove(tmp)
                    return
                try:
                    self._finish_rewrite(seq, tmp, base, len(content), old_offs, new_offs)
                except OSError as exc:
                    log.warning("event=wal_rewrite_failed error=%s", exc)
                    self._remove(tmp)
        finally:
            self._rewriting = None

    def _finish_rewrite(self, seq: int, tmp: str, base: int, head: int, old_offs: list[int],
                        new_offs: list[int]) -> None:
        """Write-lock held: copy the records appended since the STATE record was taken
        after it, make the file current, move the entries' offsets to it."""
        # the entries kept now: a run of those the STATE record holds (a compaction took
        # some from the front, a conflict or an install some from the back), then those
        # appended since, which move with the tail
        cur = self._offs
        k = bisect.bisect_left(cur, base)
        i = bisect.bisect_left(old_offs, cur[0]) if k else 0
        if old_offs[i:i + k] != cur[:k]:  # not such a run: a bug; keep the current file
            raise OSError("the log's entries are not those the rewrite holds")
        offs = new_offs[i:i + k] + [o - base + head for o in cur[k:]]
        tail = os.pread(self._rfd, self._size - base, base)
        if len(tail) != self._size - base:
            raise OSError(f"read {len(tail)} of {self._size - base} bytes of the log's tail")
        _write_out(tmp, tail, append=True, sync=self.fsync)
        fd = os.open(tmp, os.O_WRONLY)
        rfd = os.open(tmp, os.O_RDONLY)
        try:
            os.replace(tmp, self._file(seq))
        except OSError:
            os.close(fd)
            os.close(rfd)
            raise
        # from here on the new file is the log (start-up takes the newest): switch to it
        if self.fsync:
            try:
                fsync_dir(self.path)
            except OSError as exc:  # the rename may not survive a power cut: write no more
                self._broken = exc
                log.error("event=wal_rewrite_failed error=%s", exc)
        os.close(self._fd)
        old = self._file(self._seq)
        self._fd = fd
        with self._mem_lock:  # readers switch files with the offsets
            old_rfd, self._rfd, self._offs = self._rfd, rfd, offs
        os.close(old_rfd)
        self._seq, self._size = seq, head + len(tail)
        self._alloc = self._size
        # Freeing the old file's blocks (64 MiB and its preallocated tail) took 25 ms of
        # a rewrite, with the log's writes waiting for the lock: it goes on beside them.
        # A crash before it ends leaves the old file, which start-up removes.
        unlink = threading.Thread(target=self._unlink_old, args=(old,),
                                  name="kubekv-wal-unlink", daemon=True)
        unlink.start()
        self._unlinking = [t for t in self._unlinking if t.is_alive()] + [unlink]

    @staticmethod
    def _unlink_old(path: str) -> None:
        """Remove a rewrite's old file. Its content is in the new one, so a failure
        costs only disk, which start-up takes back (it removes every older file)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("event=wal_unlink_failed file=%s error=%s", path, exc)

    @staticmethod
    def _remove(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def wait_rewrite(self) -> None:
        """Until a rewrite being written has finished (or given up). Not with the write
        lock held: the rewrite takes it to finish."""
        t = self._rewriting
        if t is not None:
            t.join()

    def _commit(self, kind_payloads: list[tuple[int, bytes]], sync: bool = True) -> None:
        """Write-lock held: make the records durable (written only, unless `sync`), then
        change memory to match."""
        at = self._append_records([_record(k, p) for k, p in kind_payloads], sync)
        with self._mem_lock:
            for k, p in kind_payloads:
                self._execute(k, p, at + _HEAD.size)
                at += _HEAD.size + len(p)
        self._maybe_rewrite()

    # -- the mutations (writing and replay run the same) -----------------------------------
    def _execute(self, kind: int, payload: bytes, base: int) -> None:
        """Run one record's mutation; `base`: the file offset of its payload."""
        if kind == _ENTRIES:
            blobs = list(_unpack_list(payload))
            self._do_append([pb.Entry.FromString(b) for b in blobs],
                            [len(b) for b in blobs], _offsets(blobs, base))
        elif kind == _HARD:
            self._hard = pb.HardState.FromString(payload)
        elif kind == _CONF:
            self._conf = pb.ConfState.FromString(payload)
        elif kind == _SNAPSHOT:
            self._snap = pb.Snapshot.FromString(payload)
            if self._snap.metadata.HasField("conf_state"):
                self._conf = pb.ConfState()
                self._conf.CopyFrom(self._snap.metadata.conf_state)
        elif kind == _COMPACT:
            self._do_compact(*_U64x2.unpack(payload))
        elif kind == _INSTALL:
            snap = pb.Snapshot.FromString(payload)
            md = snap.metadata
            self._snap = snap
            self._conf = pb.ConfState()
            self._conf.CopyFrom(md.conf_state)
            self._clear()
            self._ci, self._ct = md.index, md.term
            if self._hard.commit < md.index:
                self._hard.commit = md.index
        elif kind == _STATE:
            items = list(_unpack_list(payload))
            self._hard = pb.HardState.FromString(items[0])
            self._conf = pb.ConfState.FromString(items[1])
            self._snap = pb.Snapshot.FromString(items[2])
            self._ci, self._ct = _U64x2.unpack(items[3])
            self._clear()
            blobs = items[4:]
            self._do_append([pb.Entry.FromString(b) for b in blobs], [len(b) for b in blobs],
                            _offsets(items, base)[4:])
        else:
            raise WALCorruptError(f"unknown record type {kind}")
        self._last = self._ci + len(self._terms)

    def _clear(self) -> None:
        self._terms, self._offs, self._sizes, self._ents = [], [], [], []
        self._live = self._cached = self._evict = 0

    def _do_append(self, entries: list[pb.Entry], sizes: list[int],
                   offs: list[int]) -> None:
        """Entries (their sizes and file offsets) replace the log from entries[0].index."""
        if not entries:
            return
        if entries[0].index <= self._ci:
            skip = self._ci + 1 - entries[0].index
            entries, sizes, offs = entries[skip:], sizes[skip:], offs[skip:]
            if not entries:
                return
        keep = entries[0].index - self._ci - 1
        if keep > len(self._terms):
            raise WALCorruptError(
                f"gap: appending {entries[0].index} after last {self._ci + len(self._terms)}")
        self._drop(keep, len(self._terms))
        self._terms.extend([e.term for e in entries])
        self._offs.extend(offs)
        self._sizes.extend(sizes)
        self._ents.extend(entries)
        n = sum(sizes)
        self._live += n
        self._cached += n
        ents, sz = self._ents, self._sizes
        while (self._cached > CACHE_BYTES or len(ents) - self._evict > CACHE_ENTRIES) \
                and self._evict < len(ents):
            if ents[self._evict] is not None:
                ents[self._evict] = None
                self._cached -= sz[self._evict]
            self._evict += 1

    def _drop(self, lo: int, hi: int) -> None:
        """Forget the entries at positions [lo, hi) (a conflict's tail, or a compaction)."""
        if lo >= hi:
            return
        gone = self._sizes[lo:hi]
        self._live -= sum(gone)
        self._cached -= sum(n for e, n in zip(self._ents[lo:hi], gone, strict=True)
                            if e is not None)
        for seq in (self._terms, self._offs, self._sizes, self._ents):
            del seq[lo:hi]
        if lo == 0:
            self._evict = max(0, self._evict - hi)
        else:
            self._evict = min(self._evict, lo)

    def _do_compact(self, index: int, term: int) -> None:
        drop = index - self._ci
        if drop <= 0:
            return
        self._drop(0, min(drop, len(self._terms)))
        self._ci, self._ct = index, term
        if self._hard.commit < index:
            self._hard.commit = index  # everything compacted was committed (and applied)

    # -- read side -------------------------------------------------------------------------
    def initial_state(self) -> tuple[pb.HardState, pb.ConfState]:
        """Hard state and membership to restart from."""
        return self.hard_state(), self.conf_state()

    def hard_state(self) -> pb.HardState:
        """The last hard state written."""
        with self._mem_lock:
            return pb.HardState.FromString(self._hard.SerializeToString())

    def conf_state(self) -> pb.ConfState:
        """The last membership written."""
        with self._mem_lock:
            return pb.ConfState.FromString(self._conf.SerializeToString())

    def first_index(self) -> int:
        """Index of the first entry still held."""
        return self._ci + 1

    def last_index(self) -> int:
        """Index of the last entry held (no lock: one attribute, set with every change of
        the log under the lock; a compaction leaves it as it is)."""
        return self._last

    def term(self, i: int) -> int:
        """Term of entry i (the compaction point's term for i == first_index() - 1)."""
        with self._mem_lock:
            ci = self._ci
            if i < ci:
                raise CompactedError(f"index {i} compacted (first is {ci + 1})")
            if i == ci:
                return self._ct
            if i > ci + len(self._terms):
                raise UnavailableError(f"index {i} past last {ci + len(self._terms)}")
            return self._terms[i - ci - 1]

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[pb.Entry]:
        """Entries [lo, hi), size-limited but never empty when lo < hi."""
        with self._mem_lock:
            ci = self._ci
            if lo <= ci:
                raise CompactedError(f"index {lo} compacted (first is {ci + 1})")
            last = ci + len(self._terms)
            if hi > last + 1:
                raise UnavailableError(f"entries up to {hi} asked, last is {last}")
            if lo >= hi:
                return []
            a, b = lo - ci - 1, hi - ci - 1
            if max_size is not None:
                size, k = 0, a
                while k < b:
                    size += self._sizes[k]
                    if k > a and size > max_size:
                        break
                    k += 1
                b = k
            if a >= self._evict:  # every entry from _evict on is cached
                return self._ents[a:b]
            return [self._entry(k) for k in range(a, b)]

    def snapshot(self) -> pb.Snapshot:
        """The most recent snapshot (metadata plus whatever data it was recorded with)."""
        with self._mem_lock:
            return pb.Snapshot.FromString(self._snap.SerializeToString())

    # -- write side ------------------------------------------------------------------------
    def append(self, entries: list[pb.Entry], hard_state: pb.HardState | None = None) -> None:
        """Append entries (replacing any at or after entries[0].index) and hard_state; one
        fdatasync."""
        if not entries and hard_state is None:
            return
        blobs = [e.SerializeToString() for e in entries]
        records = [_record(_ENTRIES, _pack_list(blobs))] if entries else []
        if hard_state is not None:
            hard = pb.HardState()
            hard.CopyFrom(hard_state)
            records.append(_record(_HARD, hard.SerializeToString()))
        with self._write_lock:
            last = self._ci + len(self._terms)
            if entries and entries[-1].index > self._ci and entries[0].index > last + 1:
                raise ValueError(f"gap: appending {entries[0].index} after last {last}")
            at = self._append_records(records)
            with self._mem_lock:  # the entries themselves, not a parse of what was written
                self._do_append(entries, [len(b) for b in blobs],
                                _offsets(blobs, at + _HEAD.size) if entries else [])
                self._last = self._ci + len(self._terms)
                if hard_state is not None:
                    self._hard = hard
            self._maybe_rewrite()

    def set_hard_state(self, hs: pb.HardState) -> None:
        """Record term, vote and commit; one fdatasync."""
        with self._write_lock:
            self._commit([(_HARD, hs.SerializeToString())])

    def note_commit(self, hs: pb.HardState, block: bool = True) -> bool:
        """Record a hard state that only moves the commit index, without an fdatasync.

        etcd's WAL saves every HardState and syncs only when MustSync: a process crash
        keeps it (the page cache), a power cut may lose it, which Raft tolerates (the
        commit index is learnt again). What it keeps matters where no leader teaches
        it again: --force-new-cluster keeps the entries up to it, and the state db
        commits its applies only in batches.

        With `block` False it gives up (returns False) instead of waiting for a write
        under way, so the event loop can call it: a record and a write(2), no rewrite.
        """
        if not self._write_lock.acquire(blocking=block):
            return False
        try:
            payload = hs.SerializeToString()
            at = self._append_records([_record(_HARD, payload)], sync=False)
            with self._mem_lock:
                self._execute(_HARD, payload, at + _HEAD.size)
        finally:
            self._write_lock.release()
        return True

    def set_conf_state(self, cs: pb.ConfState) -> None:
        """Record the membership to restart from; one fdatasync."""
        with self._write_lock:
            self._commit([(_CONF, cs.SerializeToString())])

    def compact(self, index: int) -> None:
        """Discard entries <= index, keeping index's term as the new compaction point."""
        with self._write_lock:
            if index <= self._ci:
                raise CompactedError(f"index {index} already compacted")
            if index > self._ci + len(self._terms):
                raise UnavailableError(f"compact {index} past last {self.last_index()}")
            term = self._terms[index - self._ci - 1]
            self._commit([(_COMPACT, _U64x2.pack(index, term))])

    def create_snapshot(
        self, index: int, conf_state: pb.ConfState | None = None, data: bytes = b""
    ) -> pb.Snapshot:
        """Record a snapshot of the application's state as of applied index `index`."""
        with self._write_lock:
            if index <= self._snap.metadata.index:
                raise SnapshotOutOfDateError(f"snapshot {index} not newer")
            if index == self._ci:
                term = self._ct
            elif self._ci < index <= self._ci + len(self._terms):
                term = self._terms[index - self._ci - 1]
            else:
                raise UnavailableError(f"snapshot {index} not in the log")
            snap = pb.Snapshot(data=data)
            snap.metadata.index = index
            snap.metadata.term = term
            if conf_state is not None:
                snap.metadata.conf_state.CopyFrom(conf_state)
            self._commit([(_SNAPSHOT, snap.SerializeToString())])
            return snap

    def apply_snapshot(self, snapshot: pb.Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader; one fdatasync."""
        md = snapshot.metadata
        with self._write_lock:
            if md.index <= self._snap.metadata.index or md.index <= self._ci:
                raise SnapshotOutOfDateError(f"snapshot {md.index} not newer")
            self._commit([(_INSTALL, snapshot.SerializeToString())])

    def close(self) -> None:
        """Close the file; the object is unusable afterwards."""
        self.wait_rewrite()
        with self._write_lock:
            for unlink in self._unlinking:
                unlink.join()
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._rfd)
                self._fd = self._rfd = -1
