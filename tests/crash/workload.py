"""A write workload whose every outcome can be checked after a crash.

N writer threads, each with its own gRPC channel and its own keys, issue one
request at a time and record it before sending (in flight) and after the answer
(acknowledged, with the revision the server reported). A writer stops at its
first error, so after a kill each writer has at most one request whose outcome
is unknown.

Operations (every value starts with `writer:seq`, so each stored value names its
request; a few carry up to 40 KiB of padding after a `|`):
- put: `w/p` = value
- pair: a Txn putting `w/ta` and `w/tb` = value (must be all-or-nothing)
- cas: a Txn `value(w/c) == last value` → put `w/c` = value; failing is a lost write
- move: a Txn deleting `w/p` and putting `w/m` = value (a tombstone and a put, atomically)

`History.verify` reads the restarted store and checks, for the revisions written
since the last check, that each revision is exactly one request of this round,
that every acknowledged request sits at the revision it was acknowledged with,
that requests never acknowledged appear whole or not at all, and that every key
holds the last acknowledged value of its writer or that writer's in-flight one.
"""

from __future__ import annotations

import dataclasses
import random
import threading

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc

PREFIX = b"/crash/"
PREFIX_END = b"/crash0"
RANGES_PER_TXN = 100  # below etcd's default --max-txn-ops (128)
RPC_TIMEOUT = 10.0


@dataclasses.dataclass
class Op:
    writer: int
    seq: int
    kind: str  # "put" | "pair" | "cas" | "probe"
    keys: tuple[bytes, ...]
    value: bytes
    deletes: tuple[bytes, ...] = ()
    revision: int = 0  # set when acknowledged


def key(writer: int, name: str) -> bytes:
    return PREFIX + b"w%02d/" % writer + name.encode()


class Writer(threading.Thread):
    """One client issuing requests back to back until told to stop or the server fails."""

    def __init__(self, endpoint: str, writer: int, first_seq: int, values: dict[bytes, bytes],
                 seed: int, stop: threading.Event) -> None:
        super().__init__(name=f"crash-writer-{writer}", daemon=True)
        self.endpoint = endpoint
        self.writer = writer
        self.seq = first_seq
        self.cas_value = values.get(key(writer, "c"), b"")
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.acked: list[Op] = []
        self.in_flight: Op | None = None
        self.error: str | None = None
        self.violations: list[str] = []

    def _next_op(self) -> tuple[Op, str, object]:
        self.seq += 1
        w = self.writer
        value = b"%d:%d" % (w, self.seq)
        if self.rng.random() < 0.05:  # large values live in LMDB overflow pages
            value += b"|" + self.rng.randbytes(self.rng.randrange(4 << 10, 40 << 10))
        roll = self.rng.random()
        if roll < 0.5:
            op = Op(w, self.seq, "put", (key(w, "p"),), value)
            return op, "Put", pb.PutRequest(key=op.keys[0], value=value)
        if roll < 0.7:
            op = Op(w, self.seq, "pair", (key(w, "ta"), key(w, "tb")), value)
            req = pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=k, value=value)) for k in op.keys
            ])
            return op, "Txn", req
        if roll < 0.8:
            op = Op(w, self.seq, "move", (key(w, "m"),), value, deletes=(key(w, "p"),))
            req = pb.TxnRequest(success=[
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=op.deletes[0])),
                pb.RequestOp(request_put=pb.PutRequest(key=op.keys[0], value=value)),
            ])
            return op, "Txn", req
        op = Op(w, self.seq, "cas", (key(w, "c"),), value)
        req = pb.TxnRequest(
            compare=[pb.Compare(key=op.keys[0], target=pb.Compare.VALUE,
                                result=pb.Compare.EQUAL, value=self.cas_value)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=op.keys[0], value=value))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=op.keys[0]))],
        )
        if not self.cas_value:  # first cas of this writer: the key must not exist yet
            req.compare[0].target = pb.Compare.CREATE
            req.compare[0].create_revision = 0
        return op, "Txn", req

    def run(self) -> None:
        channel = grpc.insecure_channel(self.endpoint)
        kv = rpc_pb2_grpc.KVStub(channel)
        try:
            while not self.stop_event.is_set():
                op, method, req = self._next_op()
                self.in_flight = op
                try:
                    resp = getattr(kv, method)(req, timeout=RPC_TIMEOUT)
                except grpc.RpcError as exc:
                    self.error = f"{exc.code().name}: {exc.details()}"
                    return  # the outcome of `op` is unknown; stay in flight
                if op.kind == "cas":
                    if not resp.succeeded:
                        got = resp.responses[0].response_range.kvs
                        self.violations.append(
                            f"cas {op.value!r} failed: expected {self.cas_value!r}, store has "
                            f"{got[0].value if got else None!r} (an acknowledged write was lost)")
                        return
                    self.cas_value = op.value
                op.revision = resp.header.revision
                self.acked.append(op)
                self.in_flight = None
        finally:
            channel.close()


