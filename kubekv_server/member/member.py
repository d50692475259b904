"""One kubekv member: its data directory, identity, stores and commit path, behind one API.

The gRPC services call into a Member, a facade over pieces with one job each:
`bootstrap` (identity, join, publish), `reads` (read barrier, Range, read-only
Txn), `proposals` (requests that become log entries, quota), `lease_leadership`,
`reconfiguration`, `leadership` and `maintenance`. The Member owns the stores and
the Raft node, starts and stops them, keeps the member list current after each
applied batch, and fills every response header the way etcd does (`header`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.apply.applier import Applier, BatchResult
from kubekv_server.auth import AuthStore, password, token_provider
from kubekv_server.config.flags import Config
from kubekv_server.kv.range import EncodedRange
from kubekv_server.lease import LeaseStore, Lessor, min_lease_ttl
from kubekv_server.lease.lessor import DEFAULT_CHECKPOINT_INTERVAL
from kubekv_server.member import corruption
from kubekv_server.member.auto_compaction import REVISION_INTERVAL, AutoCompactor
from kubekv_server.member.bootstrap import (
    import_etcd_backend,
    join_existing,
    load_identity,
    open_stores,
    publish,
    refuse,
)
from kubekv_server.member.force_new_cluster import force_standalone
from kubekv_server.member.leadership import Leadership
from kubekv_server.member.lease_leadership import LeaseLeadership, mirror_lease_changes
from kubekv_server.member.loop_bridge import call_on_loop
from kubekv_server.member.maintenance import Maintenance
from kubekv_server.member.proposals import DEFAULT_QUOTA_BYTES, REQUEST_TIMEOUT, Proposer
from kubekv_server.member.reads import Reads
from kubekv_server.member.reconfiguration import Reconfiguration
from kubekv_server.mvcc import CorruptStoreError, MVCCStore
from kubekv_server.mvcc.compactor import Compactor
from kubekv_server.peer import lease_forward
from kubekv_server.peer.peering import Peering, PeerServing
from kubekv_server.replication.raft_node import RaftNode
from kubekv_server.watch import WatchHub
from kubekv_server.watch.hub import DEFAULT_MAX_PENDING, RECENT_REVISIONS
from kubekv_server.watch.sync import SyncThread

log = logging.getLogger("kubekv.member")


class Member:
    """The server side of a member: its stores and Raft node, and the API the services call."""

    def __init__(self, cfg: Config, make_peer_server: Callable[..., PeerServing]) -> None:
        """`make_peer_server(guard, identity=...)`: the peer port's gRPC server (the
        assembly hands down rpc/'s PeerServer: this layer may not import the client edge)."""
        self.cfg = cfg
        self.make_peer_server = make_peer_server
        self.data_dir = os.path.abspath(cfg.data_dir)
        member_dir = os.path.join(self.data_dir, "member")
        # --unsafe-no-fsync: no fsync anywhere (etcd: "unsafe, will cause data loss")
        fsync = not cfg.unsafe_no_fsync
        # --wal-dir: the Raft log (our WAL) in a directory of its own, as etcd's WAL
        log_dir = os.path.abspath(cfg.wal_dir) if cfg.wal_dir else \
            os.path.join(member_dir, "log")
        self.backend, self.storage = open_stores(
            self.data_dir, os.path.join(member_dir, "state"), log_dir, fsync)
        # etcd's backend batching: 0 means its defaults, a negative limit every batch
        if cfg.backend_batch_interval > 0:
            self.backend.batch_interval = cfg.backend_batch_interval
        if cfg.backend_batch_limit:
            self.backend.batch_limit = max(cfg.backend_batch_limit, 1)
        try:
            self.mvcc = MVCCStore(self.backend.env)  # upgrades an older layout
        except CorruptStoreError as e:
            refuse(f"state db: {e}")
        self.backend.on_install.append(self.mvcc.upgrade_layout)
        self.password_iterations = password.iterations_for_flag(cfg.bcrypt_cost)
        identity = load_identity(cfg, self.backend, self.storage)
        self.member_id, self.cluster_id = identity.member_id, identity.cluster_id
        self.members = identity.members
        self._restarted = identity.restarted
        self.peering: Peering | None = None
        self.node: RaftNode | None = None
        # --experimental-enable-lease-checkpoint: every 5 minutes, as etcd (tests shorten it)
        self.lessor = Lessor(time.monotonic, (cfg.tuning.lease_checkpoint_interval or
                             DEFAULT_CHECKPOINT_INTERVAL) if cfg.lease_checkpoint else 0.0)
        self.leases = LeaseStore(
            self.backend, min_lease_ttl(cfg.election_timeout_ms, cfg.heartbeat_interval_ms)
        )
        self.auth = AuthStore(self.backend, token_provider(cfg), cfg.client_cert_auth,
                              applied_index=lambda: self.applier.applied_index)
        self._imported = import_etcd_backend(self.data_dir, self.backend, self.mvcc,
                                             self.leases)
        self.applier = Applier(
            self.backend, self.mvcc, self.leases, auth=self.auth,
        )
        self.applier.slow_apply_seconds = cfg.warning_apply_duration
        self.compactor = Compactor(self.backend, self.mvcc)
        # Tuning knobs (tests make them small; config/tuning.py)
        max_pending = cfg.tuning.watch_max_pending or DEFAULT_MAX_PENDING
        recent = cfg.tuning.watch_recent_revisions or RECENT_REVISIONS
        self.watch_hub = WatchHub(self.mvcc, max_pending=max_pending, recent_revisions=recent)
        self.quota_bytes = cfg.quota_backend_bytes or DEFAULT_QUOTA_BYTES
        self.backend.quota_bytes = self.quota_bytes  # near it, the state db commits each batch
        self.stopping = threading.Event()  # set when stop() begins: worker loops end on it
        self.request_timeout = REQUEST_TIMEOUT
        self.on_removed = None  # called when this member is removed from the cluster
        # called with the error that stopped Raft here (a failed log write or state db
        # commit, a broken Raft invariant): the process must not go on serving (server.py)
        self.on_fatal = None
        # set once Raft runs (before a leader is known): etcd serves its metrics listener
        # from then on, while its client listeners wait for the member to be ready
        self.raft_started = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start on the running event loop; returns once the member knows a leader and has
        published its name and client URLs through the log (etcd's "published" step)."""
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        if not self.member_id:
            identity = await join_existing(cfg, self.backend)
            self.member_id, self.cluster_id = identity.member_id, identity.cluster_id
            self.members = identity.members
        # Raft restarts from the membership as of the applied index (kept in the state db).
        self.storage.set_conf_state(self.applier.conf_state())
        if cfg.force_new_cluster and self._restarted:
            force_standalone(
                self.storage, self.applier.conf_state(), self.applier.applied_index,
                self.member_id, self.cluster_id,
                {"id": self.member_id, "name": cfg.name, "clientURLs": [], "isLearner": False,
                 "peerURLs": sorted(cfg.initial_advertise_peer_urls)},
            )
        self.members = self.applier.members()
        self.removed_ids = set(self.applier.removed_members())
        self.peering = Peering(cfg, self.member_id, self.cluster_id, self.data_dir,
                               self.make_peer_server)
        self.node = RaftNode(
            self.storage,
            self.applier,
            self.member_id,
            heartbeat_ms=cfg.heartbeat_interval_ms,
            election_ms=cfg.election_timeout_ms,
            transport_factory=self.peering.make_transport,
            backend=self.backend,
            snapshot_dir=os.path.join(self.data_dir, "member", "snap"),
            snapshot_count=cfg.snapshot_count,
        )
        self._compose()
        self.node.on_fatal = self._fatal
        self.node.on_snapshot_installed(self._snapshot_installed)
        # after apply, on the loop (contract: replication/raft_node.py); the lessor first,
        # as the listeners after it (lease leadership) read it
        self.node.add_listener(
            lambda result: mirror_lease_changes(self.lessor, result.lease_changes))
        self.node.add_listener(self._notify_watchers)
        self.node.add_listener(self._after_apply)
        self.node.add_listener(self.lease_leadership.on_applied)
        self.compactor.start()
        with self.backend.env.begin() as txn:
            self.lessor.restore(self.leases.all(txn))  # replayed entries then update it
        await self.node.start()
        self.peering.set_members(self.members)
        self._lease_peer = lease_forward.LeasePeerServicer(self)
        self.lease_forwarder = lease_forward.LeaseForwarder(self.peering)
        await self.peering.start(
            self.node.message_handler, lambda: self.members,
            services=[
                (lease_forward.lp.DESCRIPTOR.services_by_name["LeasePeer"], self._lease_peer,
                 [lease_forward.lp, lease_forward.pb]),
                (corruption.hp.DESCRIPTOR.services_by_name["HashPeer"],
                 corruption.HashPeerServicer(self), [corruption.hp, corruption.pb]),
            ],
            is_removed=lambda mid: mid in self.removed_ids,
            on_removed=self._removed,
        )
        self.raft_started.set()
        if len(self.members) > 1:
            self._tick_advance = asyncio.ensure_future(self.leadership.advance_election_ticks())
        while not await self.node.wait_leader(5.0):
            log.warning("event=waiting_for_leader member_id=%x", self.member_id)
        await publish(cfg, self.node, self.member_id)
        if self.cfg.initial_corrupt_check:
            try:
                await corruption.initial_check(self, self.request_timeout)
            except RuntimeError as exc:
                log.critical('msg="failed to start" error="%s"', exc)
                raise SystemExit(1) from None
        if self._imported:
            await self.node.force_snapshot()  # new members must get the imported state
        self.watch_hub.catch_up_revision()
        self._watch_sync = SyncThread(self.watch_hub)
        self._watch_sync.start()
        self.lease_leadership.start()
        if self.cfg.auto_compaction_retention:
            AutoCompactor(
                self.cfg.auto_compaction_mode, self.cfg.auto_compaction_retention,
                self.current_revision,
                lambda rev: self.compact(pb.CompactionRequest(revision=rev)),
                self.is_leader, self.stopping, self.cfg.tuning.revision_compaction_interval
                or REVISION_INTERVAL,
            ).start()
        if self.cfg.corrupt_check_interval:
            corruption.CorruptionMonitor(self, self.cfg.corrupt_check_interval,
                                         self.stopping).start()

    def _compose(self) -> None:
        """The pieces behind the public API, once the Raft node exists; each gets only
        what it needs (the member list as a function: each conf change replaces it)."""
        cfg, node = self.cfg, self.node
        members = lambda: self.members  # noqa: E731
        election_timeout = cfg.election_timeout_ms / 1000
        self.maintenance = Maintenance(self.member_id, node, self.backend, self.mvcc,
                                       self.leases, self.auth, self.applier, self.compactor,
                                       members)
        self.proposer = Proposer(self.loop, node, self.member_id, cfg.max_request_bytes,
                                 self.quota_bytes, self.backend.quota_size, self.header)
        self.reads = Reads(self.loop, node, self.mvcc, self.lease_exists, self.header)
        self.lease_leadership = LeaseLeadership(
            self.loop, node, self.lessor, self.proposer, lambda: self.applier.applied_index,
            election_timeout, self.stopping)
        self.reconfiguration = Reconfiguration(
            self.member_id, node, self.peering, members, cfg.initial_cluster_token,
            cfg.strict_reconfig_check)
        self.leadership = Leadership(self.loop, self.member_id, node, self.peering, members,
                                     election_timeout, self.stopping)

    async def stop(self) -> None:
        await self.transfer_leadership()
        self.stopping.set()
        tick_advance = getattr(self, "_tick_advance", None)
        if tick_advance is not None:
            tick_advance.cancel()
        if getattr(self, "_watch_sync", None) is not None:
            self._watch_sync.stop()
        if self.peering is not None:
            await self.peering.stop_server()  # no peer input for a stopping node
        if self.node is not None:
            await self.node.stop()
        if self.peering is not None:
            await self.peering.stop()
        if getattr(self, "lease_forwarder", None) is not None:
            await self.lease_forwarder.close()
            self._lease_peer.close()
        self.compactor.stop()
        self.storage.close()
        self.backend.close()

    # ---------------------------------------------------- apply listeners

    def _notify_watchers(self, result: BatchResult) -> None:
        self.watch_hub.notify(result.revisions)

    def _after_apply(self, result: BatchResult) -> None:
        """Loop thread, after each applied batch: what the batch changed for this member."""
        self.proposer.refresh_db_size()  # for the quota check, once per batch
        if result.compaction_scheduled:
            self.compactor.kick()
        if result.membership_changed:
            self.members = self.applier.members()
            self.removed_ids = set(self.applier.removed_members())
            self.peering.set_members(self.members)
            if self.member_id not in {m["id"] for m in self.members} and self.members:
                log.warning("event=removed_from_cluster member_id=%x msg=\"the member has been "
                            "permanently removed from the cluster\"", self.member_id)
                if self.on_removed is not None:
                    self.on_removed()

    def _removed(self) -> None:
        """A peer told us we were removed (we may have been cut off when it happened)."""
        log.warning("event=removed_from_cluster member_id=%x msg=\"the member has been "
                    "permanently removed from the cluster\"", self.member_id)
        if self.on_removed is not None:
            self.on_removed()

    def _fatal(self, exc: BaseException) -> None:
        """Raft stopped here for good: hand it to whoever runs the member."""
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _snapshot_installed(self) -> None:
        """The leader's snapshot replaced our state: reload what is cached from it."""
        self.members = self.applier.members()
        self.peering.set_members(self.members)
        self.auth.reload()
        with self.backend.env.begin() as txn:
            self.lessor.reset(self.leases.all(txn))
        self.watch_hub.restored()
        self.compactor.kick()

    # ------------------------------------------------------------- headers

    def header(self, h: pb.ResponseHeader, revision: int | None = None,
               term: int | None = None) -> None:
        """Fill a response header: cluster and member ids, raft term, revision. The one
        place headers are filled; `term` is for a caller that keys a cache on it."""
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.node.term if term is None else term
        if revision is not None:
            h.revision = revision

    def current_revision(self) -> int:
        with self.mvcc.read() as r:
            return r.current_revision

    # --------------------------------------------------------------- reads

    def read_barrier(self) -> asyncio.Future | None:
        """Loop thread: what a linearizable read must wait for, or None to read at once."""
        return self.reads.read_barrier()

    def wait_linearizable(self) -> None:
        """Worker threads: block until a local read is linearizable."""
        self.reads.wait_linearizable()

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        return self.reads.range(r)

    def range_for_client(self, r: pb.RangeRequest) -> pb.RangeResponse | EncodedRange:
        return self.reads.range_for_client(r)

    def read_only_txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        return self.reads.read_only_txn(r)

    def lease_exists(self, lease_id: int) -> bool:
        return self.lessor.exists(lease_id)

    # -------------------------------------------------------------- writes

    def propose_future(self, field: str, request, cost: int = 0,
                       timeout: float = REQUEST_TIMEOUT) -> asyncio.Future:
        """Loop thread: log a request; the future resolves to its response, header filled."""
        return self.proposer.propose_future(field, request, cost, timeout)

    def propose(self, field: str, request, cost: int = 0, timeout: float = REQUEST_TIMEOUT):
        """Worker threads only: log a request and block until its response (or a timeout)."""
        return self.proposer.propose(field, request, cost, timeout)

    def blocking(self, fn, *args, timeout: float = REQUEST_TIMEOUT + 1.0):
        """Worker threads only: run fn(*args) on the loop; its result, or its future's."""
        return call_on_loop(self.loop, fn, *args, timeout=timeout)

    def put(self, r: pb.PutRequest, cost: int) -> asyncio.Future:
        """Loop thread: propose a Put; `cost` is its quota cost (from
        `request_checks.check_put`)."""
        return self.proposer.propose_future("put", r, cost)

    def delete_range(self, r: pb.DeleteRangeRequest) -> asyncio.Future:
        return self.proposer.propose_future("delete_range", r)

    def txn(self, r: pb.TxnRequest, cost: int) -> asyncio.Future:
        """Loop thread: propose a txn that writes (read-only ones are `read_only_txn`'s);
        `cost` is its quota cost (found by `request_checks.check_txn`)."""
        return self.proposer.propose_future("txn", r, cost)

    def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        resp = self.propose("compaction", r)
        self.compactor.kick()
        if r.physical:
            self.compactor.wait_idle()
        return resp

    # ------------------------------------------------------------- leases

    def is_leader(self) -> bool:
        """Whether this member leads (only the leader's lessor runs lease deadlines)."""
        return self.node.leader_id == self.member_id

    def checkpoint_leases(self, checkpoints: list[tuple[int, int]]) -> None:
        """Any thread: record leases' remaining TTLs through the log (etcd's lessor cp)."""
        self.lease_leadership.checkpoint(checkpoints)

    def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        return self.lease_leadership.grant(r)

    def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return self.lease_leadership.revoke(r)

    def lease_renew(self, lease_id: int) -> int:
        """KeepAlive (worker thread): the leader's renewed TTL, 0 when the lease is gone
        (etcd answers TTL 0); a follower forwards to the leader (`peer/lease_forward.py`)."""
        return lease_forward.renew(self, lease_id)

    def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        """Worker thread: the leader's view of the lease (forwarded from a follower)."""
        resp = lease_forward.time_to_live(self, r)
        self.header(resp.header, self.current_revision())
        return resp

    def lease_leases(self) -> pb.LeaseLeasesResponse:
        resp = pb.LeaseLeasesResponse()
        for lease_id in self.lessor.ids():
            resp.leases.add(ID=lease_id)
        self.header(resp.header, self.current_revision())
        return resp

    # -------------------------------------------------------- maintenance

    async def defragment(self) -> None:
        """Maintenance.Defragment (see `backend/defragment.py`)."""
        await self.maintenance.defragment()
        self.proposer.refresh_db_size()

    def export_snapshot(self) -> bytes:
        """The state as an etcd backend file (bbolt), for Maintenance.Snapshot. Any thread
        but the loop's and the apply thread's."""
        self.node.commit_state()  # every applied change in the file it exports
        return self.maintenance.export_snapshot()

    def status(self) -> pb.StatusResponse:
        resp = self.maintenance.status()
        self.header(resp.header, self.current_revision())
        return resp

    def alarms(self) -> list[pb.AlarmMember]:
        return self.maintenance.alarms()

    # ------------------------------------------------- membership, leadership

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> dict:
        return await self.reconfiguration.member_add(peer_urls, is_learner)

    async def member_remove(self, mid: int) -> None:
        await self.reconfiguration.member_remove(mid)

    async def member_update(self, mid: int, peer_urls: list[str]) -> None:
        await self.reconfiguration.member_update(mid, peer_urls)

    async def member_promote(self, mid: int) -> None:
        await self.reconfiguration.member_promote(mid)

    async def transfer_leadership(self) -> None:
        """Before stopping, a leader hands over to its most up-to-date active voter."""
        if self.node is not None:
            await self.leadership.transfer_on_stop()

    async def move_leader(self, target: int, timeout: float = REQUEST_TIMEOUT) -> None:
        """Maintenance.MoveLeader: only the leader may hand over, to a voter."""
        await self.leadership.move_leader(target, timeout)
