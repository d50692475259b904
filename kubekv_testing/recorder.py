"""Record client calls as a linearizability history, and a random KV workload driver.

`Recorder` is thread-safe. Each call is stamped with `time.monotonic()` just before
it is sent and just after its answer, and ends one of three ways:

- ok: the output is recorded;
- unknown: a timeout, an unavailable member, a reset connection... The request may
  or may not have taken effect, so it is recorded with `ret=None`;
- failed: the server definitely refused it (invalid argument, permission denied,
  ...), so it had no effect and is left out of the history (but counted).

    rec = Recorder()
    out = rec.record(client_id, Put(k, v), lambda: stub.Put(req), lambda r: PutResult(...))

`run_workload` drives random put/get/delete/CAS requests over etcd's gRPC KV API
against a list of endpoints from several client threads, bounded by an op count and
a duration, recording everything; `check_kv(recorder.history())` judges the result.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.linearizability import (
    Cas,
    CasResult,
    Delete,
    DeleteResult,
    Get,
    GetResult,
    Operation,
    Put,
    PutResult,
)

# gRPC codes meaning the server refused the request before it could take effect.
# Everything else (DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED, UNKNOWN, INTERNAL, ...,
# and any non-gRPC exception) leaves the outcome unknown.
DEFINITE_FAILURES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
})


# An UNAVAILABLE call that failed to pick a connection was never sent.
NEVER_SENT = "failed to connect to all addresses"


def is_definite_failure(exc: BaseException) -> bool:
    if not (isinstance(exc, grpc.RpcError) and hasattr(exc, "code")):
        return False
    code = exc.code()
    if code in DEFINITE_FAILURES:
        return True
    details = exc.details() if hasattr(exc, "details") else ""
    return code == grpc.StatusCode.UNAVAILABLE and (details or "").startswith(NEVER_SENT)


class Call:
    """One call in flight; finish it with ok(), unknown() or failed() (once)."""

    def __init__(self, recorder: Recorder, client_id: Hashable, inp: Any, call: float) -> None:
        self._recorder = recorder
        self.client_id = client_id
        self.input = inp
        self.call = call
        self.done = False

    def ok(self, output: Any) -> None:
        self._recorder._finish(self, "ok", self._recorder.clock(), output)

    def unknown(self, reason: str = "") -> None:
        self._recorder._finish(self, "unknown", None, None, reason)

    def failed(self, reason: str = "") -> None:
        self._recorder._finish(self, "failed", None, None, reason)


class Recorder:
    """A thread-safe log of calls producing the checker's history format."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[Operation] = []
        self._pending: set[Call] = set()
        self.counts = {"ok": 0, "unknown": 0, "failed": 0}
        self.errors: list[str] = []  # reasons of unknown and failed calls (the first 100)

    def begin(self, client_id: Hashable, inp: Any) -> Call:
        c = Call(self, client_id, inp, self.clock())
        with self._lock:
            self._pending.add(c)
        return c

    def _finish(self, c: Call, how: str, ret: float | None, output: Any, reason: str = "") -> None:
        with self._lock:
            if c.done:
                raise RuntimeError("call already finished")
            c.done = True
            self._pending.discard(c)
            self.counts[how] += 1
            if reason and len(self.errors) < 100:
                self.errors.append(f"{how}: {reason}")
            if how != "failed":
                self._ops.append(Operation(c.client_id, c.call, ret, c.input, output))

    def record(self, client_id: Hashable, inp: Any, fn: Callable[[], Any],
               convert: Callable[[Any], Any] = lambda r: r,
               classify: Callable[[BaseException], bool] = is_definite_failure) -> Any:
        """Run fn() as one call; returns convert(its result), or None if it raised.

        An exception is recorded as failed if classify(exc) says it was definitely
        refused, otherwise as unknown; it is not re-raised."""
        c = self.begin(client_id, inp)
        try:
            result = fn()
        except Exception as exc:
            reason = _describe_error(exc)
            if classify(exc):
                c.failed(reason)
            else:
                c.unknown(reason)
            return None
        ret = self.clock()
        output = convert(result)
        self._finish(c, "ok", ret, output)
        return output

    def history(self) -> list[Operation]:
        """Everything recorded so far; calls still in flight count as unknown."""
        with self._lock:
            ops = list(self._ops)
            ops += [Operation(c.client_id, c.call, None, c.input, None) for c in self._pending]
        return ops


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{exc.code().name}: {details}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- KV over gRPC


def kv_call(stub: rpc_pb2_grpc.KVStub, inp: Any, timeout: float) -> tuple[Callable, Callable]:
    """The gRPC call for a checker input, and the conversion of its response."""
    if isinstance(inp, Get):
        def get_out(r: pb.RangeResponse) -> GetResult:
            if not r.kvs:
                return GetResult(None, 0, r.header.revision, 0)
            kv = r.kvs[0]
            return GetResult(kv.value, kv.mod_revision, r.header.revision, kv.version)
        return (lambda: stub.Range(pb.RangeRequest(key=inp.key), timeout=timeout)), get_out
    if isinstance(inp, Put):
        req = pb.PutRequest(key=inp.key, value=inp.value)
        return (lambda: stub.Put(req, timeout=timeout)), (lambda r: PutResult(r.header.revision))
    if isinstance(inp, Delete):
        req = pb.DeleteRangeRequest(key=inp.key)
        return ((lambda: stub.DeleteRange(req, timeout=timeout)),
                (lambda r: DeleteResult(r.deleted, r.header.revision)))
    if isinstance(inp, Cas):
        if inp.expect_value is not None:
            cmp = pb.Compare(key=inp.key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL,
                             value=inp.expect_value)
        else:
            cmp = pb.Compare(key=inp.key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                             mod_revision=inp.expect_mod_revision)
        req = pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(
            request_put=pb.PutRequest(key=inp.key, value=inp.new_value))])
        return ((lambda: stub.Txn(req, timeout=timeout)),
                (lambda r: CasResult(r.succeeded, r.header.revision)))
    raise TypeError(f"not a KV operation: {inp!r}")


