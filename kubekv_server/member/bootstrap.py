"""A member's identity and first steps: bootstrap from flags or restart from the data dir,
join an existing cluster, import an etcd backend, and publish its attributes.

The identity (member id, cluster id, members) lives in the state db's meta bucket;
a new member of a new cluster also writes the bootstrap log: one ConfChange per
initial member, committed at term 1, as etcd's bootstrap does. Once the identity is
durable, the file member/identity marks the data dir as a member's; before anything is
written, start-up refuses a data dir whose log and state cannot be reconciled
(`check_reconcilable`, the decision in member/reconcile.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import NoReturn

import lmdb

from etcdproto.kubekvpb import internal_pb2
from etcdproto.raftpb import raft_pb2
from kubekv_raft.driver.durable_dirs import fsync_dir
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.wal_storage import WALCorruptError, WALStorage
from kubekv_server import errors
from kubekv_server.backend import bbolt_import, state_snapshot
from kubekv_server.backend.state_db import Backend, decode_u64, encode_u64
from kubekv_server.config.flags import Config
from kubekv_server.lease import LeaseStore
from kubekv_server.member.cluster_ids import cluster_id, member_id
from kubekv_server.member.proposals import REQUEST_TIMEOUT, encode_internal
from kubekv_server.member.reconcile import REMEDY, DataDirFacts, unreconcilable
from kubekv_server.mvcc import MVCCStore
from kubekv_server.peer.peering import fetch_members
from kubekv_server.peer.snapshot_files import received_snapshot
from kubekv_server.replication.raft_node import RaftNode

log = logging.getLogger("kubekv.member")


@dataclass
class Identity:
    """Who a member is: its id, its cluster's id and the members it knows of."""

    member_id: int
    cluster_id: int
    members: list[dict]
    restarted: bool = False  # the data dir already held this member's state


MARKER = "identity"  # in <data-dir>/member: the member's identity was committed once


def _marker_path(data_dir: str) -> str:
    return os.path.join(data_dir, "member", MARKER)


def refuse(reason: str) -> NoReturn:
    """Stop start-up: one critical line saying why, exit status 1 (as etcd's fatal log)."""
    log.critical('msg="failed to start" error="%s"', reason)
    raise SystemExit(1)


LogStorage = WALStorage | LMDBStorage


def open_log(path: str, fsync: bool) -> LogStorage:
    """The Raft log: a write-ahead log (one fdatasync per write); a data dir written
    before it keeps its LMDB log (`data.mdb` in the log directory)."""
    if os.path.exists(os.path.join(path, "data.mdb")):
        return LMDBStorage(path, fsync=fsync)
    return WALStorage(path, fsync=fsync)


def open_stores(data_dir: str, state_path: str, log_path: str,
                fsync: bool) -> tuple[Backend, LogStorage]:
    """Open the state db and the Raft log; one that cannot be read refuses start-up (a
    power cut under --unsafe-no-fsync can leave pages of either half written)."""
    what, path = "state db", state_path
    try:
        backend = Backend(path, fsync=fsync)
        what, path = "log", log_path
        return backend, open_log(path, fsync)
    except (lmdb.Error, WALCorruptError) as exc:
        refuse(f"failed to open the {what} of {data_dir} at {path}: {exc}; {REMEDY}")


def _facts(data_dir: str, backend: Backend, storage: LogStorage) -> DataDirFacts:
    return DataDirFacts(
        marker=os.path.exists(_marker_path(data_dir)),
        identity=bool(backend.get_meta(b"member_id")),
        applied_index=backend.applied_index(),
        log_first_index=storage.first_index(),
        log_last_index=storage.last_index(),
    )


def check_reconcilable(data_dir: str, backend: Backend, storage: LogStorage) -> None:
    """Refuse to start (one critical log line, exit status 1) on a data dir whose log and
    state db cannot be reconciled, before anything is written to it (etcd refuses too).

    A state db behind the log's compaction point is first recovered from the log's
    snapshot file if it is still there (a crash between installing a received snapshot
    in the log and in the state db leaves that), as etcd recovers its backend from the
    snapshot's db file when the backend's consistent index is behind the snapshot.
    """
    facts = _facts(data_dir, backend, storage)
    if facts.identity and facts.applied_index < facts.log_first_index - 1:
        if _recover_state_from_snapshot(backend, storage, facts.applied_index):
            facts = _facts(data_dir, backend, storage)
    reason = unreconcilable(data_dir, facts)
    if reason is not None:
        refuse(reason)


def _recover_state_from_snapshot(backend: Backend, storage: LogStorage, applied: int) -> bool:
    """Install the log's latest snapshot file (ours or one received) in the state db if
    it exists and is newer than `applied`; whether the state db was replaced."""
    snap = storage.snapshot()
    index = snap.metadata.index
    if index <= applied or not snap.data:
        return False
    path = state_snapshot.path_of(snap.data)
    if path is None:
        try:
            path = received_snapshot(snap).path
        except Exception:  # not a received snapshot's data either
            return False
    if not path or not os.path.isfile(path):
        return False
    log.warning('msg="recovering v3 backend from snapshot" applied-index=%d '
                "snapshot-index=%d file=%s", applied, index, path)
    state_snapshot.install(backend, path)
    if backend.fsync:
        backend.sync()
    return True


