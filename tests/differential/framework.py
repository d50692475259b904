"""Differential testing: send the same KV requests to kubekv and to real etcd, compare answers.

A `ServerPair` is a kubekv and an etcd 3.5 process started from empty data dirs,
so both sit at revision 1 and, fed the same requests, must stay at the same
revision. A `Differ` sends each request to both, normalises what legitimately
differs (the header's cluster_id, member_id and raft_term), and compares the
rest field by field; an error is compared as (gRPC status code, details).

On a mismatch the Differ raises with a readable report: the request index, the
request, both outcomes and a line diff. It also marks the pair `dirty`: the two
servers may no longer be in the same state, so the next user should call
`ServerPair.ensure_in_sync()` (the fixtures do) before trusting a comparison.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import pathlib
import shutil

import grpc
from google.protobuf import text_format

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import ServerProcess, etcd_process, kubekv_process

RPC_TIMEOUT = 20.0

# Request type -> name of the KV method that takes it.
_METHODS = {
    pb.RangeRequest: "Range",
    pb.PutRequest: "Put",
    pb.DeleteRangeRequest: "DeleteRange",
    pb.TxnRequest: "Txn",
    pb.CompactionRequest: "Compact",
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request refused with a gRPC status: what a client sees of an error."""

    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        return f"error {self.code.name}: {self.details!r}"


Outcome = object  # a normalised response message, or a Failure


def normalise(resp) -> object:
    """A copy of a response without the fields that legitimately differ between servers."""
    out = type(resp)()
    out.CopyFrom(resp)
    _clear_headers(out)
    return out


def _clear_headers(msg) -> None:
    """Clear cluster_id, member_id and raft_term of the top-level header.

    Only the top level: etcd leaves the headers of responses inside a Txn with
    nothing but a revision, and so must kubekv.
    """
    if msg.HasField("header"):
        h = msg.header
        h.cluster_id = 0
        h.member_id = 0
        h.raft_term = 0


def show(x: object) -> str:
    """A readable multi-line rendering of a request, response or Failure."""
    if isinstance(x, Failure):
        return str(x)
    body = text_format.MessageToString(x, as_utf8=False).rstrip()
    return f"{type(x).__name__} {{\n{_indent(body)}\n}}" if body else f"{type(x).__name__} {{}}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _short(x: object, limit: int = 2000) -> str:
    """`show`, with huge byte fields (oversized values) cut down so reports stay readable."""
    if not isinstance(x, Failure):
        x = _truncate_bytes(x)
    text = show(x)
    return text if len(text) <= limit else text[:limit] + f"\n  ... ({len(text)} chars)"


