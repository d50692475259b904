"""The cluster harness for tests: `kubekv.embed`'s `Cluster` and `Member` with what fault
tests need on top, so there is one way to start, stop and find the leader of real kubekv
processes on 127.0.0.1.

    c = Cluster(tmp_path, size=3, faults=True).start()
    leader = c.wait_leader()
    c.net.isolate(leader.name)          # FaultNetwork, links keyed by member name
    c.followers()[0].kill(); ...; c.close()

On top of embed: gRPC stubs on each member (`m.kv`, `m.maintenance`, `m.cluster`), member
IDs known before start (derived from the peer URL and token, as etcd does), timings fast
enough for fault tests by default, and with `faults=True` a `FaultNetwork` link on every
directed pair of members: each member is told (through KUBEKV_PEER_DIAL_OVERRIDE) to dial
its peers at their link's proxy port, while the peer URLs, and so the member IDs, stay the
real ones. `close()` resumes paused members and stops every process (also members dropped
with `forget()`) and the proxy, whatever state the test left them in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv import embed
from kubekv_server.member.cluster_ids import member_id
from kubekv_server.peer.peering import DIAL_OVERRIDE_ENV
from kubekv_testing.fault_proxy import FaultNetwork
from kubekv_testing.grpc_stubs import GrpcStubs
from kubekv_testing.polling import wait_for

__all__ = ["ELECTION_MS", "ETCD_TIMINGS", "HEARTBEAT_MS", "TOKEN", "Cluster", "ClusterMember"]

TOKEN = "kubekv-fault-tests"
# Fast enough for short tests, slow enough not to flap on a loaded 2-core machine.
HEARTBEAT_MS = 50
ELECTION_MS = 500
# etcd's own timings (heartbeat 100 ms, election 1 s), for tests whose timing assumes them.
ETCD_TIMINGS = {"heartbeat_ms": embed.ETCD_HEARTBEAT_MS, "election_ms": embed.ETCD_ELECTION_MS}
# How long wait_leader waits by default: a few elections on a loaded machine.
LEADER_TIMEOUT = 30.0


class ClusterMember(GrpcStubs, embed.Member):
    """An embedded member with gRPC stubs and its member ID known before it starts."""

    _cluster: Cluster

    def __init__(self, name: str, **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.peer_scheme = "https" if self._cluster.peer_tls else "http"
        self._member_id = member_id([self.peer_url], self._cluster.token)

    def __repr__(self) -> str:
        return f"<{self.name} id={self.id:x} client=:{self.port} peer=:{self.peer_port}>"

    @property
    def id(self) -> int:
        """The Raft member ID (derived from the peer URL, or MemberAdd's answer)."""
        return self.member_id

    @property
    def peer_url(self) -> str:  # type: ignore[override]
        return f"{self.peer_scheme}://{self.host}:{self.peer_port}"

    @property
    def client_port(self) -> int:
        return self.port

    def _new_ports(self) -> None:
        super()._new_ports()
        self._member_id = member_id([self.peer_url], self._cluster.token)
        net = self._cluster.net
        if net is not None:
            for link in net.links:
                if link.dst == self.name:
                    link.target_port = self.peer_port

    # ------------------------------------------------------------------ gRPC

    def hash_kv(self, revision: int, timeout: float = 5.0) -> pb.HashKVResponse:
        return self.maintenance.HashKV(pb.HashKVRequest(revision=revision), timeout=timeout)

    # --------------------------------------------------------------- process

    def environment(self) -> dict[str, str]:
        """embed's environment, plus the fault proxy's dial map when the cluster has one."""
        env = super().environment()
        env.pop(DIAL_OVERRIDE_ENV, None)
        net = self._cluster.net
        if net is not None and self.name in net.members:
            by_name = {m.name: m for m in [*self._cluster.members, *self._cluster._forgotten]}
            dial = sorted(net.dial_map(self.name).items())
            env[DIAL_OVERRIDE_ENV] = ",".join(f"{by_name[d].id:x}={addr}" for d, addr in dial)
        env.update(self.extra_env)
        return env

    def launch(self) -> ClusterMember:
        self._close_channel()
        super().launch()
        return self

    def kill(self) -> None:
        self._close_channel()
        super().kill()

    def stop(self, timeout: float = embed.DEFAULT_STOP_TIMEOUT) -> int | None:
        self._close_channel()
        return super().stop(timeout)


class Cluster(embed.Cluster):
    """`size` members in `tmp` (logs and data dirs stay there), not started until
    `start()`; see the module docstring."""

    member_class = ClusterMember
    members: list[ClusterMember]  # type: ignore[assignment]

    def __init__(self, tmp: str | os.PathLike, size: int = 3, *, faults: bool = False,
                 heartbeat_ms: int = HEARTBEAT_MS, election_ms: int = ELECTION_MS,
                 flags: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 token: str = TOKEN, seed: int = 0, peer_tls: bool = False) -> None:
        self.peer_tls = peer_tls  # https peer URLs (with --peer-auto-tls or peer certs)
        # The fault network must exist before the members: their environment reads it.
        self.net: FaultNetwork | None = FaultNetwork(seed=seed) if faults else None
        self._forgotten: list[ClusterMember] = []
        super().__init__(size, base_dir=tmp, flags=flags, env=env, heartbeat_ms=heartbeat_ms,
                         election_ms=election_ms, token=token)
        self._founders = list(self.members)
        if self.net is not None:
            self.net.add_cluster({m.name: m.peer_port for m in self.members})

    def initial_cluster(self) -> str:
        """The members the cluster was created with, also after some were forgotten: a
        restarted member gets the command line it first had."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self._founders)

    def __enter__(self) -> Cluster:
        return self  # started by the test, which may change members first

    def close(self) -> None:
        try:
            for m in self._forgotten:
                m.close()
            super().close()
        finally:
            if self.net is not None:
                self.net.close()

    def forget(self, m: ClusterMember) -> None:
        """Drop a removed member from `members` (it is still stopped at close())."""
        self.members.remove(m)
        self._forgotten.append(m)

    # --------------------------------------------------------------- status

    def statuses(self, members: Iterable[embed.Member] | None = None  # type: ignore[override]
                 ) -> dict[str, embed.MemberStatus | None]:
        """Status of each member given (default: all) by name; None for one that is down,
        paused or does not answer."""
        out: dict[str, embed.MemberStatus | None] = {}
        for m in members if members is not None else self.members:
            out[m.name] = None
            if m.running:
                try:
                    out[m.name] = m.status()
                except embed.GatewayError:
                    pass
        return out

    def leader(self, members: Iterable[ClusterMember] | None = None  # type: ignore[override]
               ) -> ClusterMember | None:
        """The member every running member of `members` (default: all) agrees leads, and
        which says so itself; None while any of them is silent or they disagree."""
        running = [m for m in (members if members is not None else self.members) if m.running]
        if not running:
            return None
        sts = self.statuses(running)
        if any(s is None for s in sts.values()):
            return None
        leads = {s.leader for s in sts.values() if s is not None}
        if len(leads) != 1 or 0 in leads:
            return None
        lead = leads.pop()
        for m in running:
            st = sts[m.name]
            if st is not None and st.member_id == lead:
                return m
        return None

    def wait_leader(self, timeout: float | None = None,  # type: ignore[override]
                    exclude: embed.Member | None = None, *,
                    members: Iterable[ClusterMember] | None = None) -> ClusterMember:
        """Wait until the running members (of `members`) agree on a leader among them,
        other than `exclude` (e.g. the one a test just stopped)."""
        timeout = LEADER_TIMEOUT if timeout is None else timeout
        chosen = list(members) if members is not None else None

        def agreed() -> ClusterMember | None:
            lead = self.leader(chosen)
            return None if lead is exclude else lead

        what = "an agreed leader" + (f" other than {exclude.name}" if exclude else "")
        return wait_for(agreed, timeout, what)

    def followers(self) -> list[ClusterMember]:  # type: ignore[override]
        lead = self.wait_leader()
        return [m for m in self.members if m is not lead]

    def live_members(self) -> list[ClusterMember]:
        """Members whose process exists (paused ones included)."""
        return [m for m in self.members if m.alive]

    def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every running member has applied the same index, equal to the commit
        index everyone reports; returns that applied index."""

        def converged() -> int | None:
            sts = self.statuses([m for m in self.members if m.running])
            if any(s is None for s in sts.values()):
                return None
            applied = {s.raft_applied_index for s in sts.values() if s is not None}
            commits = {s.raft_index for s in sts.values() if s is not None}
            if len(applied) == 1 and applied == commits:
                return applied.pop()
            return None

        return wait_for(converged, timeout, "members to converge on one applied index")