def mark_identity_committed(data_dir: str, backend: Backend, mid: int, cid: int) -> None:
    """Create member/identity once the identity is durable in the state db.

    Its existence, not its content, is what counts: creating a file survives a power cut
    as a directory entry even when its data does not (LazyFS's model; on ext4 and xfs the
    entry is durable once the journal commits, within seconds, or at the fsync here).
    Under --unsafe-no-fsync nothing is synced, as etcd's flag promises.
    """
    path = _marker_path(data_dir)
    if os.path.exists(path):
        return
    if backend.fsync:
        backend.sync()  # the identity's commit, meta page included (metasync is off)
    with open(path, "w") as f:
        f.write(f"member_id={mid:x} cluster_id={cid:x}\n")
        if backend.fsync:
            f.flush()
            os.fsync(f.fileno())
    if backend.fsync:
        fsync_dir(os.path.dirname(path))


def load_identity(cfg: Config, backend: Backend, storage: LogStorage) -> Identity:
    """Read the member/cluster identity from the data dir, or bootstrap it from flags.

    A member joining an existing cluster gets ids 0 here and learns its identity from
    the cluster (`join_existing`) when it starts.
    """
    data_dir = os.path.abspath(cfg.data_dir)
    check_reconcilable(data_dir, backend, storage)
    stored = backend.get_meta(b"member_id")
    if stored:
        mid = decode_u64(stored)
        cid = decode_u64(backend.get_meta(b"cluster_id"))
        members = json.loads(backend.get_meta(b"members") or b"[]")
        log.info("event=restart member_id=%x cluster_id=%x", mid, cid)
        mark_identity_committed(data_dir, backend, mid, cid)  # data dirs from before it
        return Identity(mid, cid, members, restarted=True)
    if cfg.initial_cluster_state == "existing":
        return Identity(0, 0, [])
    token = cfg.initial_cluster_token
    members = []
    for name, urls in sorted(cfg.initial_cluster.items()):
        m = {"id": member_id(urls, token), "name": name, "peerURLs": sorted(urls)}
        m["clientURLs"] = list(cfg.advertise_client_urls) if name == cfg.name else []
        m["isLearner"] = False
        members.append(m)
    mid = next(m["id"] for m in members if m["name"] == cfg.name)
    cid = cluster_id(m["id"] for m in members)
    bootstrap = [
        raft_pb2.Entry(
            term=1,
            index=i + 1,
            type=raft_pb2.EntryConfChange,
            data=raft_pb2.ConfChange(
                type=raft_pb2.ConfChangeAddNode, node_id=m["id"],
                context=json.dumps(m).encode(),
            ).SerializeToString(),
        )
        for i, m in enumerate(members)
    ]
    storage.append(bootstrap, raft_pb2.HardState(term=1, commit=len(bootstrap)))
    cs = raft_pb2.ConfState(voters=sorted(m["id"] for m in members))
    storage.set_conf_state(cs)
    _store_identity(backend, mid, cid, members, cs)
    mark_identity_committed(data_dir, backend, mid, cid)
    log.info("event=bootstrap member_id=%x cluster_id=%x members=%d", mid, cid, len(members))
    return Identity(mid, cid, members)


def _store_identity(backend: Backend, mid: int, cid: int, members: list[dict],
                    cs: raft_pb2.ConfState) -> None:
    with backend.env.begin(write=True) as txn:
        meta = backend.meta
        txn.put(b"member_id", encode_u64(mid), db=meta)
        txn.put(b"cluster_id", encode_u64(cid), db=meta)
        txn.put(b"members", json.dumps(members, sort_keys=True).encode(), db=meta)
        txn.put(b"conf_state", cs.SerializeToString(), db=meta)


async def join_existing(cfg: Config, backend: Backend) -> Identity:
    """--initial-cluster-state existing: learn this member's id from the cluster."""
    cid, members = await fetch_members(cfg)
    mine = set(cfg.initial_advertise_peer_urls)
    me = next((m for m in members if set(m["peerURLs"]) == mine), None)
    if me is None:
        raise SystemExit(
            "kubekv: member with peer URLs "
            f"{sorted(mine)} has not been added to the cluster (etcdctl member add first)"
        )
    # An empty log and no ConfState: the leader replicates the cluster's history.
    _store_identity(backend, me["id"], cid, members, raft_pb2.ConfState())
    mark_identity_committed(os.path.abspath(cfg.data_dir), backend, me["id"], cid)
    log.info("event=joined_existing_cluster member_id=%x cluster_id=%x", me["id"], cid)
    return Identity(me["id"], cid, members)


def import_etcd_backend(data_dir: str, backend: Backend, mvcc: MVCCStore,
                        leases: LeaseStore) -> bool:
    """A new member whose data dir holds an etcd backend (left by `etcdctl snapshot
    restore` as member/snap/db) starts from that state instead of an empty one."""
    path = os.path.join(data_dir, "member", "snap", "db")
    if not os.path.exists(path) or mvcc.revisions()[0] > 1:
        return False
    rev = bbolt_import.load(path, backend.env, mvcc, leases, backend)
    if backend.fsync:  # the import durable (meta page too) before its file is renamed:
        backend.sync()  # a cut must not leave the file renamed and the import undone
    os.replace(path, path + ".imported")
    if backend.fsync:
        fsync_dir(os.path.dirname(path))
    log.info("event=imported_etcd_backend file=%s revision=%d", path, rev)
    return True


async def publish(cfg: Config, node: RaftNode, mid: int) -> None:
    """Propose this member's name and client URLs until the cluster has applied them
    (etcd's "published" step)."""
    attrs = internal_pb2.MemberAttributes(
        member_id=mid, name=cfg.name, client_urls=list(cfg.advertise_client_urls),
    )
    while True:
        rid = node.next_id()
        data = encode_internal(rid, "member_attributes", attrs.SerializeToString(), None)
        try:
            await asyncio.wait_for(node.propose(rid, data), REQUEST_TIMEOUT)
            return
        except (errors.EtcdError, asyncio.TimeoutError) as exc:
            log.warning("event=publish_failed error=%r; retrying", exc)
            await asyncio.sleep(0.5)
