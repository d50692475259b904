"""The client-facing server of a member: listeners, TLS, HTTP endpoints, readiness, shutdown.

Everything runs on one asyncio event loop: kubekv's own HTTP/2 gRPC server
(`rpc/`), the Raft runner and the member's bookkeeping. Blocking handlers
(waiting streams, lock recipes, physical compaction) run on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import urllib.parse

from etcdproto.etcdserverpb import rpc_pb2
from etcdproto.v3electionpb import v3election_pb2
from etcdproto.v3lockpb import v3lock_pb2
from kubekv_server import collector
from kubekv_server.api.auth import AuthService
from kubekv_server.api.auth_gate import AuthGate
from kubekv_server.api.cluster import ClusterService
from kubekv_server.api.election import ElectionService
from kubekv_server.api.kv import KVService
from kubekv_server.api.lease import LeaseService
from kubekv_server.api.lock import LockService
from kubekv_server.api.maintenance import MaintenanceService
from kubekv_server.api.watch import WatchService
from kubekv_server.config.flags import Config
from kubekv_server.http.access_control import AccessController, hostname
from kubekv_server.http.gateway import CORS_HEADERS, Gateway
from kubekv_server.http.health import HealthEndpoints
from kubekv_server.log_limit import RateLimitedLog
from kubekv_server.member.member import REQUEST_TIMEOUT, Member
from kubekv_server.member.versions import CLUSTER_VERSION, SERVER_VERSION
from kubekv_server.metrics.member_metrics import MemberMetrics
from kubekv_server.rpc.context import request_tls
from kubekv_server.rpc.http1 import Http1Protocol
from kubekv_server.rpc.peer_server import PeerServer
from kubekv_server.rpc.server import RpcServer
from kubekv_server.tls import alerts as tls_alerts
from kubekv_server.tls.client import client_cert_check, client_ssl_context, load_crl

log = logging.getLogger("kubekv.server")
# The exit status of a member whose Raft stopped (os._exit: nothing more may be written
# or answered, and a clean stop could wait for the stage that failed): 1, as etcd's
# lg.Fatal after a failed WAL save ("failed to save Raft hard state and entries").
FATAL_EXIT_STATUS = 1
# requests refused by --host-whitelist: one line a minute, however many arrive
_rejections = RateLimitedLog(log)

# etcd accepts requests up to --max-request-bytes plus this much gRPC framing.
GRPC_OVERHEAD_BYTES = 512 * 1024


def listen_address(url: str) -> tuple[str, int, bool]:
    """`http://localhost:2379` → ("localhost", 2379, secure=False); port 0: any free one."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port if parsed.port is not None else 2379
    return parsed.hostname or "", port, parsed.scheme in ("https", "unixs")


