"""The peer side of a member: Raft transport to the others, the peer gRPC server, peer TLS.

The peer port (--listen-peer-urls) serves kubekv_raft's RaftPeer service (message
streams and snapshots), the MemberDirectory, which a member joining an existing
cluster asks for the member list it was added to, and the services a member adds
(LeasePeer: lease calls a follower forwards to the leader, `peer/lease_forward.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from etcdproto.kubekvpb import directory_pb2, directory_pb2_grpc
from etcdproto.raftpb import peer_pb2
from kubekv_server.config.flags import Config
from kubekv_server.peer.bounds import MAX_SNAPSHOT_BYTES
from kubekv_server.peer.call_guard import PeerCallGuard
from kubekv_server.peer.peer_url import parse_peer_url
from kubekv_server.peer.receiver import RaftPeerServicer
from kubekv_server.peer.sender import GrpcTransport
from kubekv_server.tls import peer as peer_tls
from kubekv_server.tls.client import load_crl, pem_revoked

log = logging.getLogger("kubekv.peer")

# A test-only override of where to dial a peer: "id=host:port,..." (ids in hex). Fault
# tests put a proxy between members without changing the URLs their IDs derive from.
DIAL_OVERRIDE_ENV = "KUBEKV_PEER_DIAL_OVERRIDE"
# The round-trip prober (etcd's rafthttp prober: an HTTP GET of /raft/probing to every
# peer every proberInterval = ConnReadTimeout - 1 s = 4 s): a MemberDirectory call on a
# connection of its own, timed, for etcd_network_peer_round_trip_time_seconds.
PROBE_INTERVAL = 4.0
# a probe slower than this is a failed probe (etcd's probing client gives up at 5 s);
# below the interval so rounds never overlap
PROBE_TIMEOUT = 3.0
# Seconds between dials of a peer whose stream broke or never opened: etcd's stream
# readers redial every 100 ms, however long the peer has been away, so a restarted
# member hears from its leader at once (an exponential backoff up to seconds kept a
# restarted follower waiting for its leader, and so for its client port, for seconds).
PEER_REDIAL_SECONDS = 0.1


def _dial_overrides() -> dict[int, str]:
    out = {}
    for item in filter(None, os.environ.get(DIAL_OVERRIDE_ENV, "").split(",")):
        pid, _, addr = item.partition("=")
        out[int(pid, 16)] = addr
    return out


class PeerServing(Protocol):
    """The peer port's gRPC server (kubekv_server/rpc/peer_server.py's PeerServer, made
    by the assembly: this layer may not import the client edge)."""

    def add_service(self, service: Any, servicer: Any, pb_modules: list) -> None: ...

    async def listen(self, target: str, ssl_context: ssl.SSLContext | None) -> None: ...

    async def stop(self, grace: float = 0.5) -> None: ...


class DirectoryServicer(directory_pb2_grpc.MemberDirectoryServicer):
    def __init__(self, cluster_id: int, members) -> None:
        self.cluster_id = cluster_id
        self.members = members  # () -> list[dict]

    async def Members(self, request, context):
        return directory_pb2.MembersResponse(
            cluster_id=self.cluster_id, members_json=json.dumps(self.members())
        )


class _SnapshotSource:
    """What the transport streams for a MsgSnap: the snapshot file the node points at."""

    def __init__(self, node) -> None:
        self.node = node

    def open(self, snapshot):
        return self.node.snapshot_reader(snapshot)


class Peering:
    """Owns the transport and the peer server of one member."""

    def __init__(self, cfg: Config, member_id: int, cluster_id: int, data_dir: str,
                 make_server: Callable[..., PeerServing]) -> None:
        self.cfg = cfg
        # make_server(guard, identity=...): the peer server (rpc/peer_server.PeerServer)
        self.make_server = make_server
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.data_dir = data_dir
        self.transport: GrpcTransport | None = None
        self.servicer: RaftPeerServicer | None = None
        self._server: PeerServing | None = None
        self._guard: PeerCallGuard | None = None
        self._overrides = _dial_overrides()
        self._auto_cert: tuple[str, str] | None = None
        # on_rtt(peer id, seconds): each successful probe's round trip (member metrics)
        self.on_rtt: Callable[[int, float], None] | None = None
        self._prober: asyncio.Task | None = None
        self._probe_channels: dict[int, tuple[str, grpc.aio.Channel]] = {}
        # peer id -> monotonic time of its last answered probe: a follower's view of
        # peers it has no Raft stream to (etcd keeps streams to every peer)
        self.last_probe_ok: dict[int, float] = {}

    # ----------------------------------------------------------------- TLS

    def _auto_tls_cert(self) -> tuple[str, str]:
        if self._auto_cert is None:
            self._auto_cert = peer_tls.auto_tls_cert(
                self.data_dir, "peer", self.cfg.listen_peer_urls,
                self.cfg.self_signed_cert_validity,
            )
        return self._auto_cert

    def _server_ssl_context(self) -> ssl.SSLContext:
        cfg = self.cfg
        if cfg.peer_cert_file and cfg.peer_key_file:
            return peer_tls.server_ssl_context(
                cfg.peer_cert_file, cfg.peer_key_file, cfg.peer_trusted_ca_file or None,
                cfg.peer_client_cert_auth,
            )
        if cfg.peer_auto_tls:
            cert, key = self._auto_tls_cert()
            return peer_tls.server_ssl_context(cert, key)
        raise SystemExit("kubekv: https peer URLs need --peer-cert-file/--peer-key-file "
                         "or --peer-auto-tls")

    def _client_tls(self, make: Callable[..., Any]) -> Any:
        """How outgoing peer connections authenticate, built by `make` (gRPC credentials
        for the grpc.aio calls, an ssl.SSLContext for the message streams): the trusted
        CA, or with --peer-auto-tls a function of the target trusting exactly the peer's
        own certificate (trust on first use); None without TLS."""
        cfg = self.cfg
        if cfg.peer_trusted_ca_file:
            return make(cfg.peer_trusted_ca_file, cfg.peer_cert_file or None,
                        cfg.peer_key_file or None)
        if cfg.peer_auto_tls:
            cert, key = self._auto_tls_cert()

            def trust_on_first_use(target: str) -> Any:
                host, _, port = target.rpartition(":")
                pem = peer_tls.fetch_peer_certificate(host, int(port))
                return make(None, cert, key, root_pem=pem)

            return trust_on_first_use
        return None

    # ------------------------------------------------------------ transport

    def make_transport(self, node) -> GrpcTransport:
        self.transport = GrpcTransport(
            self.member_id, self.cluster_id,
            credentials=self._client_tls(peer_tls.channel_credentials),
            ssl_context=self._client_tls(peer_tls.stream_ssl_context),
            snapshot_source=_SnapshotSource(node),
            backoff_initial=PEER_REDIAL_SECONDS, backoff_max=PEER_REDIAL_SECONDS,
        )
        # etcd: td = newTimeoutDetector(2 * heartbeat)
        self.transport.heartbeat_late = 2 * self.cfg.heartbeat_interval_ms / 1000.0
        return self.transport

    def _count_received(self, sender: int, nbytes: int) -> None:
        """Bytes a known peer sent us (unknown senders are not counted: the table stays
        bounded by the member list whatever a peer claims to be)."""
        p = self.transport._peers.get(sender) if self.transport is not None else None  # noqa: SLF001
        if p is not None:
            p.status.bytes_received += nbytes

    # ---------------------------------------------------------------- prober

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.transport is None:
                continue
            peers = self.transport.peers()
            for pid in set(self._probe_channels) - set(peers):
                await self._probe_channels.pop(pid)[1].close()
                self.last_probe_ok.pop(pid, None)
            await asyncio.gather(*(self._probe(pid, urls[0]) for pid, urls in peers.items()
                                   if urls))

    async def _probe(self, pid: int, url: str) -> None:
        """One timed call to a peer; a failure only leaves a gap, as etcd's prober."""
        try:
            cached = self._probe_channels.get(pid)
            if cached is None or cached[0] != url:
                if cached is not None:
                    await cached[1].close()
                cached = self._probe_channels[pid] = (url, await self.dial(url))
            stub = directory_pb2_grpc.MemberDirectoryStub(cached[1])
            started = time.perf_counter()
            await stub.Members(directory_pb2.MembersRequest(), timeout=PROBE_TIMEOUT)
            rtt = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - the peer is down or slow: no sample
            log.debug("event=peer_probe_failed peer=%x error=%s", pid, type(exc).__name__)
            return
        self.last_probe_ok[pid] = time.monotonic()
        if self.on_rtt is not None:
            self.on_rtt(pid, rtt)

    def set_members(self, members: list[dict]) -> None:
        """Keep the transport's peer table equal to the member list (minus ourselves)."""
        t = self.transport
        if t is None:
            return
        wanted = {}
        for m in members:
            if m["id"] == self.member_id:
                continue
            urls = list(m["peerURLs"])
            if m["id"] in self._overrides:
                urls = [f"http://{self._overrides[m['id']]}"]
            wanted[m["id"]] = urls
        current = t.peers()
        for pid in set(current) - set(wanted):
            t.remove_peer(pid)
        for pid, urls in wanted.items():
            if pid not in current:
                t.add_peer(pid, urls)
            elif sorted(current[pid]) != sorted(urls):
                t.update_peer(pid, urls)

    # --------------------------------------------------------------- server

    def peer_urls(self, peer_id: int) -> list[str]:
        """Where to dial a member (its peer URLs, or the test dial override)."""
        return self.transport.peers().get(peer_id, []) if self.transport is not None else []

    async def dial(self, url: str) -> grpc.aio.Channel:
        """A new channel to a peer URL, with the transport's options and credentials."""
        return await self.transport._channel(url)  # noqa: SLF001 - same credentials rules

    async def start(self, runner, members, services=(), is_removed=None,
                    on_removed=None) -> None:
        """Serve RaftPeer, MemberDirectory and `services` ((service descriptor, servicer,
        pb modules) triples) on every --listen-peer-urls address.

        `is_removed(id)`: refuse a removed member's messages (it then stops);
        `on_removed()`: called when a peer refuses us that way.
        """
        loop = asyncio.get_running_loop()
        self.transport.attach(runner)
        self.transport.on_removed = on_removed
        self.servicer = RaftPeerServicer(
            self.member_id, self.cluster_id, runner,
            snapshot_dir=os.path.join(self.data_dir, "member", "snap"), loop=loop,
            # a snapshot holds the backend, bounded by the quota: room for twice a big one
            max_snapshot_bytes=max(MAX_SNAPSHOT_BYTES, 2 * self.cfg.quota_backend_bytes),
            # the node reads a file path from every received Snapshot.data: only ours
            inline_snapshots=False,
        )
        self.servicer.is_removed = is_removed
        cfg = self.cfg
        self._guard = PeerCallGuard()
        self._guard.on_received = self._count_received
        identity = None
        revoked = load_crl(cfg.peer_crl_file) if cfg.peer_crl_file else set()
        if cfg.peer_cert_allowed_cn or cfg.peer_cert_allowed_hostname or revoked:
            identity = peer_tls.PeerIdentity(
                cfg.peer_cert_allowed_cn, cfg.peer_cert_allowed_hostname,
                (lambda pem: not pem_revoked(pem, revoked)) if revoked else None)
        server = self.make_server(self._guard, identity=identity)
        server.add_service(peer_pb2.DESCRIPTOR.services_by_name["RaftPeer"], self.servicer,
                           [peer_pb2])
        server.add_service(directory_pb2.DESCRIPTOR.services_by_name["MemberDirectory"],
                           DirectoryServicer(self.cluster_id, members), [directory_pb2])
        for service, servicer, pb_modules in services:
            server.add_service(service, servicer, pb_modules)
        self._server = server
        for url in self.cfg.listen_peer_urls:
            addr, secure = parse_peer_url(url)
            await server.listen(addr, self._server_ssl_context() if secure else None)
            log.info("event=serving_peer_traffic address=%s", addr)
        self._prober = loop.create_task(self._probe_loop(), name="kubekv-peer-prober")

    async def stop_server(self) -> None:
        """Stop serving peers: calls in flight end with UNAVAILABLE (the senders log a
        lost connection and retry elsewhere), no new ones are accepted, and every handler
        has ended before the event loop's teardown could cancel it."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def stop(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        for _url, ch in self._probe_channels.values():
            await ch.close()
        self._probe_channels.clear()
        await self.stop_server()
        if self.transport is not None:
            await self.transport.close()


async def fetch_members(cfg: Config, timeout: float = 10.0) -> tuple[int, list[dict]]:
    """Ask the peers of --initial-cluster for the cluster this new member was added to.

    A peer that has not applied the MemberAdd yet (lagging, or cut off from the leader)
    answers with a list without us; the other peers are asked before such an answer is
    taken, so one stale peer does not make the new member give up."""
    self_urls = set(cfg.initial_advertise_peer_urls)
    last: Exception | None = None
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        stale: tuple[int, list[dict]] | None = None
        for urls in cfg.initial_cluster.values():
            for url in urls:
                if url in self_urls:
                    continue
                parts = urllib.parse.urlsplit(url)
                if parts.scheme == "https":
                    pem = await asyncio.get_running_loop().run_in_executor(
                        None, peer_tls.fetch_peer_certificate, parts.hostname, parts.port
                    )
                    ch = grpc.aio.secure_channel(parts.netloc,
                                                 peer_tls.channel_credentials(root_pem=pem))
                else:
                    ch = grpc.aio.insecure_channel(parse_peer_url(url)[0])
                try:
                    resp = await directory_pb2_grpc.MemberDirectoryStub(ch).Members(
                        directory_pb2.MembersRequest(), timeout=2
                    )
                    found = resp.cluster_id, json.loads(resp.members_json)
                    if any(set(m["peerURLs"]) == self_urls for m in found[1]):
                        return found
                    stale = stale or found
                except Exception as exc:  # try the next peer
                    last = exc
                finally:
                    await ch.close()
        if stale is not None:
            return stale  # nobody knows us: the caller reports it
        await asyncio.sleep(0.5)
    raise SystemExit(f"kubekv: cannot fetch cluster info from the initial cluster peers: {last}")
