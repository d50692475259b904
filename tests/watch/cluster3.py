"""A small helper for tests on an N-member kubekv cluster of real processes on loopback.

Members are started together (none is ready before a quorum runs), readiness is a
linearizable Range on each, and `stop()` always reaps every process. The leader is
found through Maintenance.Status, never assumed.
"""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import ROOT, ServerProcess, free_port


class Cluster:
    def __init__(self, tmp: pathlib.Path, size: int = 3, flags: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, token: str = "kubekv-test") -> None:
        self.tmp = tmp
        names = [f"n{i + 1}" for i in range(size)]
        peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
        initial = ",".join(f"{n}={peers[n]}" for n in names)
        base_env = dict(os.environ)
        base_env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        base_env["PYTHONPATH"] = str(ROOT) + os.pathsep + base_env.get("PYTHONPATH", "")
        base_env.update(env or {})
        self.members: list[ServerProcess] = []
        for n in names:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = [
                sys.executable, "-m", "kubekv_server",
                "--name", n,
                "--data-dir", str(tmp / f"{n}.kubekv"),
                "--listen-client-urls", url,
                "--advertise-client-urls", url,
                "--listen-peer-urls", peers[n],
                "--initial-advertise-peer-urls", peers[n],
                "--initial-cluster", initial,
                "--initial-cluster-token", token,
                *flags,
            ]
            self.members.append(
                ServerProcess(argv, tmp / f"{n}.kubekv", port, tmp / f"{n}.log", dict(base_env))
            )

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> Cluster:
        for m in self.members:
            self._spawn(m)
        deadline = time.monotonic() + timeout
        for m in self.members:
            m.wait_ready(max(deadline - time.monotonic(), 1.0))
        return self

    @staticmethod
    def _spawn(m: ServerProcess) -> None:
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                m.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=m.env, cwd=str(m.data_dir.parent),
            )

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------- queries

    def alive(self) -> list[ServerProcess]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def status(self, m: ServerProcess, timeout: float = 1.0) -> pb.StatusResponse:
        return m.maintenance.Status(pb.StatusRequest(), timeout=timeout)

    def leader(self, timeout: float = 30.0, exclude: ServerProcess | None = None
               ) -> ServerProcess:
        """The member that leads now, as every live member that answers agrees."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[int, ServerProcess] = {}
            leaders = set()
            for m in self.alive():
                try:
                    st = self.status(m)
                except grpc.RpcError:
                    continue
                ids[st.header.member_id] = m
                leaders.add(st.leader)
            if len(leaders) == 1:
                (lead,) = leaders
                if lead in ids and ids[lead] is not exclude:
                    return ids[lead]
            if time.monotonic() > deadline:
                raise AssertionError(f"no agreed leader after {timeout}s: {leaders}")
            time.sleep(0.05)  # polling the cluster's state, not standing in for an event

    def followers(self) -> list[ServerProcess]:
        lead = self.leader()
        return [m for m in self.alive() if m is not lead]

    def member_id(self, m: ServerProcess) -> int:
        return self.status(m).header.member_id

# what etcd clients retry on another endpoint: no leader, timeouts, a member gone
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class FailoverKV:
    """A KV client over a cluster that moves to the next live member when a call fails,
    as etcd clients do. `attempts` of a call that failed may still have been applied
    (unknown outcome): callers record them."""

    def __init__(self, cluster: Cluster, timeout: float = 10.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._i = 0
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.errors: list[tuple] = []  # (time, endpoint, method, code, details) of failures

    def _stub(self, m: ServerProcess, service: str):
        with self._lock:
            ch = self._channels.get(m.endpoint)
            if ch is None:
                ch = self._channels[m.endpoint] = grpc.insecure_channel(m.endpoint)
        return getattr(rpc_pb2_grpc, f"{service}Stub")(ch)

    def call(self, method: str, request, on_unknown: Callable[[], None] | None = None,
             deadline: float = 60.0, service: str = "KV"):
        """The response of the first member that answers; on_unknown() after each attempt
        that failed with an error worth retrying elsewhere (its outcome is unknown); other
        errors (e.g. compacted) are raised. `service`: KV, Lease, ..."""
        end = time.monotonic() + deadline
        while True:
            alive = self.cluster.alive()
            if not alive:
                raise AssertionError("no live member")
            self._i = (self._i + 1) % len(alive)
            m = alive[self._i]
            try:
                return getattr(self._stub(m, service), method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                self.errors.append((time.monotonic(), m.endpoint, method, exc.code(),
                                    exc.details()))
                if exc.code() not in RETRY_CODES:
                    raise
                if on_unknown is not None:
                    on_unknown()
                if time.monotonic() > end:
                    raise AssertionError(f"{method} kept failing: {exc}") from exc

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


class ResumingWatch:
    """One watch that survives the loss of its member: when the stream breaks it is
    re-created on another live member from the last seen revision + 1 (etcd clients
    and Kubernetes' reflector do the same). Responses of every incarnation are kept
    in order; `resumes` counts the re-creations."""

    def __init__(self, cluster: Cluster, member: ServerProcess, create: pb.WatchCreateRequest,
                 channel_options=(), delay: float = 0.0) -> None:
        self.cluster = cluster
        self.member = member
        self.create = create
        self.channel_options = list(channel_options)
        self.delay = delay
        self.responses: list[pb.WatchResponse] = []
        self.next_rev = create.start_revision
        self.resumes = 0
        self.canceled: pb.WatchResponse | None = None
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._call = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._one_stream():
                    return
                self.resumes += 1
                alive = [m for m in self.cluster.alive() if m is not self.member]
                if not alive:
                    raise AssertionError("no member left to resume on")
                self.member = alive[self.resumes % len(alive)]
        except BaseException as exc:  # surfaced by wait()
            self.error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def _one_stream(self) -> bool:
        """Run one stream; True when done for good (canceled or stopped)."""
        create = pb.WatchCreateRequest()
        create.CopyFrom(self.create)
        if self.next_rev:
            create.start_revision = self.next_rev
        requests: queue.SimpleQueue = queue.SimpleQueue()
        requests.put(pb.WatchRequest(create_request=create))

        def gen():
            while True:
                r = requests.get()
                if r is None:
                    return
                yield r

        ch = grpc.insecure_channel(self.member.endpoint, options=self.channel_options)
        try:
            self._call = rpc_pb2_grpc.WatchStub(ch).Watch(gen())
            for resp in self._call:
                if self.delay:
                    time.sleep(self.delay)  # a slow consumer
                with self._cond:
                    if resp.created:
                        continue
                    self.responses.append(resp)
                    if resp.events:
                        self.next_rev = resp.events[-1].kv.mod_revision + 1
                    elif not resp.canceled and resp.header.revision >= self.next_rev:
                        self.next_rev = resp.header.revision + 1  # a progress notification
                    self._cond.notify_all()
                if resp.canceled:
                    self.canceled = resp
                    return True
            return self._stop.is_set()
        except grpc.RpcError:
            return self._stop.is_set()
        finally:
            requests.put(None)
            ch.close()

    def wait(self, pred, timeout: float = 60.0) -> list[pb.WatchResponse]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.responses):
                if self.error is not None:
                    raise AssertionError(f"watch failed: {self.error!r}")
                if self.canceled is not None:
                    return list(self.responses)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out at next_rev={self.next_rev}, resumes={self.resumes}")
                self._cond.wait(left)
            return list(self.responses)

    def wait_revision(self, rev: int, timeout: float = 60.0) -> list[pb.WatchResponse]:
        return self.wait(lambda _rs: self.next_rev > rev, timeout)

    def close(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(5)