@dataclasses.dataclass
class WorkloadMix:
    """Relative weights of the operation kinds."""

    get: float = 4
    put: float = 3
    delete: float = 1
    cas_value: float = 1
    cas_mod_revision: float = 1


class _Client(threading.Thread):
    def __init__(self, workload: Workload, client_id: int) -> None:
        super().__init__(name=f"kv-workload-{client_id}", daemon=True)
        self.w = workload
        self.client_id = client_id
        self.rng = random.Random(workload.seed * 100_003 + client_id)
        self.endpoint = client_id % len(workload.endpoints)
        self.channels: dict[int, grpc.Channel] = {}
        self.seen: dict[bytes, tuple[bytes, int]] = {}  # key -> (value, mod_revision)
        self.seq = 0

    def stub(self) -> rpc_pb2_grpc.KVStub:
        ch = self.channels.get(self.endpoint)
        if ch is None:
            ch = self.channels[self.endpoint] = self.w.channel_factory(
                self.w.endpoints[self.endpoint])
        return rpc_pb2_grpc.KVStub(ch)

    def next_input(self) -> Any:
        self.seq += 1
        key = self.rng.choice(self.w.keys)
        value = b"%d:%d" % (self.client_id, self.seq)
        mix = self.w.mix
        kinds = ["get", "put", "delete", "cas_value", "cas_mod_revision"]
        kind = self.rng.choices(kinds, [getattr(mix, k) for k in kinds])[0]
        last = self.seen.get(key)
        if kind == "get":
            return Get(key)
        if kind == "put":
            return Put(key, value)
        if kind == "delete":
            return Delete(key)
        if kind == "cas_value":
            guess = last[0] if last and self.rng.random() < 0.8 else b"%d:%d" % (
                self.rng.randrange(self.w.clients), self.rng.randrange(1, self.seq + 1))
            return Cas(key, value, expect_value=guess)
        guess = last[1] if last else 0
        return Cas(key, value, expect_mod_revision=guess)

    def run(self) -> None:
        try:
            while self.w._take_ticket():
                inp = self.next_input()
                fn, convert = kv_call(self.stub(), inp, self.w.rpc_timeout)
                out = self.w.recorder.record(self.client_id, inp, fn, convert, self.w.classify)
                if out is None:
                    # unknown or refused: try another member next time
                    self.endpoint = (self.endpoint + 1) % len(self.w.endpoints)
                    if self.w.backoff:
                        time.sleep(self.w.backoff)
                    continue
                self._learn(inp, out)
        finally:
            for ch in self.channels.values():
                ch.close()

    def _learn(self, inp: Any, out: Any) -> None:
        if isinstance(out, GetResult):
            if out.value is None:
                self.seen.pop(inp.key, None)
            else:
                self.seen[inp.key] = (out.value, out.mod_revision)
        elif isinstance(out, PutResult):
            self.seen[inp.key] = (inp.value, out.revision)
        elif isinstance(out, CasResult) and out.succeeded:
            self.seen[inp.key] = (inp.new_value, out.revision)
        elif isinstance(out, DeleteResult) and out.deleted:
            self.seen.pop(inp.key, None)


class Workload:
    """Random put/get/delete/CAS from `clients` threads, each one request at a time.

    Stops after `max_ops` requests in all or `duration` seconds, whichever comes first.
    Keys are `prefix + b"k<i>"`; every written value (`b"<client>:<seq>"`) is unique.
    """

    def __init__(self, endpoints: Sequence[str], *, clients: int = 4, max_ops: int = 1000,
                 duration: float = 30.0, keys: int = 8, prefix: bytes = b"/linz/",
                 seed: int = 0, rpc_timeout: float = 2.0, backoff: float = 0.05,
                 mix: WorkloadMix | None = None, recorder: Recorder | None = None,
                 channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                 classify: Callable[[BaseException], bool] = is_definite_failure) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = list(endpoints)
        self.clients = clients
        self.max_ops = max_ops
        self.duration = duration
        self.keys = [prefix + b"k%d" % i for i in range(keys)]
        self.seed = seed
        self.rpc_timeout = rpc_timeout
        self.backoff = backoff
        self.mix = mix or WorkloadMix()
        self.recorder = recorder or Recorder()
        self.channel_factory = channel_factory
        self.classify = classify
        self._lock = threading.Lock()
        self._issued = 0
        self._deadline = 0.0
        self._stop = threading.Event()
        self._threads: list[_Client] = []

    def _take_ticket(self) -> bool:
        with self._lock:
            if (self._stop.is_set() or self._issued >= self.max_ops
                    or time.monotonic() >= self._deadline):
                return False
            self._issued += 1
            return True

    def start(self) -> Workload:
        self._deadline = time.monotonic() + self.duration
        self._threads = [_Client(self, i) for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> list[Operation]:
        """Wait for the clients to finish; returns the history."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return self.recorder.history()

    def run(self) -> list[Operation]:
        """start(), then join() (bounded by duration plus one RPC timeout)."""
        self.start()
        return self.join(self.duration + self.rpc_timeout + 10)


def run_workload(endpoints: Sequence[str], **kwargs) -> tuple[list[Operation], Recorder]:
    """Run a `Workload` to completion; returns (history, recorder)."""
    w = Workload(endpoints, **kwargs)
    return w.run(), w.recorder