def _truncate_bytes(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    for fd, value in out.ListFields():
        if fd.type == fd.TYPE_BYTES and not fd.is_repeated and len(value) > 64:
            setattr(out, fd.name, value[:32] + b"...(%d bytes)" % len(value))
        elif fd.type == fd.TYPE_MESSAGE:
            if fd.is_repeated:
                items = [_truncate_bytes(v) for v in value]
                del value[:]
                value.extend(items)
            else:
                getattr(out, fd.name).CopyFrom(_truncate_bytes(value))
    return out


def call(server: ServerProcess, request) -> Outcome:
    """Send one KV request; return the normalised response or the Failure."""
    method = getattr(server.kv, _METHODS[type(request)])
    try:
        return normalise(method(request, timeout=RPC_TIMEOUT))
    except grpc.RpcError as exc:
        return Failure(exc.code(), exc.details() or "")


class Mismatch(AssertionError):
    """kubekv answered a request differently from etcd."""


class ServerPair:
    """A kubekv and a real etcd, both started from empty data dirs under `tmp`."""

    _names = itertools.count()

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.kubekv: ServerProcess | None = None
        self.etcd: ServerProcess | None = None
        self.dirty = False

    def start(self) -> ServerPair:
        n = next(self._names)
        self.kubekv = kubekv_process(self.tmp, name=f"kubekv{n}").start()
        try:
            self.etcd = etcd_process(self.tmp, name=f"etcd{n}").start()
        except BaseException:
            self.kubekv.stop()
            raise
        self.dirty = False
        return self

    def stop(self) -> None:
        for proc in (self.kubekv, self.etcd):
            if proc is not None:
                proc.stop()
                shutil.rmtree(proc.data_dir, ignore_errors=True)

    def restart_fresh(self) -> None:
        """Both servers again from empty data dirs (after a mismatch left them apart)."""
        self.stop()
        self.start()

    def revisions(self) -> tuple[int, int]:
        """(kubekv's, etcd's) current revision."""
        probe = pb.RangeRequest(key=b"\0", count_only=True)
        return (
            self.kubekv.kv.Range(probe, timeout=RPC_TIMEOUT).header.revision,
            self.etcd.kv.Range(probe, timeout=RPC_TIMEOUT).header.revision,
        )

    def ensure_in_sync(self) -> None:
        """After a mismatch, start over unless both servers still sit at the same revision."""
        if not self.dirty:
            return
        ours, theirs = self.revisions()
        if ours != theirs:
            self.restart_fresh()
        self.dirty = False

    def differ(self) -> Differ:
        self.ensure_in_sync()
        return Differ(self)


class Differ:
    """Sends requests to both servers of a pair and checks that the answers are the same."""

    def __init__(self, pair: ServerPair) -> None:
        self.pair = pair
        self.history: list[tuple[object, Outcome]] = []  # (request, etcd's outcome)
        self.rev = pair.revisions()[1]  # etcd's current revision before the first request

    def send(self, request) -> Outcome:
        """Send to both; raise Mismatch on any difference; return etcd's outcome."""
        theirs = call(self.pair.etcd, request)
        ours = call(self.pair.kubekv, request)
        index = len(self.history)
        self.history.append((request, theirs))
        if ours != theirs:
            self.pair.dirty = True
            raise Mismatch(self.report(index, request, ours, theirs))
        header = getattr(theirs, "header", None)
        if header is not None and header.revision:
            self.rev = header.revision
        return theirs

    def send_all(self, requests) -> list[Outcome]:
        return [self.send(r) for r in requests]

    def report(self, index: int, request, ours: Outcome, theirs: Outcome) -> str:
        a, b = _short(theirs, 100000).splitlines(), _short(ours, 100000).splitlines()
        diff = "\n".join(difflib.unified_diff(a, b, "etcd", "kubekv", lineterm="", n=2))
        earlier = "\n".join(
            f"  #{i}: {_short(req, 300)!s}".replace("\n", " ") for i, (req, _) in enumerate(
                self.history[:-1])
        )
        return (
            f"kubekv and etcd differ at request #{index} (revision before: {self.rev}):\n"
            f"{_short(request)}\n"
            f"--- etcd answered:\n{_short(theirs)}\n"
            f"--- kubekv answered:\n{_short(ours)}\n"
            f"--- diff:\n{diff}\n"
            f"--- earlier requests of this sequence:\n{earlier or '  (none)'}"
        )


# ------------------------------------------------------------ request builders


def put(key: bytes, value: bytes = b"", **kw) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, **kw)


def get(key: bytes, range_end: bytes = b"", **kw) -> pb.RangeRequest:
    return pb.RangeRequest(key=key, range_end=range_end, **kw)


def delete(key: bytes, range_end: bytes = b"", **kw) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(key=key, range_end=range_end, **kw)


def compact(revision: int, physical: bool = False) -> pb.CompactionRequest:
    return pb.CompactionRequest(revision=revision, physical=physical)


def op(request) -> pb.RequestOp:
    """Wrap a request as a Txn operation."""
    if isinstance(request, pb.RangeRequest):
        return pb.RequestOp(request_range=request)
    if isinstance(request, pb.PutRequest):
        return pb.RequestOp(request_put=request)
    if isinstance(request, pb.DeleteRangeRequest):
        return pb.RequestOp(request_delete_range=request)
    if isinstance(request, pb.TxnRequest):
        return pb.RequestOp(request_txn=request)
    if isinstance(request, pb.RequestOp):
        return request
    raise TypeError(f"not a txn operation: {type(request).__name__}")


def txn(compare=(), success=(), failure=()) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=list(compare),
        success=[op(r) for r in success],
        failure=[op(r) for r in failure],
    )


def cmp(key: bytes, target: str, result: str, value, range_end: bytes = b"") -> pb.Compare:
    """A Compare: cmp(b"k", "VALUE", "EQUAL", b"v"), cmp(b"k", "MOD", "GREATER", 3)."""
    c = pb.Compare(
        key=key,
        range_end=range_end,
        target=pb.Compare.CompareTarget.Value(target),
        result=pb.Compare.CompareResult.Value(result),
    )
    field = {"VALUE": "value", "VERSION": "version", "CREATE": "create_revision",
             "MOD": "mod_revision", "LEASE": "lease"}[target]
    setattr(c, field, value)
    return c


def prefix_end(prefix: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the range_end covering every key that starts with prefix."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
