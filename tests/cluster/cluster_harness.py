"""A cluster of real kubekv processes on 127.0.0.1, optionally behind a fault proxy.

    with Cluster(tmp_path, size=3, faults=True) as c:
        leader = c.wait_leader()
        c.net.isolate(leader.name)          # FaultNetwork, links keyed by member name
        c.kill9(c.followers()[0]); c.restart(...)

Every member has its own free client and peer ports and its own data dir. With
`faults=True` a `FaultNetwork` link sits on every directed pair of members: each
member is told (through KUBEKV_PEER_DIAL_OVERRIDE) to dial its peers at their link's
proxy port, while the peer URLs, and so the member IDs derived from them, stay the
real ones. Links are keyed by member name.

Readiness is a successful linearizable Range on every member (which needs a leader
and a quorum), never a sleep; `close()` resumes paused members and stops every
process and the proxy, whatever state the test left them in.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.member.cluster_ids import member_id
from kubekv_server.peer.peering import DIAL_OVERRIDE_ENV
from kubekv_testing.fault_proxy import FaultNetwork
from tests.harness import ROOT, ServerProcess, free_port

TOKEN = "kubekv-fault-tests"
# Fast enough for short tests, slow enough not to flap on a loaded 2-core machine.
HEARTBEAT_MS = 50
ELECTION_MS = 500

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll cond() until it returns something truthy (returned); AssertionError on timeout.

    Exceptions raised by cond count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last = None
    while True:
        try:
            last = cond()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - a member may be down or electing
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {last!r}, last error: {last_exc!r})")
        time.sleep(interval)


class ClusterMember(ServerProcess):
    """One member: a ServerProcess that can be launched without waiting for readiness."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.owner = cluster
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.id = member_id([self.peer_url], TOKEN)
        self.paused = False
        self.extra_env: dict[str, str] = {}
        data_dir = cluster.tmp / f"{name}.kubekv"
        super().__init__([], data_dir, self.client_port, cluster.tmp / f"{name}.log")

    def __repr__(self) -> str:
        return f"<{self.name} id={self.id:x} client=:{self.client_port} peer=:{self.peer_port}>"

    def command(self, initial_cluster: str, state: str) -> list[str]:
        c = self.owner
        url = f"http://127.0.0.1:{self.client_port}"
        return [
            sys.executable, "-m", "kubekv_server",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", url,
            "--advertise-client-urls", url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", TOKEN,
            "--heartbeat-interval", str(c.heartbeat_ms),
            "--election-timeout", str(c.election_ms),
            *c.extra_flags,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)  # the server runs on upb
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop(DIAL_OVERRIDE_ENV, None)
        net = self.owner.net
        if net is not None and self.name in net.members:
            by_name = {m.name: m for m in self.owner.all_members}
            dial = sorted(net.dial_map(self.name).items())
            env[DIAL_OVERRIDE_ENV] = ",".join(f"{by_name[d].id:x}={addr}" for d, addr in dial)
        env.update(self.extra_env)
        return env

    def launch(self) -> ClusterMember:
        """Start the process (its argv/env set by the cluster); do not wait for readiness."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self._close_channel()
        self.env = self.environment()
        log = open(self.log_path, "ab")
        log.write(f"\n===== launch {time.strftime('%H:%M:%S')} {self.argv}\n".encode())
        log.flush()
        import subprocess

        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=str(self.data_dir.parent),
        )
        log.close()
        self.paused = False
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def running(self) -> bool:
        """Alive and not paused."""
        return self.alive and not self.paused

    def status(self, timeout: float = 1.0) -> pb.StatusResponse:
        return self.maintenance.Status(pb.StatusRequest(), timeout=timeout)

    def hash_kv(self, revision: int, timeout: float = 5.0) -> pb.HashKVResponse:
        return self.maintenance.HashKV(pb.HashKVRequest(revision=revision), timeout=timeout)


class Cluster:
    """N kubekv members as real processes; see the module docstring."""

    def __init__(self, tmp: pathlib.Path, size: int = 3, *, faults: bool = False,
                 heartbeat_ms: int = HEARTBEAT_MS, election_ms: int = ELECTION_MS,
                 extra_flags: Sequence[str] = (), seed: int = 0) -> None:
        self.tmp = pathlib.Path(tmp)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_flags = list(extra_flags)
        self.members = [ClusterMember(self, f"m{i + 1}") for i in range(size)]
        self.all_members = list(self.members)  # including removed ones, to stop them all
        self.net: FaultNetwork | None = None
        if faults:
            self.net = FaultNetwork(seed=seed)
            self.net.add_cluster({m.name: m.peer_port for m in self.members})
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.argv = m.command(initial, "new")

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> Cluster:
        for m in self.members:
            m.launch()
        self.wait_ready(self.members, timeout)
        return self

    def wait_ready(self, members: Iterable[ClusterMember], timeout: float = 60.0) -> None:
        """Every member answers a linearizable Range (so it knows a leader with a quorum)."""
        members = list(members)
        deadline = time.monotonic() + timeout
        pending = list(members)
        last: dict[str, str] = {}
        while pending:
            for m in list(pending):
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"{m.name} exited with {m.proc.returncode}:\n"
                                       f"{m.log_tail()}")
                try:
                    m.kv.Range(pb.RangeRequest(key=b"health"), timeout=1)
                    pending.remove(m)
                except grpc.RpcError as exc:
                    last[m.name] = f"{exc.code().name}: {exc.details()}"
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}: {last.get(m.name)}\n{m.log_tail(20)}"
                                  for m in pending)
                raise RuntimeError(f"members not ready after {timeout}s:\n{tails}")
            if pending:
                time.sleep(0.05)

    def close(self) -> None:
        for m in self.all_members:
            try:
                if m.alive and m.paused:
                    m.proc.send_signal(signal.SIGCONT)
                    m.paused = False
            except OSError:
                pass
        for m in self.all_members:
            if m.alive:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.all_members:
            m.stop(timeout=10)
        if self.net is not None:
            self.net.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------- faults

    def kill9(self, m: ClusterMember) -> None:
        """SIGKILL, as a crash (also of a paused member)."""
        m.kill()
        m.paused = False

    def restart(self, m: ClusterMember, wait: bool = True, timeout: float = 60.0) -> None:
        """Start a stopped/killed member again from its data dir (SIGTERM first if running)."""
        if m.alive:
            if m.paused:
                self.cont(m)
            m.stop()
        m.launch()
        if wait:
            self.wait_ready([m], timeout)

    def pause(self, m: ClusterMember) -> None:
        """SIGSTOP: the process freezes with its sockets open."""
        m.proc.send_signal(signal.SIGSTOP)
        m.paused = True

    def cont(self, m: ClusterMember) -> None:
        m.proc.send_signal(signal.SIGCONT)
        m.paused = False

    # --------------------------------------------------------------- status

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member(self, name_or_id: str | int) -> ClusterMember:
        for m in self.all_members:
            if m.name == name_or_id or m.id == name_or_id:
                return m
        raise KeyError(name_or_id)

    def statuses(self, members: Iterable[ClusterMember] | None = None
                 ) -> dict[str, pb.StatusResponse | None]:
        """Status of each running member (None if it does not answer)."""
        out: dict[str, pb.StatusResponse | None] = {}
        for m in members if members is not None else self.members:
            if not m.running:
                out[m.name] = None
                continue
            try:
                out[m.name] = m.status()
            except grpc.RpcError:
                out[m.name] = None
        return out

    def leader(self, members: Iterable[ClusterMember] | None = None) -> ClusterMember | None:
        """The member every running member in `members` agrees leads and which says so itself."""
        members = [m for m in (members if members is not None else self.members) if m.running]
        if not members:
            return None
        sts = self.statuses(members)
        if any(s is None for s in sts.values()):
            return None
        leads = {s.leader for s in sts.values()}
        if len(leads) != 1:
            return None
        lead = leads.pop()
        if lead == 0:
            return None
        try:
            m = self.member(lead)
        except KeyError:
            return None
        if m.name not in sts or sts[m.name].header.member_id != lead:
            return None
        return m

    def wait_leader(self, members: Iterable[ClusterMember] | None = None,
                    timeout: float = 30.0, not_: ClusterMember | None = None) -> ClusterMember:
        """Wait until the running members (of `members`) agree on a leader among them."""
        members = list(members) if members is not None else None

        def ok():
            lead = self.leader(members)
            if lead is None or lead is not_:
                return None
            return lead

        return wait_for(ok, timeout, "an agreed leader" + (f" other than {not_.name}"
                                                              if not_ else ""))

    def followers(self) -> list[ClusterMember]:
        lead = self.wait_leader()
        return [m for m in self.members if m is not lead]

    def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every running member has applied the same index, equal to the commit
        index everyone reports; returns that applied index."""

        def ok():
            sts = self.statuses([m for m in self.members if m.running])
            if any(s is None for s in sts.values()):
                return None
            applied = {s.raftAppliedIndex for s in sts.values()}
            commits = {s.raftIndex for s in sts.values()}
            if len(applied) == 1 and applied == commits:
                return applied.pop()
            return None

        return wait_for(ok, timeout, "members to converge on one applied index")

    # ----------------------------------------------------------- membership

    def add_member(self, name: str, *, learner: bool, via: ClusterMember,
                   start: bool = True, ask_first: ClusterMember | None = None) -> ClusterMember:
        """MemberAdd through `via`, then start the new member with --initial-cluster-state
        existing. It talks to the others directly (its ID depends on the add time, so no
        proxy can be set up for it in advance). `ask_first` is listed first in its
        --initial-cluster, so it is the first peer asked for the member list."""
        m = ClusterMember(self, name)
        resp = via.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=[m.peer_url],
                                                         isLearner=learner), timeout=10)
        m.id = resp.member.ID
        self.all_members.append(m)
        self.members.append(m)
        names = {x.id: x.name for x in self.all_members}
        listed = sorted(resp.members, key=lambda x: ask_first is None or x.ID != ask_first.id)
        initial = ",".join(f"{names.get(x.ID, x.name) or name}={x.peerURLs[0]}" for x in listed)
        m.argv = m.command(initial, "existing")
        if start:
            m.launch()
        return m

    def forget(self, m: ClusterMember) -> None:
        """Drop a removed member from `members` (it is still stopped at close())."""
        self.members.remove(m)


def kv_stub(m: ClusterMember) -> rpc_pb2_grpc.KVStub:
    return m.kv
