"""The member's state database: one LMDB environment holding everything the log is applied to.

MVCC history, key index, live keys, membership and the applied index live
here, written by the apply transaction (committed in batches, see `apply_txn`), so a
restart replays exactly the log entries this database has not seen. Other processes
may open it read-only to read what is committed (LMDB readers never block the writer).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import lmdb

from kubekv_raft.driver.durable_dirs import fsync_dir, make_dirs

log = logging.getLogger("kubekv.backend")

# Address space reserved for the map; pages are only allocated as data grows.
DEFAULT_MAP_SIZE = 64 << 30

# etcd's backend defaults (server/mvcc/backend: defaultBatchInterval, defaultBatchLimit):
# the apply transaction commits at the latest this long after its first write, or once
# it holds this many applied entries. What is applied meanwhile is in the fsynced log,
# and readers see it through mvcc/pending.py.
DEFAULT_BATCH_INTERVAL = 0.1
DEFAULT_BATCH_LIMIT = 10000
# ... or once the key changes it holds reach this many bytes, whatever the flags say:
# until the commit they sit in memory two or three times (the MVCC store's pending view,
# LMDB's dirty pages of the open txn, and the requests' data the applier keeps to apply
# them again if one fails half-way), and 10,000 requests of etcd's largest size would be
# 15 GiB. 64 MiB is ~40 of the largest requests, and thousands of ordinary ones.
MAX_UNCOMMITTED_BYTES = 64 << 20
# Within this many bytes of the quota (--quota-backend-bytes) the apply txn commits
# every batch again, so the quota check sees the file as it is: LMDB's copy-on-write
# commits grow the file by more than the data they add, and writes held back past the
# quota could leave a database that a compaction and a defragmentation no longer bring
# back under it (etcd's TestCtlV3Alarm, a 52 KiB quota). 16 MiB is more than a batch
# interval of writes at etcd's rates.
NEAR_QUOTA_BYTES = 16 << 20

_U64 = struct.Struct(">Q")


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(b: bytes | None) -> int:
    return _U64.unpack(b)[0] if b else 0


def _current_dir(base: str) -> str:
    """The directory holding the state database: `base`, or what `base.current` names."""
    try:
        with open(base + ".current") as f:
            name = f.read().strip()
    except FileNotFoundError:
        return base
    return os.path.join(os.path.dirname(base), name)


def _remove_stale_generations(base: str, current: str) -> None:
    """Remove the state databases a defragmentation replaced (`base`, `base.<n>`) but
    did not get to remove: the member stopped within the minute the old one stays open
    for readers, or a cut brought it back, or the copy itself was cut short. Each is a
    whole state db; only the one the pointer names is the member's."""
    parent, name = os.path.split(base)
    for entry in os.listdir(parent or "."):
        stale = entry == name or (entry.startswith(name + ".") and entry[len(name) + 1:].isdigit())
        full = os.path.join(parent, entry)
        if stale and full != current and os.path.isdir(full):
            log.info("event=removed_replaced_state_db dir=%s current=%s", full, current)
            shutil.rmtree(full, ignore_errors=True)


def _write_pointer(base: str, directory: str) -> None:
    """Durably point `base.current` at `directory` (write, fsync, rename, fsync dir)."""
    tmp = base + ".current.tmp"
    with open(tmp, "w") as f:
        f.write(os.path.basename(directory))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, base + ".current")
    fsync_dir(os.path.dirname(base))