class History:
    """What the clients know, across rounds: values and revisions checked so far."""

    def __init__(self, writers: int) -> None:
        self.writers = writers
        self.values: dict[bytes, bytes] = {}  # key -> value as of `self.revision`
        self.meta: dict[bytes, tuple[int, int, int]] = {}  # key -> (create, mod, version)
        self.revision = 1  # every revision up to here has been checked
        self.next_seq = [0] * writers
        self.hashed: tuple[int, int, int] | None = None  # (revision, compact revision, hash)
        self.hash_checks = 0
        self.rounds: list[dict] = []

    # ------------------------------------------------------------ one round

    def start_writers(self, endpoint: str, seed: int, stop: threading.Event) -> list[Writer]:
        rng = random.Random(seed)
        ws = [Writer(endpoint, w, self.next_seq[w], self.values, rng.randrange(1 << 30), stop)
              for w in range(self.writers)]
        for w in ws:
            w.start()
        return ws

    def verify(self, kv: rpc_pb2_grpc.KVStub, ws: list[Writer],
               maintenance: rpc_pb2_grpc.MaintenanceStub | None = None) -> int:
        """Check the store against the finished writers; return the current revision.

        With `maintenance`, also check that HashKV of the revision checked last time
        is unchanged (history below it was not touched), unless a compaction moved on.
        Counts the comparisons made in `self.hash_checks`.
        """
        problems: list[str] = [v for w in ws for v in w.violations]
        if maintenance is not None and self.hashed is not None:
            rev, compact_rev, h = self.hashed
            try:
                resp = maintenance.HashKV(pb.HashKVRequest(revision=rev), timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:  # compacted since: nothing to compare
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                resp = None
            if resp is not None and resp.compact_revision == compact_rev:
                self.hash_checks += 1
                if resp.hash != h:
                    problems.append(f"HashKV at revision {rev} changed across the restart: "
                                    f"{h:#x} -> {resp.hash:#x} (compact revision {compact_rev})")
        acked = [op for w in ws for op in w.acked]
        in_flight = {(w.writer, w.in_flight.seq): w.in_flight for w in ws if w.in_flight}
        by_id = {(op.writer, op.seq): op for op in acked}
        by_id.update(in_flight)

        now = kv.Range(pb.RangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=RPC_TIMEOUT)
        current = now.header.revision
        max_acked = max((op.revision for op in acked), default=self.revision)
        if current < max_acked:
            problems.append(f"revision went back: store at {current}, acknowledged {max_acked}")

        # every revision since the last check is exactly one request of this round
        applied: dict[tuple[int, int], int] = {}
        deleted_at: list[tuple[int, bytes]] = []  # (revision, key) that must be absent there
        revs = list(range(self.revision + 1, current + 1))
        for chunk_start in range(0, len(revs), RANGES_PER_TXN):
            chunk = revs[chunk_start:chunk_start + RANGES_PER_TXN]
            txn = pb.TxnRequest(success=[
                pb.RequestOp(request_range=pb.RangeRequest(
                    key=PREFIX, range_end=PREFIX_END, revision=r,
                    min_mod_revision=r, max_mod_revision=r))
                for r in chunk
            ])
            resp = kv.Txn(txn, timeout=RPC_TIMEOUT)
            for r, op_resp in zip(chunk, resp.responses, strict=True):
                kvs = op_resp.response_range.kvs
                if not kvs:
                    problems.append(f"revision {r}: no key changed (gap in revisions)")
                    continue
                values = {kv_.value for kv_ in kvs}
                if len(values) != 1:
                    problems.append(f"revision {r}: several requests {sorted(values)}")
                    continue
                value = values.pop()
                wid, seq = (int(x) for x in value.split(b"|", 1)[0].split(b":"))
                op = by_id.get((wid, seq))
                if op is None:
                    problems.append(f"revision {r}: {value!r} was never sent in this round")
                    continue
                if (wid, seq) in applied:
                    problems.append(f"revision {r}: {value!r} applied twice "
                                    f"(also at {applied[(wid, seq)]})")
                applied[(wid, seq)] = r
                if sorted(kv_.key for kv_ in kvs) != sorted(op.keys):
                    problems.append(f"revision {r}: {op.kind} {value!r} half applied: "
                                    f"{sorted(kv_.key for kv_ in kvs)} of {sorted(op.keys)}")
                deleted_at.extend((r, k) for k in op.deletes)
                if op.revision and op.revision != r:
                    problems.append(f"{value!r} acknowledged at revision {op.revision}, "
                                    f"stored at {r}")
        for chunk_start in range(0, len(deleted_at), RANGES_PER_TXN):
            chunk = deleted_at[chunk_start:chunk_start + RANGES_PER_TXN]
            txn = pb.TxnRequest(success=[
                pb.RequestOp(request_range=pb.RangeRequest(key=k, revision=r)) for r, k in chunk
            ])
            resp = kv.Txn(txn, timeout=RPC_TIMEOUT)
            for (r, k), op_resp in zip(chunk, resp.responses, strict=True):
                if op_resp.response_range.kvs:
                    problems.append(f"revision {r}: {k!r} should be deleted, holds "
                                    f"{op_resp.response_range.kvs[0].value!r}")
        for op in acked:
            if (op.writer, op.seq) not in applied and op.revision > self.revision:
                problems.append(f"acknowledged {op.kind} {op.value!r} (revision {op.revision}) "
                                "is missing from history")

        # every key holds its writer's last acknowledged value or its in-flight one
        stored = {kv_.key: kv_.value for kv_ in now.kvs}
        problems.extend(self._check_metadata(now, applied, by_id))
        expected = dict(self.values)
        for op in acked:
            for k in op.deletes:
                expected.pop(k, None)
            for k in op.keys:
                expected[k] = op.value
        for w in ws:
            keys = {k for k in list(expected) + list(stored)
                    if k.startswith(key(w.writer, ""))}
            for k in keys:
                allowed = {expected.get(k)}
                if w.in_flight and k in w.in_flight.keys:
                    allowed.add(w.in_flight.value)
                if w.in_flight and k in w.in_flight.deletes:
                    allowed.add(None)
                if stored.get(k) not in allowed:
                    problems.append(f"{k!r} = {stored.get(k)!r}, expected one of {allowed}")
        if problems:
            raise AssertionError("\n".join(problems[:30]))

        self.values = {k: v for k, v in stored.items() if not k.endswith(b"/probe")}
        self.meta = {kv_.key: (kv_.create_revision, kv_.mod_revision, kv_.version)
                     for kv_ in now.kvs if not kv_.key.endswith(b"/probe")}
        for w in ws:
            self.next_seq[w.writer] = w.seq + 1  # never reuse a seq, acknowledged or not
        self.revision = current
        if maintenance is not None:
            try:
                resp = maintenance.HashKV(pb.HashKVRequest(revision=current), timeout=RPC_TIMEOUT)
                self.hashed = (current, resp.compact_revision, resp.hash)
            except grpc.RpcError as exc:
                # a compaction at exactly `current` leaves nothing to hash (etcd: rev <= compact
                # revision is compacted), so there is nothing to compare next round
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                self.hashed = None
        self.rounds.append({"acked": len(acked), "unknown": len(in_flight),
                            "unknown_applied": len(set(in_flight) & set(applied)),
                            "revision": current})
        return current

    def _check_metadata(self, now: pb.RangeResponse, applied: dict[tuple[int, int], int],
                        by_id: dict[tuple[int, int], Op]) -> list[str]:
        """Replay the applied requests in revision order over the last checked key metadata:
        create revision, mod revision and version of every key must come out as stored."""
        meta = dict(self.meta)
        for ident, r in sorted(applied.items(), key=lambda item: item[1]):
            op = by_id[ident]
            for k in op.deletes:
                meta.pop(k, None)
            for k in op.keys:
                create, _, version = meta.get(k, (r, 0, 0))
                meta[k] = (create, r, version + 1)
        problems = []
        for kv_ in now.kvs:
            if kv_.key.endswith(b"/probe"):
                continue
            got = (kv_.create_revision, kv_.mod_revision, kv_.version)
            if meta.get(kv_.key) != got:
                problems.append(f"{kv_.key!r}: (create, mod, version) = {got}, "
                                f"history says {meta.get(kv_.key)}")
        return problems

    def probe(self, kv: rpc_pb2_grpc.KVStub, value: bytes) -> None:
        """A write after recovery continues right after the recovered revision."""
        resp = kv.Put(pb.PutRequest(key=PREFIX + b"probe", value=value), timeout=RPC_TIMEOUT)
        if resp.header.revision != self.revision + 1:
            raise AssertionError(f"first write after restart got revision "
                                 f"{resp.header.revision}, expected {self.revision + 1}")
        self.revision = resp.header.revision