class ClientServer:
    """Owns the member and the RPC server in front of it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.member = Member(cfg, PeerServer)
        self.rpc: RpcServer | None = None
        self.gateway: Gateway | None = None
        self.metrics: MemberMetrics | None = None
        self._metrics_servers: list[asyncio.base_events.Server] = []
        self._stopping: asyncio.Event | None = None
        self.health = HealthEndpoints(self.member, REQUEST_TIMEOUT)
        self.access = AccessController(cfg.cors, cfg.host_whitelist)

    async def start(self) -> None:
        """etcd's order: bind the client listeners first (a port in use fails the start at
        once, and clients that connect meanwhile wait in the backlog), start the member,
        then serve clients once it has a leader and has published itself (etcd's
        ReadyNotify, which its client servers wait for)."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        m = self.member
        revoked = load_crl(cfg.client_crl_file) if cfg.client_crl_file else set()
        rpc = RpcServer(
            loop,
            max_receive_bytes=cfg.max_request_bytes + GRPC_OVERHEAD_BYTES,
            max_concurrent_streams=cfg.max_concurrent_streams,
            http_handler=self.http,
            accept_peer_cert=client_cert_check(revoked, cfg.client_cert_allowed_hostname),
            guard=self._require_leader,
            gate=AuthGate(m.auth, m),
        )
        self.rpc = rpc  # stop() closes its listeners, however far the start got
        mods = (rpc_pb2,)
        services = rpc_pb2.DESCRIPTOR.services_by_name
        rpc.add_service(services["KV"], KVService(m), mods)
        rpc.add_service(services["Maintenance"], MaintenanceService(m), mods)
        rpc.add_service(services["Cluster"], ClusterService(m), mods)
        rpc.add_service(services["Lease"], LeaseService(m), mods)
        rpc.add_service(services["Auth"], AuthService(m), mods)
        watch = WatchService(
            m, m.watch_hub,
            progress_interval=cfg.watch_progress_notify_interval,
            # etcd fragments at --max-request-bytes plus gRPC's overhead allowance
            max_request_bytes=cfg.max_request_bytes + GRPC_OVERHEAD_BYTES,
        )
        rpc.add_service(services["Watch"], watch, mods)
        rpc.add_service(v3lock_pb2.DESCRIPTOR.services_by_name["Lock"], LockService(m),
                        (v3lock_pb2,))
        rpc.add_service(v3election_pb2.DESCRIPTOR.services_by_name["Election"],
                        ElectionService(m), (v3election_pb2, rpc_pb2))
        tls: ssl.SSLContext | None = None
        listeners = []
        for url in cfg.listen_client_urls:
            host, port, secure = listen_address(url)
            if secure:
                tls = tls or client_ssl_context(cfg, m.data_dir)
                if tls is None:
                    raise SystemExit(
                        f"kubekv: TLS listener {url} needs --cert-file/--key-file or --auto-tls"
                    )
            try:
                server = await rpc.listen(host, port, tls if secure else None,
                                          start_serving=False)
            except OSError as exc:
                raise SystemExit(f"kubekv: listen tcp {host}:{port}: {exc.strerror}") from None
            port = server.sockets[0].getsockname()[1]  # the one chosen for port 0
            listeners.append((server, host, port, secure))
        # etcd serves --listen-metrics-urls (/metrics and the health endpoints) as soon as
        # its Raft node runs, before a leader: kubeadm probes etcd there while it starts
        member_start = asyncio.ensure_future(self.member.start())
        raft_started = asyncio.ensure_future(m.raft_started.wait())
        try:
            await asyncio.wait({member_start, raft_started},
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            member_start.cancel()
            raise
        finally:
            raft_started.cancel()
        if member_start.done():
            member_start.result()  # it failed before Raft ran: raise its error
        self.metrics = MemberMetrics(m, SERVER_VERSION, CLUSTER_VERSION.rsplit(".", 1)[0])
        self.metrics.attach(rpc)
        for url in cfg.metrics_urls:
            host, port, secure = listen_address(url)
            factory = lambda: Http1Protocol(self.metrics_http)  # noqa: E731
            try:
                if secure:
                    factory = tls_alerts.server_protocol(
                        loop, factory, tls or client_ssl_context(cfg, m.data_dir))
                server = await loop.create_server(factory, host, port, reuse_address=True)
            except OSError as exc:
                raise SystemExit(f"kubekv: listen tcp {host}:{port}: {exc.strerror}") from None
            self._metrics_servers.append(server)
            log.info("event=serving_metrics address=%s:%d secure=%s", host, port, secure)
        try:
            await member_start
        except asyncio.CancelledError:
            member_start.cancel()
            raise
        # etcd's JSON gateway dials the member's own gRPC server; ours does so over an
        # abstract unix socket, so TLS and client-certificate settings do not apply to it
        name = f"kubekv-gateway-{os.getpid()}-{id(self):x}"
        await rpc.listen_unix("\0" + name)
        self.gateway = Gateway("unix-abstract:" + name)
        collector.freeze_startup_objects()
        for server, host, port, secure in listeners:
            await server.start_serving()
            log.info("event=serving_client_requests address=%s:%d secure=%s", host, port, secure)
        self._announce_ready()

    def _require_leader(self, headers) -> tuple[int, str] | None:
        """etcd's `hasleader` metadata: such a call fails at once while there is no leader."""
        if self.member.node.leader_id != 0:  # a leader: no call is refused, no scan
            return None
        for k, v in headers:
            if k == b"hasleader" and v == b"true":
                return 14, "etcdserver: no leader"  # Unavailable
        return None

    def _announce_ready(self) -> None:
        """etcd's two readiness lines, which tools (etcd's e2e framework) wait for."""
        m = self.member
        urls = " ".join(self.cfg.advertise_client_urls)
        log.info(
            "published {Name:%s ClientURLs:[%s]} to cluster %x", self.cfg.name, urls, m.cluster_id
        )
        log.info("enabled capabilities for version %s", CLUSTER_VERSION.rsplit(".", 1)[0])

    async def http(self, method: str, target: str, headers: dict, body: bytes):
        """etcd's plain-HTTP endpoints on the client port behind its access controller
        (--host-whitelist for requests without TLS, --cors)."""
        if not request_tls.get():
            host = hostname(headers)
            if not self.access.host_allowed(host):
                _rejections.warning("*", "host_rejected", 'msg="rejecting HTTP request to '
                                    'prevent DNS rebinding attacks" host=%r', host[:64])
                return 421, "text/plain; charset=utf-8", self.access.rejection(host), [
                    ("X-Content-Type-Options", "nosniff")]
        if method == "OPTIONS":  # etcd answers every preflight itself
            return 200, None, b"", self.access.cors_headers(headers.get("origin"))
        status, ctype, out, *extra = await self._http(method, target, headers, body)
        answer_headers = [h for h in (extra[0] if extra else ())
                          if not h[0].startswith("Access-Control-")]
        return (status, ctype, out,
                self.access.cors_headers(headers.get("origin")) + answer_headers)

    async def _http(self, method: str, target: str, headers: dict, body: bytes):
        """/metrics, the JSON gateway (/v3/...), /health, /livez, /readyz and /version."""
        path = urllib.parse.urlsplit(target).path
        if path == "/metrics" and self.metrics is not None:
            return 200, self.metrics.content_type, self.metrics.render(), CORS_HEADERS
        if self.gateway is not None:
            answer = await self.gateway.handle(method, path, headers, body)
            if answer is not None:
                return answer
        answer = await self.health.answer(method, target)
        if answer is not None:
            return answer
        if path == "/version":
            body = json.dumps({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION},
                              separators=(",", ":"))
            return 200, "application/json", body.encode(), CORS_HEADERS
        return 404, "text/plain; charset=utf-8", b"404 page not found\n", CORS_HEADERS + [
            ("X-Content-Type-Options", "nosniff")]

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        self.member.on_removed = self._stopping.set
        self.member.on_fatal = exit_on_fatal
        # A member may wait long for a leader while starting: a signal must still stop it.
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            stopping.cancel()
            raise starting.exception()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        await self._stopping.wait()
        log.info("event=shutdown reason=signal")
        await self.stop()

    async def metrics_http(self, method: str, target: str, headers: dict, body: bytes):
        """A --listen-metrics-urls listener: etcd's plain mux there serves /metrics and the
        health endpoints only, with neither --host-whitelist nor CORS in front."""
        path = urllib.parse.urlsplit(target).path
        if path == "/metrics" and self.metrics is not None:
            return 200, self.metrics.content_type, self.metrics.render()
        answer = await self.health.answer(method, target)
        if answer is not None:
            return answer
        return 404, "text/plain; charset=utf-8", b"404 page not found\n", [
            ("X-Content-Type-Options", "nosniff")]

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.detach()
        for s in self._metrics_servers:
            s.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.rpc is not None:
            await self.rpc.close(grace=1.0)
        await self.member.stop()
        log.info("event=stopped")


def exit_on_fatal(exc: BaseException) -> None:
    """The member's Raft stopped (a failed log write or state db commit, a broken Raft
    invariant such as a log that lost entries it had acknowledged): log it and exit at
    once, as etcd does (lg.Fatal, or a panic), so that a supervisor restarts the member or
    an operator sees it down. Serving on would answer reads and hang every write until
    its timeout."""
    error = f"{type(exc).__name__}: {exc}".replace('"', "'")[:500]
    log.critical('msg="raft stopped: the member exits" error="%s" exit_status=%d', error,
                 FATAL_EXIT_STATUS)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(FATAL_EXIT_STATUS)