class Backend:
    """Opens the state environment and its `meta` database (applied index, identity)."""

    APPLIED_INDEX = b"applied_index"

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False,
                 fsync: bool = True, batch_interval: float = DEFAULT_BATCH_INTERVAL,
                 batch_limit: int = DEFAULT_BATCH_LIMIT, commit_in_background: bool = True):
        # `path` names the state database; after a defragmentation it lives in a sibling
        # directory named by the file `<path>.current` (see `defragment`).
        self.base = path
        self.map_size = map_size
        self.readonly = readonly
        self.fsync = fsync  # False only for --unsafe-no-fsync
        self.path = _current_dir(path)
        sync = fsync and not readonly
        make_dirs(self.path, sync=sync)
        created = not os.path.exists(os.path.join(self.path, "data.mdb"))
        if not readonly and not created:  # (a pointer naming no db: keep what is there)
            _remove_stale_generations(path, self.path)
        self.env = self._open(self.path)
        if created and sync:  # the new files' names (LMDB syncs their data, not these)
            fsync_dir(self.path)
        self._dbs: dict[bytes, object] = {}
        self._db_flags: dict[bytes, dict] = {}
        self.meta = self.open_db(b"meta")
        # The apply thread's write transaction, kept open across apply batches and
        # committed every `batch_interval` seconds or `batch_limit` entries (etcd's
        # batchTx); a limit <= 1 commits every batch before its results go out, as etcd's
        # batchTx does in the applying goroutine. The apply thread writes into it;
        # the commit thread begins, commits and aborts it (`_on_commit_thread`).
        self.batch_interval = batch_interval
        self.batch_limit = batch_limit
        self._held: lmdb.Transaction | None = None
        self._held_since = 0.0
        self._held_entries = self._held_bytes = 0
        # A commit a bound asked for runs on the commit thread while the apply thread
        # applies key requests into an overlay (mvcc/overlay.py): `_landing` until it is
        # done and the apply thread has taken note (`poll_landing`, `wait_landing`).
        self.commit_in_background = commit_in_background
        self._commit_thread: ThreadPoolExecutor | None = None
        self._landing: Future | None = None
        self._landing_bytes = 0  # what the landing txn holds, for the quota check
        self.overlay_bytes = 0  # what the overlay holds meanwhile (its applier counts)
        self.commits = 0  # commits of the apply txn (etcd_disk_backend_commit_duration count)
        self.quota_bytes = 0  # --quota-backend-bytes (0: none known, batch regardless)
        self._near_quota = False  # as of the last commit
        # called with the apply txn just before it commits (the applier stores the applied
        # index and the current revision once per commit, not once per batch)
        self.before_commit: list = []
        # called after each commit of the apply txn, and after it was dropped (the MVCC
        # store drops its pending view)
        self.on_commit: list = []
        # called on the apply thread once a background commit has landed, instead of
        # on_commit (the applier writes its overlay into the next apply txn)
        self.on_landed: list = []
        # called with the write txn that installs a snapshot's state, before it commits
        # (the MVCC store upgrades a snapshot written in an older layout)
        self.on_install: list = []
        self._psize = self.env.stat()["psize"]  # the page size, fixed for the file

    def _open(self, path: str) -> lmdb.Environment:
        # metasync=False: each commit flushes its data pages but not the meta page,
        # so a power loss can only roll back the newest commits, which the
        # (fully synced) log then replays; a process crash loses nothing.
        return lmdb.open(
            path,
            map_size=self.map_size,
            max_dbs=32,
            max_readers=2048,
            metasync=False,
            sync=self.fsync,
            readahead=False,
            readonly=self.readonly,
            lock=True,
        )

    def open_db(self, name: bytes, **flags) -> object:
        """Open (creating unless read-only) a named sub-database, remembered for size reports."""
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name, create=not self.readonly, **flags)
            self._db_flags[name] = flags
        return self._dbs[name]

    def defragment(self) -> tuple[lmdb.Environment, str]:
        """Copy the database compacted into a new directory and switch to it.

        The caller makes sure nothing writes meanwhile (it runs in the apply thread with
        the compactor paused) and rebinds every store to the new environment. Readers
        that still hold the old one finish on it (same data); the caller closes and
        removes it later. Returns (old environment, old directory).
        """
        gen = int(self.path.rsplit(".", 1)[1]) + 1 if self.path != self.base else 1
        new_dir = f"{self.base}.{gen}"
        shutil.rmtree(new_dir, ignore_errors=True)
        os.makedirs(new_dir)
        self.env.copy(new_dir, compact=True)
        env = self._open(new_dir)
        dbs = {name: env.open_db(name, create=True, **self._db_flags[name]) for name in self._dbs}
        if self.fsync:
            # LMDB's copy writes the new file without syncing it: make the copy and its
            # directory entries durable before the pointer moves to it, or a power cut
            # leaves the pointer naming a file whose pages never reached the disk (found
            # by tests/crash/test_power_loss.py)
            env.sync(True)
            fsync_dir(new_dir)
        _write_pointer(self.base, new_dir)
        old_env, old_dir = self.env, self.path
        self.env, self._dbs, self.path = env, dbs, new_dir
        self._psize = env.stat()["psize"]
        self.meta = dbs[b"meta"]
        return old_env, old_dir

    # -- the apply transaction (apply thread only) ------------------------------------------
    # LMDB's writer lock is a mutex the thread that begins a write txn takes and must
    # release itself (lmdb.h, MDB_NOTLS: "serialize the write transactions in an OS
    # thread"), so the apply txn begins, commits and aborts on one commit thread, and
    # the apply thread writes into it in between: a write txn holds no other state of
    # the thread that began it, and only one thread at a time touches it (the apply
    # thread, except while the commit thread begins, commits or aborts it, which the
    # apply thread waits for or, for a background commit, no longer touches it).

    def _on_commit_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the commit thread, waited for."""
        return self._commit_executor().submit(fn, *args).result()

    def _commit_executor(self) -> ThreadPoolExecutor:
        if self._commit_thread is None:
            self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="kubekv-state-commit")
        return self._commit_thread

    def _begin(self) -> lmdb.Transaction:
        return self._on_commit_thread(lambda: self.env.begin(write=True))

    def apply_txn(self) -> lmdb.Transaction:
        """The write transaction the next apply batch goes into (begun if none is open,
        after a background commit under way has landed)."""
        if self._landing is not None:
            self.wait_landing()
        if self._held is None:
            self._held = self._begin()
            self._held_since = time.monotonic()
            self._held_entries = self._held_bytes = 0
        return self._held

    def restart_txn(self) -> lmdb.Transaction:
        """Drop what the apply txn holds and begin it anew, as if it had just been begun
        at its first batch (its commit bounds still count from then), telling nobody:
        the applier applies again what it held (a request failed half-way)."""
        self._on_commit_thread(self._held.abort)
        self._held = self._begin()
        return self._held

    def note_applied(self, entries: int, nbytes: int) -> None:
        """Entries written into the apply txn outside a batch (an overlay's, once its
        commit landed): they count toward its bounds."""
        self._held_entries += entries
        self._held_bytes += nbytes

    def applied(self, entries: int, must_commit: bool, nbytes: int = 0) -> bool:
        """A batch of `entries` (`nbytes` of key changes) went into the apply txn: commit
        it if `must_commit` (the batch changed something only committed state shows) or
        a bound is reached, on the commit thread while the apply thread goes on if
        `commit_in_background` and only a bound asks (see `commit_async`; a limit <= 1
        asks for every batch to be in the file before its results go out). Returns
        whether it committed here (the changes are in the file)."""
        self._held_entries += entries
        self._held_bytes += nbytes
        if must_commit or self._near_quota or self.batch_limit <= 1:
            self.commit()
            return True
        if (self._held_entries >= self.batch_limit
                or self._held_bytes >= MAX_UNCOMMITTED_BYTES
                or time.monotonic() - self._held_since >= self.batch_interval):
            if self.commit_in_background:
                self.commit_async()
                return False
            self.commit()
            return True
        return False

    def commit_if_due(self) -> None:
        """Commit the apply txn if its interval has passed (the batch-interval clock)."""
        if self._landing is not None:
            self.poll_landing()
        if self._held is not None and time.monotonic() - self._held_since >= self.batch_interval:
            if self.commit_in_background and self._landing is None:
                self.commit_async()
            else:
                self.commit()

    def commit_async(self) -> None:
        """Commit the apply txn on the commit thread and return: until it has landed
        (`landing`) the apply thread may not write, and applies key requests into an
        overlay instead; the before_commit hooks run now, the on_landed ones once the
        apply thread learns that it landed."""
        self._hand_to_commit_thread(self._land)

    def _hand_to_commit_thread(self, work: Callable[[lmdb.Transaction], Any]) -> Future | None:
        """`work(apply txn)` on the commit thread as a background commit (`_landing`),
        after the before_commit hooks; None if no apply txn is open."""
        if self._landing is not None:
            self.wait_landing()
        txn = self._held
        if txn is None:
            return None
        try:
            for fn in self.before_commit:
                fn(txn)
        finally:
            self._held = None
        self._landing_bytes, self._held_bytes = self._held_bytes, 0
        self._landing = self._commit_executor().submit(work, txn)
        return self._landing

    def _land(self, txn: lmdb.Transaction) -> None:
        """Commit thread: a background commit."""
        txn.commit()

    def pin_durable(self) -> Future:
        """Apply thread: everything applied, committed in the background (`commit_async`)
        and synced with the meta page (which commits leave unsynced, `_open`); the
        future's result is a read txn of exactly that state, begun on the commit thread
        before anything else is written (a Raft snapshot copies it)."""
        landing = self._hand_to_commit_thread(self._land_and_pin)
        if landing is None:  # nothing uncommitted: a view of the last commit, synced
            return self._commit_executor().submit(self._land_and_pin, None)
        return landing

    def _land_and_pin(self, txn: lmdb.Transaction | None) -> lmdb.Transaction:
        """Commit thread: `pin_durable`'s commit, sync and read txn."""
        if txn is not None:
            self._land(txn)
        self.env.sync(True)
        return self.env.begin()

    @property
    def waits_for_nothing(self) -> bool:
        """Whether a batch of key requests can go into the apply txn without waiting for
        another thread: the txn is open, no commit is landing, and a bound it reaches
        commits in the background (any thread; the apply stage's threads only ask it
        between batches)."""
        return (self._held is not None and self._landing is None
                and self.commit_in_background and self.batch_limit > 1
                and not self._near_quota)

    @property
    def landing(self) -> bool:
        """Whether a background commit is under way or landed unnoticed."""
        return self._landing is not None

    def poll_landing(self) -> bool:
        """Whether no background commit is under way any more (taking note of one that
        landed: `wait_landing`)."""
        f = self._landing
        if f is None:
            return True
        if not f.done():
            return False
        self.wait_landing()
        return True

    def wait_landing(self) -> None:
        """Until the background commit under way has landed; then its on_landed hooks.
        A failed commit raises here, as a commit on the apply thread did."""
        f = self._landing
        if f is None:
            return
        try:
            f.result()
        finally:
            self._landing = None
            self._landing_bytes = 0
        self._committed()
        for fn in self.on_landed:
            fn()

    def _committed(self) -> None:
        self.commits += 1
        self._near_quota = bool(self.quota_bytes) and \
            self.size_bytes() + NEAR_QUOTA_BYTES >= self.quota_bytes

    def commit(self) -> None:
        """Commit the apply txn now, if one is open, after a background commit under way
        (before anything that needs every applied change in the file: snapshots,
        defragmentation, hashes, stop)."""
        if self._landing is not None:
            self.wait_landing()  # (its overlay goes into a new apply txn, committed below)
        txn = self._held
        if txn is not None:
            try:
                for fn in self.before_commit:
                    fn(txn)
            finally:
                self._held = None
            self._on_commit_thread(txn.commit)
            self._committed()
            for fn in self.on_commit:
                fn()

    def abort(self) -> None:
        """Drop the apply txn (an apply failed; the log replays it after a restart), and
        what an overlay holds; a background commit under way lands first."""
        landing, self._landing = self._landing, None
        if landing is not None:
            self._landing_bytes = 0
            try:
                landing.result()
                self._committed()
            except Exception:  # noqa: BLE001 - dropped as well: the log replays it
                pass
        txn, self._held = self._held, None
        if txn is not None:
            self._on_commit_thread(txn.abort)
        if txn is not None or landing is not None:
            for fn in self.on_commit:
                fn()

    def applied_index(self) -> int:
        with self.env.begin() as txn:
            return decode_u64(txn.get(self.APPLIED_INDEX, db=self.meta))

    def set_applied_index(self, txn: lmdb.Transaction, index: int) -> None:
        txn.put(self.APPLIED_INDEX, encode_u64(index), db=self.meta)

    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.meta)

    def size_bytes(self) -> int:
        """Bytes the database file occupies (etcd's db_size)."""
        return (self.env.info()["last_pgno"] + 1) * self._psize

    def quota_size(self) -> int:
        """What the quota check counts: the file's size, plus what the uncommitted apply
        txn (and a background commit under way, and its overlay) will add to it, counted
        twice (its key changes land in the history, and each page of the index and live
        tables they touch is copied on write). Without the second part a burst of writes
        between two commits passes the check on the file's old size and overshoots the
        quota (etcd's TestCtlV3Alarm then could not get back under it with a compaction
        and a defragmentation)."""
        return self.size_bytes() + 2 * (self._held_bytes + self._landing_bytes
                                        + self.overlay_bytes)

    def in_use_bytes(self) -> int:
        """Bytes of pages holding live data (etcd's db_size_in_use), excluding free pages."""
        psize = self.env.stat()["psize"]
        pages = 2  # the two meta pages
        with self.env.begin() as txn:
            main = txn.stat()
            pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
            for db in self._dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return min(pages * psize, self.size_bytes())

    def hash(self, skip_meta_keys: tuple[bytes, ...] = ()) -> int:
        """CRC-32 over every sub-database's name, keys and values (Maintenance.Hash).

        Members with the same applied state get the same value; keys naming the
        member itself can be skipped so that they do not make members differ.
        """
        h = 0
        with self.env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
            for name in names:
                db = self.env.open_db(name, txn=txn, create=False)
                h = zlib.crc32(name, h)
                for k, v in txn.cursor(db=db):
                    if name == b"meta" and k in skip_meta_keys:
                        continue
                    h = zlib.crc32(v, zlib.crc32(k, h))
        return h

    def sync(self) -> None:
        """Commit the apply txn and force every commit to disk (before the log is
        compacted). Apply thread, or when no apply runs."""
        self.commit()
        self.env.sync(True)

    def close(self) -> None:
        self.abort()
        if self._commit_thread is not None:
            self._commit_thread.shutdown(wait=True)
            self._commit_thread = None
        self.env.close()
