"""Embedded kubekv for tests: real server processes on loopback, started and always stopped.

    from kubekv.embed import Cluster, Member

    with Member() as m:                      # one member, ready to serve
        etcd3.client(m.host, m.port).put("k", "v")
    with Cluster(3) as c:                    # three members with an elected leader
        c.wait_leader().kill()               # failover: the others elect a new leader
        c.wait_leader()

Each member is `python -m kubekv_server` run with this interpreter (`sys.executable`), so
it imports the same kubekv as the caller. It gets free client and peer ports on
127.0.0.1 and a data dir under a temporary directory (removed when the member or cluster
is closed, unless the caller passed `base_dir`, which is then left as it is, logs and
all). "Ready" means a linearizable Range succeeded on the member (what etcd's own
`/health` check reads), so a ready member has a leader and a quorum; it is never a sleep.

Readiness, `status()` and leader finding talk to etcd's JSON gateway on the client port
(stdlib HTTP), not gRPC: this module imports neither grpc nor kubekv's generated protos,
which would clash with a client's own (python-etcd3 needs the pure-Python protobuf, whose
descriptor pool refuses a second `rpc.proto`).

Processes are stopped on `close()`/`__exit__`, and also if the owning object is garbage
collected or the interpreter exits (a `weakref.finalize`, which runs at exit too). On
Linux a member started from the main thread additionally gets `PR_SET_PDEATHSIG`, so the
kernel kills it if the test process dies without running Python's exit handlers (SIGKILL,
a SIGTERM Python does not handle, `os._exit`). `stop()` sends SIGTERM and SIGKILLs a
member that has not exited within its timeout.

The server reads etcd's `ETCD_*` environment variables as flags, as etcd does, and, as
etcd, refuses to start when one names a flag also given on the command line (an
`ETCD_NAME` in a developer's shell would stop every embedded member). They are removed
from an embedded member's environment: pass `flags=` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubekv._process import (
    DEFAULT_STOP_TIMEOUT,
    HOST,
    Resources,
    exit_with_parent_env,
    free_port,
    owned_dir,
    server_environment,
)
from kubekv_testing.polling import GaveUp, wait_for

__all__ = ["Cluster", "GatewayError", "Member", "MemberStatus", "StartError", "free_port",
           "server_environment", "wait_for"]

# Generous for a loaded 2-core CI machine; a member is usually ready in well under 5 s.
DEFAULT_START_TIMEOUT = 60.0
# How long one readiness or status request may take before it counts as "not yet".
PROBE_TIMEOUT = 1.0
# A gateway answer larger than this is not a Status or an empty Range: refuse it.
MAX_ANSWER_BYTES = 1 << 20
# A member whose free port was taken by someone else between the pick and the bind
# exits at once; start() then picks new ports and tries again, this many times in all.
PORT_ATTEMPTS = 3
# etcd's health check reads this key with a linearizable Range (etcdhttp's QGET "health");
# base64, as etcd's JSON gateway takes bytes fields.
HEALTH_KEY_B64 = "aGVhbHRo"
# etcd's defaults for --heartbeat-interval and --election-timeout (milliseconds).
ETCD_HEARTBEAT_MS = 100
ETCD_ELECTION_MS = 1000


class StartError(RuntimeError):
    """A member exited during start-up or did not become ready in time (with its log tail)."""


class GatewayError(OSError):
    """A member did not answer a JSON gateway request with 200 and a JSON object."""


@dataclasses.dataclass(frozen=True)
class MemberStatus:
    """A member's Maintenance.Status, as etcd's JSON gateway gives it (uint64s as ints)."""

    member_id: int
    leader: int  # 0 while the member knows no leader
    raft_term: int
    raft_index: int
    raft_applied_index: int
    revision: int
    version: str
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, answer: Mapping[str, Any]) -> MemberStatus:
        header = answer.get("header") or {}
        # etcd's gateway omits zero values and writes uint64s as strings.
        return cls(member_id=int(header.get("member_id", 0)),
                   leader=int(answer.get("leader", 0)),
                   raft_term=int(answer.get("raftTerm", 0)),
                   raft_index=int(answer.get("raftIndex", 0)),
                   raft_applied_index=int(answer.get("raftAppliedIndex", 0)),
                   revision=int(header.get("revision", 0)),
                   version=str(answer.get("version", "")),
                   raw=dict(answer))


# Loopback only: a user's HTTP(S)_PROXY must not route requests to 127.0.0.1 elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ----------------------------------------------------------------------------- member


class Member:
    """One kubekv server process: a single-member cluster on its own, or one member of a
    `Cluster`. Use as a context manager, or call `start()` and `close()`.

    `flags` are extra etcd flags appended to the command line (e.g. `--unsafe-no-fsync`,
    `--auto-compaction-retention=1`); `env` adds environment variables. Subclasses may
    override `command()` and `environment()` (what a test harness with fault proxies needs).
    """

    # Ask Linux to kill the member when the caller dies (see `exit_with_parent_env`); the
    # server sets that up itself, so nothing runs in the forked child before exec.
    kill_with_parent = True

    def __init__(self, name: str = "default", *, base_dir: str | os.PathLike | None = None,
                 flags: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 start_timeout: float = DEFAULT_START_TIMEOUT,
                 _cluster: Cluster | None = None) -> None:
        self.name = name
        self.flags = list(flags)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self._cluster = _cluster
        self._res = Resources()
        # Finalized when the member is garbage collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, Resources.release, self._res)
        if _cluster is not None:
            self.base_dir = _cluster.base_dir
        else:
            self.base_dir = owned_dir(base_dir, self._res)
        self.data_dir = self.base_dir / f"{name}.kubekv"
        self.log_path = self.base_dir / f"{name}.log"
        self.port = free_port()
        self.peer_port = free_port()
        self._member_id: int | None = None
        self.paused = False
        # What a cluster member starts with: "new" at bootstrap, "existing" once added by
        # MemberAdd to a running cluster (with the member list MemberAdd answered).
        self.cluster_state = "new"
        self.initial_cluster: str | None = None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.alive else "stopped"
        return f"<kubekv.embed.Member {self.name} {self.endpoint} {state}>"

    # ---------------------------------------------------------------- addresses

    host = HOST

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, what python-etcd3/aetcd/etcdctl `--endpoints` take."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The client URL, `http://127.0.0.1:PORT` (gRPC, the JSON gateway, /health)."""
        return f"http://{HOST}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def proc(self) -> subprocess.Popen | None:
        return self._res.proc

    @property
    def pid(self) -> int | None:
        return self._res.proc.pid if self._res.proc is not None else None

    @property
    def alive(self) -> bool:
        """The process exists (it may be paused)."""
        return self._res.proc is not None and self._res.proc.poll() is None

    @property
    def running(self) -> bool:
        """Alive and not paused."""
        return self.alive and not self.paused

    # ----------------------------------------------------------- command line

    def _new_ports(self) -> None:
        self.port = free_port()
        self.peer_port = free_port()

    def command(self) -> list[str]:
        """The server's argv: etcd's flags for this member, then `self.flags`."""
        c = self._cluster
        if c is None:
            cluster_flags = ["--initial-cluster", f"{self.name}={self.peer_url}"]
        else:
            cluster_flags = [
                "--initial-cluster", self.initial_cluster or c.initial_cluster(),
                "--initial-cluster-state", self.cluster_state,
                "--initial-cluster-token", c.token,
                "--heartbeat-interval", str(c.heartbeat_ms),
                "--election-timeout", str(c.election_ms),
                *c.flags,
            ]
        return [
            sys.executable, "-m", "kubekv_server",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            *cluster_flags,
            *self.flags,
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment (see `server_environment`), plus `env=`."""
        return server_environment(self.extra_env)

    # -------------------------------------------------------------- lifecycle

    def launch(self) -> Member:
        """Start the process without waiting for it to be ready."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._res.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**self.environment(),
                     **(exit_with_parent_env() if self.kill_with_parent else {})},
                cwd=str(self.base_dir),
                start_new_session=True,  # the terminal's Ctrl-C goes to the test, not here
            )
        self.paused = False
        return self

    def start(self, timeout: float | None = None, wait: bool = True) -> Member:
        """Start the member and (with `wait`) return once it serves a linearizable read.
        A member that has never run gets new ports if its first ones were taken."""
        timeout = self.start_timeout if timeout is None else timeout
        fresh = self._cluster is None and not self.data_dir.exists()
        for attempt in range(PORT_ATTEMPTS if fresh else 1):
            log_start = self._log_size()
            self.launch()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except StartError:
                if not (fresh and attempt + 1 < PORT_ATTEMPTS and self._port_taken(log_start)):
                    raise
                self._new_ports()
                shutil.rmtree(self.data_dir, ignore_errors=True)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once a linearizable Range succeeds (the member has a leader and a
        quorum); `StartError` with the log tail if the process exits or time runs out."""
        timeout = self.start_timeout if timeout is None else timeout

        def exited() -> str | None:
            proc = self._res.proc
            if proc is None or proc.poll() is not None:
                return f"exited ({None if proc is None else proc.returncode})"
            return None

        def serves() -> bool:
            err = self._probe()
            if err is not None:
                raise GatewayError(err)
            return True

        try:
            wait_for(serves, timeout, "a linearizable read", give_up=exited)
        except GaveUp as exc:
            raise StartError(f"kubekv member {self.name} {exc.reason}:\n"
                             f"{self.log_tail()}") from None
        except TimeoutError as exc:
            raise StartError(f"kubekv member {self.name} not ready after {timeout}s "
                             f"({exc}):\n{self.log_tail()}") from None

    def _probe(self) -> str | None:
        """None if a linearizable Range succeeds, else why not."""
        try:
            self.request("/v3/kv/range", {"key": HEALTH_KEY_B64})
            return None
        except GatewayError as exc:
            return str(exc)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM (resuming a paused member first), SIGKILL after `timeout`; returns the
        exit status (None if it never ran). The data dir stays: `start()` restarts."""
        proc = self._res.proc
        if proc is None:
            return None
        if proc.poll() is None:
            if self.paused:
                self.resume()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(DEFAULT_STOP_TIMEOUT)
        self.paused = False
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash (also of a paused member); the data dir stays."""
        proc = self._res.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(DEFAULT_STOP_TIMEOUT)
        self.paused = False

    def restart(self, timeout: float | None = None, wait: bool = True) -> Member:
        """Stop (if running) and start again from the same data dir and ports."""
        self.stop()
        return self.start(timeout, wait)

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its sockets open (a hung member)."""
        if self._res.proc is not None:
            self._res.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self._res.proc is not None:
            self._res.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        """Stop the process and remove the temporary directory (if this member made it)."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> Member:
        if not self.alive:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- queries

    def request(self, path: str, body: Mapping[str, Any] | None = None,
                timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
        """POST `body` as JSON to one of etcd's JSON gateway routes (`/v3/kv/range`,
        `/v3/maintenance/status`, ...) on this member and return the decoded answer;
        `GatewayError` if the member does not answer 200 with a JSON object.

        The gateway, not gRPC: the caller's process may hold a client's own generated
        etcd protos (python-etcd3 with the pure-Python protobuf), and loading kubekv's
        beside them would clash in protobuf's descriptor pool."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                raw = resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                detail = exc.read(MAX_ANSWER_BYTES).decode(errors="replace")
            raise GatewayError(f"{path}: HTTP {exc.code}: {detail[:200]}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise GatewayError(f"{path}: {exc!r}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise GatewayError(f"{path}: answer over {MAX_ANSWER_BYTES} bytes")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise GatewayError(f"{path}: not JSON: {raw[:200]!r}") from None
        if not isinstance(answer, dict):
            raise GatewayError(f"{path}: not a JSON object: {raw[:200]!r}")
        return answer

    def status(self, timeout: float = PROBE_TIMEOUT) -> MemberStatus:
        """Maintenance.Status of this member (`GatewayError` if it does not answer)."""
        answer = self.request("/v3/maintenance/status", timeout=timeout)
        try:
            return MemberStatus.from_json(answer)
        except (TypeError, ValueError, AttributeError) as exc:
            raise GatewayError(f"/v3/maintenance/status: malformed answer: {exc}") from None

    @property
    def member_id(self) -> int:
        """The Raft member ID (from Status; cached, it never changes for a data dir)."""
        if self._member_id is None:
            self._member_id = self.status(timeout=5.0).member_id
        return self._member_id

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log (stdout and stderr)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _port_taken(self, since: int) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return b"address already in use" in f.read().lower()
        except OSError:
            return False


# ---------------------------------------------------------------------------- cluster


class Cluster:
    """`size` kubekv members forming one Raft cluster on loopback, named m1, m2, ...

    Members start together; `start()` returns when every one serves a linearizable read.
    Timings default to etcd's (heartbeat 100 ms, election timeout 1000 ms); failover
    tests may lower them (`heartbeat_ms=50, election_ms=500` is still stable on a
    loaded 2-core machine). `flags` go to every member.
    """

    member_class: type[Member] = Member

    def __init__(self, size: int = 3, *, base_dir: str | os.PathLike | None = None,
                 flags: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 heartbeat_ms: int = ETCD_HEARTBEAT_MS, election_ms: int = ETCD_ELECTION_MS,
                 token: str = "kubekv-embedded",
                 start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.flags = list(flags)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.token = token
        self.start_timeout = start_timeout
        self._res = Resources()
        self._finalizer = weakref.finalize(self, Resources.release, self._res)
        self.base_dir = owned_dir(base_dir, self._res)
        self.members: list[Member] = [
            self.member_class(f"m{i + 1}", env=env, start_timeout=start_timeout,
                              _cluster=self)
            for i in range(size)
        ]

    def __repr__(self) -> str:
        return f"<kubekv.embed.Cluster {' '.join(self.endpoints)}>"

    def initial_cluster(self) -> str:
        """etcd's `--initial-cluster` value for these members."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        """`127.0.0.1:PORT` of every member, in order."""
        return [m.endpoint for m in self.members]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every member, in order."""
        return [m.url for m in self.members]

    def member(self, name_or_id: str | int) -> Member:
        """The member with this name or Raft member ID."""
        for m in self.members:
            if m.name == name_or_id or (isinstance(name_or_id, int) and m.running
                                        and m.member_id == name_or_id):
                return m
        raise KeyError(name_or_id)

    # -------------------------------------------------------------- lifecycle

    def start(self, timeout: float | None = None) -> Cluster:
        """Start every member and wait until all serve linearizable reads. A cluster that
        has never run gets new ports if one of its first ones was taken."""
        timeout = self.start_timeout if timeout is None else timeout
        fresh = not any(m.data_dir.exists() for m in self.members)
        for attempt in range(PORT_ATTEMPTS if fresh else 1):
            log_start = {m.name: m._log_size() for m in self.members}
            for m in self.members:
                m.launch()
            try:
                self.wait_ready(timeout=timeout)
                return self
            except StartError:
                taken = any(m._port_taken(log_start[m.name]) for m in self.members)
                if not (fresh and taken and attempt + 1 < PORT_ATTEMPTS):
                    raise
                for m in self.members:
                    m.kill()
                    shutil.rmtree(m.data_dir, ignore_errors=True)
                    m._new_ports()
        raise AssertionError("unreachable")

    def wait_ready(self, members: Iterable[Member] | None = None,
                   timeout: float | None = None) -> None:
        """Every member given (default: all) serves a linearizable read."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for m in list(members) if members is not None else self.members:
            m.wait_ready(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop every member (SIGTERM to all at once, then SIGKILL stragglers)."""
        for m in self.members:
            if m.alive:
                if m.paused:
                    m.resume()
                m.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for m in self.members:
            m.stop()

    def close(self) -> None:
        """Stop every member and remove the temporary directory (if the cluster made it)."""
        try:
            self.stop()
        finally:
            for m in self.members:
                m._finalizer()
            self._finalizer()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- leader

    def statuses(self) -> dict[str, MemberStatus | None]:
        """Status of each member by name (None for one that is down, paused or silent)."""
        out: dict[str, MemberStatus | None] = {}
        for m in self.members:
            out[m.name] = None
            if m.running:
                with contextlib.suppress(GatewayError):
                    out[m.name] = m.status()
        return out

    def leader(self) -> Member | None:
        """The leader every running member agrees on and which says so itself, or None."""
        sts = {n: s for n, s in self.statuses().items() if s is not None}
        leads = {s.leader for s in sts.values()}
        if not sts or len(leads) != 1 or 0 in leads:
            return None
        lead = leads.pop()
        for m in self.members:
            st = sts.get(m.name)
            if st is not None and st.member_id == lead:
                m._member_id = lead
                return m
        return None

    def wait_leader(self, timeout: float | None = None,
                    exclude: Member | None = None) -> Member:
        """Wait until the running members agree on a leader (other than `exclude`, e.g.
        the one a test just stopped) and return it."""
        timeout = self.start_timeout if timeout is None else timeout

        def agreed() -> Member | None:
            lead = self.leader()
            return None if lead is exclude else lead

        what = "an agreed leader" + (f" other than {exclude.name}" if exclude else "")
        return wait_for(agreed, timeout, what)

    # ------------------------------------------------------------- membership

    def add_member(self, *, learner: bool = False, via: Member | None = None,
                   wait: bool = True, timeout: float | None = None, name: str | None = None,
                   ask_first: Member | None = None) -> Member:
        """MemberAdd a new member (through `via`, default the leader), then start it with
        `--initial-cluster-state existing`, as etcd's docs say to. A voting member is
        waited for until it serves linearizable reads; a learner (which etcd does not let
        serve them) until it answers Status. `name` defaults to the first unused m<N>;
        `ask_first` is listed first in its --initial-cluster, so it is the first peer the
        new member asks for the member list."""
        timeout = self.start_timeout if timeout is None else timeout
        via = via if via is not None else self.wait_leader(timeout)
        used = {m.name for m in self.members}
        if name is None:
            name = next(f"m{i}" for i in range(1, len(used) + 2) if f"m{i}" not in used)
        new = self.member_class(name, env=self.members[0].extra_env,
                                start_timeout=self.start_timeout, _cluster=self)
        answer = via.request("/v3/cluster/member/add",
                             {"peerURLs": [new.peer_url], "isLearner": learner},
                             timeout=timeout)
        new._member_id = int(answer["member"]["ID"])
        names = {m.peer_url: m.name for m in self.members}
        names[new.peer_url] = name
        listed = answer.get("members", [])
        if ask_first is not None:
            listed = sorted(listed, key=lambda m: ask_first.peer_url not in m.get("peerURLs", []))
        new.initial_cluster = ",".join(f"{names.get(url, '')}={url}" for member in listed
                                       for url in member.get("peerURLs", []))
        new.cluster_state = "existing"
        self.members.append(new)
        new.launch()
        if wait:
            if learner:
                wait_for(lambda: new.status().member_id, timeout, f"learner {name} to answer")
            else:
                new.wait_ready(timeout)
        return new

    def remove_member(self, member: Member, *, via: Member | None = None,
                      timeout: float | None = None) -> None:
        """MemberRemove `member` (through `via`, default the leader once the others agree on
        one that is not `member`), stop its process (etcd's removed member stops itself;
        this makes sure) and forget it."""
        timeout = self.start_timeout if timeout is None else timeout
        if via is None:
            via = self.wait_leader(timeout, exclude=member)
        # By peer URL from the member list: the member itself may be down.
        listed = via.request("/v3/cluster/member/list", {"linearizable": True}, timeout=timeout)
        member_id = next(int(m["ID"]) for m in listed.get("members", [])
                         if member.peer_url in m.get("peerURLs", []))
        via.request("/v3/cluster/member/remove", {"ID": str(member_id)}, timeout=timeout)
        member.close()
        self.members.remove(member)

    def member_ids(self, via: Member | None = None, timeout: float | None = None) -> list[int]:
        """The IDs in a linearizable MemberList (through `via`, default the first running
        member), so every change answered before shows; retried while a leader is elected."""
        via = via if via is not None else next(m for m in self.members if m.running)
        timeout = self.start_timeout if timeout is None else timeout
        answer = wait_for(lambda: via.request("/v3/cluster/member/list", {"linearizable": True}),
                          timeout, f"a linearizable member list from {via.name}")
        return sorted(int(m["ID"]) for m in answer.get("members", []))

    def followers(self) -> list[Member]:
        """The members other than the current leader (waits for one)."""
        lead = self.wait_leader()
        return [m for m in self.members if m is not lead]
