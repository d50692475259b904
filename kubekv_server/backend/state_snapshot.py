"""Raft snapshots of the state database: a consistent copy out, an atomic swap in.

A snapshot is one file: a compacted copy of the state LMDB environment, made from a read
view the apply thread pinned right after committing, so it holds exactly the state as of
its applied index (its `meta` db says which) while applying goes on. Installing one on a
lagging member replaces the contents of every sub-database in one write transaction of
the live environment: readers see the old state or the new, never a mix, the same
environment and database handles stay valid for every component, and a crash mid-install
leaves the old state with its old applied index.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import lmdb

from kubekv_raft.driver.durable_dirs import fsync_dir, make_dirs
from kubekv_server.backend.state_db import Backend

log = logging.getLogger("kubekv.snapshot")

PREFIX = "state-"
# Keys of the `meta` db that describe this member, not the replicated state: a
# snapshot from the leader must not overwrite them.
LOCAL_META_KEYS = (b"member_id", b"cluster_id")
SUFFIX = ".mdb"


# The directory a snapshot's copy is made in before its file is renamed into place.
TMP_PREFIX = ".tmp-"


def remove_interrupted_copies(directory: str) -> int:
    """Delete the copy directories a crash left mid-snapshot (each a whole copy of the
    state db: a member killed while copying would otherwise keep one per crash, as
    etcd's snapshotter removes its orphaned db.tmp files at start); how many. Call
    before any snapshot of this member is taken."""
    n = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            n += 1
    return n


def snapshot_file(directory: str, term: int, index: int) -> str:
    return os.path.join(directory, f"{PREFIX}{term:016x}-{index:016x}{SUFFIX}")


def create(backend: Backend, directory: str, term: int, index: int,
           txn: lmdb.Transaction | None = None) -> str:
    """Copy the state database (compacted) to a snapshot file; fsynced, renamed into place.

    `txn`: a read txn of `backend.env` whose view is copied (one pinned as of `index`
    while applying goes on); None copies what is committed now."""
    make_dirs(directory)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{index:016x}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    backend.env.copy(tmp, compact=True, txn=txn)
    final = snapshot_file(directory, term, index)
    with open(os.path.join(tmp, "data.mdb"), "rb") as f:
        os.fsync(f.fileno())
    os.replace(os.path.join(tmp, "data.mdb"), final)
    shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(directory)
    return final


def handle(path: str) -> bytes:
    """The Snapshot.data a member records for its own snapshot file."""
    return json.dumps({"file": path}).encode()


def path_of(data: bytes) -> str | None:
    try:
        return json.loads(data).get("file")
    except (ValueError, AttributeError):
        return None


def prune(directory: str, keep: str) -> None:
    """Remove this member's older snapshot files (the one being kept stays). Snapshots
    received from a leader are not ours to remove here: one may still wait to be
    installed (the peer port removes those an installed snapshot made stale)."""
    for path in glob.glob(os.path.join(directory, f"{PREFIX}*{SUFFIX}")):
        if os.path.abspath(path) != os.path.abspath(keep):
            try:
                os.remove(path)
            except OSError:
                pass


def install(backend: Backend, path: str) -> None:
    """Replace the live state with the snapshot file's, in one write transaction."""
    snap = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=64,
                     map_size=max(os.path.getsize(path) * 2, 1 << 20))
    env = backend.env
    backend.commit()  # what was applied before goes first (and frees the writer lock)
    try:
        with snap.begin() as stxn, env.begin(write=True) as txn:
            local = {k: txn.get(k, db=backend.meta) for k in LOCAL_META_KEYS}
            names = [k for k, _ in stxn.cursor()]
            live_names = [k for k, _ in txn.cursor()]
            for name in set(live_names) - set(names):
                db = env.open_db(name, txn=txn, create=False)
                txn.drop(db, delete=False)
            for name in names:
                sdb = snap.open_db(name, txn=stxn, create=False)
                flags = sdb.flags(stxn)
                db = env.open_db(name, txn=txn, dupsort=flags["dupsort"],
                                 dupfixed=flags["dupfixed"], integerkey=flags["integerkey"],
                                 integerdup=flags["integerdup"],
                                 reverse_key=flags["reverse_key"])
                txn.drop(db, delete=False)
                txn.cursor(db=db).putmulti(
                    stxn.cursor(db=sdb).iternext(), dupdata=flags["dupsort"], append=False
                )
            for k, v in local.items():
                if v is not None:
                    txn.put(k, v, db=backend.meta)
            for fn in backend.on_install:
                fn(txn)
    finally:
        snap.close()
    log.info("event=snapshot_installed file=%s", path)
