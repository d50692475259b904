"""One kubekv member: its data directory, identity, stores and commit path, behind one API.

The gRPC services call into a Member; it decides what is read locally and what
becomes a log entry, and fills every response header the way etcd does.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from etcdproto.raftpb import raft_pb2
from kubekv_raft.storage import LMDBStorage

from . import errors
from .alarms import list_alarms
from .applier import Applier, mvcc_error
from .backend import Backend, decode_u64, encode_u64
from .cluster_ids import cluster_id, member_id
from .config import Config
from .kv_range import execute_range
from .kv_txn import apply_txn, is_read_only
from .mvcc import CompactedError, FutureRevError, MVCCStore
from .single_member import SingleMemberNode
from .watch import WatchHub
from .watch.hub import DEFAULT_MAX_PENDING
from .watch.sync import SyncThread

log = logging.getLogger("kubekv.member")

# etcd's default quota when --quota-backend-bytes is 0 (2 GiB).
DEFAULT_QUOTA_BYTES = 2 << 30
SERVER_VERSION = "3.5.17"
# etcd's request timeout: 5 s plus two election timeouts (1 s each by default).
REQUEST_TIMEOUT = 7.0
CLUSTER_VERSION = "3.5.0"


class Member:
    """The server side of a member: stores, identity, proposals, reads, headers."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = os.path.abspath(cfg.data_dir)
        member_dir = os.path.join(self.data_dir, "member")
        self.backend = Backend(os.path.join(member_dir, "state"))
        self.mvcc = MVCCStore(self.backend.env)
        self.storage = LMDBStorage(os.path.join(member_dir, "log"))
        self.member_id, self.cluster_id, self.members = self._identity()
        self.applier = Applier(self.backend, self.mvcc)
        self.node = SingleMemberNode(self.storage, self.applier, self.member_id)
        # KUBEKV_WATCH_MAX_PENDING: responses queued per watch stream before its watchers
        # fall back to catching up from history (a tuning knob; tests make it small).
        max_pending = int(os.environ.get("KUBEKV_WATCH_MAX_PENDING", "0")) or DEFAULT_MAX_PENDING
        self.watch_hub = WatchHub(self.mvcc, max_pending=max_pending)
        self.node.add_listener(self._notify_watchers)
        self.quota_bytes = cfg.quota_backend_bytes or DEFAULT_QUOTA_BYTES
        self._compaction_done = threading.Event()
        self._compaction_done.set()

    # ------------------------------------------------------------ identity

    def _identity(self) -> tuple[int, int, list[dict]]:
        """Read the member/cluster identity from the data dir, or bootstrap it from flags."""
        stored = self.backend.get_meta(b"member_id")
        if stored:
            mid = decode_u64(stored)
            cid = decode_u64(self.backend.get_meta(b"cluster_id"))
            members = json.loads(self.backend.get_meta(b"members") or b"[]")
            log.info("event=restart member_id=%x cluster_id=%x", mid, cid)
            return mid, cid, members
        cfg = self.cfg
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
        self.storage.append(bootstrap, raft_pb2.HardState(term=1, commit=len(bootstrap)))
        with self.backend.env.begin(write=True) as txn:
            meta = self.backend.meta
            txn.put(b"member_id", encode_u64(mid), db=meta)
            txn.put(b"cluster_id", encode_u64(cid), db=meta)
            txn.put(b"members", json.dumps(members).encode(), db=meta)
        log.info("event=bootstrap member_id=%x cluster_id=%x members=%d", mid, cid, len(members))
        return mid, cid, members

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.node.add_idle_work(self._compact_step)
        self.node.start()
        self.watch_hub.catch_up_revision()
        self._watch_sync = SyncThread(self.watch_hub)
        self._watch_sync.start()

    def _notify_watchers(self, result) -> None:
        self.watch_hub.notify(result.events)

    def stop(self) -> None:
        if getattr(self, "_watch_sync", None) is not None:
            self._watch_sync.stop()
        self.node.stop()
        self.storage.close()
        self.backend.close()

    # ------------------------------------------------------------- headers

    def header(self, h: pb.ResponseHeader, revision: int | None = None) -> None:
        """Fill a response header: cluster and member ids, raft term, revision."""
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.node.term
        if revision is not None:
            h.revision = revision

    def current_revision(self) -> int:
        with self.mvcc.read() as r:
            return r.current_revision

    # --------------------------------------------------------------- reads

    def wait_linearizable(self) -> None:
        """Make the next local read reflect every write acknowledged before this call.

        A one-member cluster answers a write only after applying it, so there is
        nothing to wait for; the replicated node will confirm leadership here.
        """
        return None

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        try:
            with self.mvcc.read() as txn:
                resp = execute_range(txn, r)
        except (CompactedError, FutureRevError) as exc:
            raise mvcc_error(exc) from None
        self.header(resp.header)
        return resp

    def read_only_txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        try:
            with self.mvcc.read() as txn:
                resp = apply_txn(txn, r, self.lease_exists)
        except (CompactedError, FutureRevError) as exc:
            raise mvcc_error(exc) from None
        self.header(resp.header)
        return resp

    def alarms(self) -> list[pb.AlarmMember]:
        with self.backend.env.begin() as txn:
            return list_alarms(txn, self.backend.meta)

    def lease_exists(self, lease_id: int) -> bool:
        return False

    # -------------------------------------------------------------- writes

    def _check_quota(self, cost: int) -> None:
        if self.backend.size_bytes() + cost > self.quota_bytes:
            raise errors.NO_SPACE

    def propose(self, field: str, request, cost: int = 0, timeout: float = REQUEST_TIMEOUT):
        """Log a request, wait until it is applied, return its response with the header filled."""
        if cost:
            self._check_quota(cost)
        rid = self.node.next_id()
        internal = internal_pb2.InternalRequest(id=rid)
        getattr(internal, field).CopyFrom(request)
        data = internal.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        resp = self.node.propose(rid, data).wait(timeout)
        self.header(resp.header)
        return resp

    def put(self, r: pb.PutRequest) -> pb.PutResponse:
        return self.propose("put", r, cost=len(r.key) + len(r.value) + 64)

    def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return self.propose("delete_range", r)

    def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        if is_read_only(r):
            self.wait_linearizable()
            return self.read_only_txn(r)
        return self.propose("txn", r, cost=r.ByteSize())

    def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        self._compaction_done.clear()
        resp = self.propose("compaction", r)
        if r.physical:
            self._compaction_done.wait()
        return resp

    def _compact_step(self) -> bool:
        """Writer thread: remove one slice of compacted history; False when none is left."""
        with self.backend.env.begin(write=True) as txn:
            more = self.mvcc.compact_step(txn)
        if not more:
            self._compaction_done.set()
        return more

    # ------------------------------------------------------------ status

    def status(self) -> pb.StatusResponse:
        resp = pb.StatusResponse(
            version=SERVER_VERSION,
            dbSize=self.backend.size_bytes(),
            leader=self.node.leader_id,
            raftIndex=self.node.commit_index,
            raftTerm=self.node.term,
            raftAppliedIndex=self.applier.applied_index,
            dbSizeInUse=self.backend.in_use_bytes(),
            isLearner=False,
        )
        self.header(resp.header, self.current_revision())
        return resp
