"""A raw gRPC watch stream for tests: send requests, collect responses, wait on conditions."""

from __future__ import annotations

import queue
import threading
import time

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc

_END = object()


class WatchStream:
    def __init__(self, channel: grpc.Channel, metadata=None, delay: float = 0.0) -> None:
        self.delay = delay  # seconds to stall after each response: a slow consumer
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.responses: list[pb.WatchResponse] = []
        self._cond = threading.Condition()
        self.error: grpc.RpcError | None = None
        self._call = rpc_pb2_grpc.WatchStub(channel).Watch(self._gen(), metadata=metadata)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _gen(self):
        while True:
            r = self._requests.get()
            if r is _END:
                return
            yield r

    def _read(self) -> None:
        try:
            for resp in self._call:
                if self.delay:
                    time.sleep(self.delay)
                with self._cond:
                    self.responses.append(resp)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        with self._cond:
            self._cond.notify_all()

    def create(self, key: bytes, range_end: bytes = b"", **kw) -> None:
        self._requests.put(pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=key, range_end=range_end, **kw)))

    def cancel(self, watch_id: int) -> None:
        self._requests.put(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    def progress(self) -> None:
        self._requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def wait(self, pred, timeout: float = 10.0) -> list[pb.WatchResponse]:
        """Block until pred(responses) holds; returns a copy of the responses."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.responses):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; responses so far: {self.responses}")
                self._cond.wait(left)
            return list(self.responses)

    def wait_count(self, n: int, timeout: float = 10.0) -> list[pb.WatchResponse]:
        return self.wait(lambda rs: len(rs) >= n, timeout)

    def events(self) -> list:
        with self._cond:
            return [e for r in self.responses for e in r.events]

    def close(self) -> None:
        self._requests.put(_END)
        self._call.cancel()
        self._thread.join(5)


def normalize(resp: pb.WatchResponse) -> str:
    """A response without the fields that differ between servers (ids, term)."""
    r = pb.WatchResponse()
    r.CopyFrom(resp)
    r.header.ClearField("cluster_id")
    r.header.ClearField("member_id")
    r.header.ClearField("raft_term")
    return str(r)


def by_watch(responses) -> dict[int, list[str]]:
    """Responses per watch id, in order (the order across watches of one revision is free)."""
    out: dict[int, list[str]] = {}
    for r in responses:
        out.setdefault(r.watch_id, []).append(normalize(r))
    return out
