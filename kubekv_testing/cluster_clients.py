"""Clients over a test `Cluster` that survive losing a member, as etcd clients do: a KV
client that moves to the next live member when a call fails, and a watch that resumes on
another member from the last revision it saw."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.cluster import Cluster, ClusterMember

__all__ = ["RETRY_CODES", "FailoverKV", "ResumingWatch"]

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

    def _stub(self, m: ClusterMember, service: str):
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
            alive = self.cluster.live_members()
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

    def __init__(self, cluster: Cluster, member: ClusterMember, create: pb.WatchCreateRequest,
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
                alive = [m for m in self.cluster.live_members() if m is not self.member]
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
