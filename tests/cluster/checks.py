"""What every fault test asserts about a cluster and the history its clients recorded.

- the history is linearizable (kubekv_testing's checker, etcd-like KV model, which also
  checks revisions: no two writes share one, real-time order, per-client monotonicity);
- no client ever saw the header revision go backwards (checked again here, directly);
- no acknowledged write is lost: every acknowledged put / successful CAS / delete is in
  the store's history at the revision it was acknowledged with (so the current value is
  it or a later one);
- once healed, every member applied the same index and holds the same state: equal
  HashKV at the same revision, and equal full serializable ranges.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.cluster import Cluster, ClusterMember
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
    check_kv,
)
from kubekv_testing.polling import wait_for
from kubekv_testing.recorder import Recorder, Workload, kv_call


@dataclasses.dataclass
class Report:
    ops: int
    ok: int
    unknown: int
    failed: int
    acked_writes: int
    check_seconds: float

    def __str__(self) -> str:
        return (f"{self.ops} ops ({self.ok} ok, {self.unknown} unknown, {self.failed} failed), "
                f"{self.acked_writes} acknowledged writes, checked in {self.check_seconds:.2f}s")


class PacedWorkload(Workload):
    """A Workload whose clients pause `pace` seconds before each call, so that a fault
    scenario of a few seconds sees a steady load of a few hundred operations."""

    pace = 0.0

    def _take_ticket(self) -> bool:
        if self.pace:
            time.sleep(self.pace)
        return super()._take_ticket()


def workload(cluster: Cluster, *, clients: int = 3, max_ops: int = 3000, duration: float = 90.0,
             prefix: bytes = b"/linz/", seed: int = 0, keys: int = 6, pace: float = 0.02,
             endpoints: Sequence[str] | None = None, recorder: Recorder | None = None,
             rpc_timeout: float = 1.5) -> Workload:
    """A random put/get/delete/CAS workload over the cluster's client endpoints; the caps
    are a safety net, `run_with_faults` stops it once the faults are over."""
    w = PacedWorkload(endpoints or cluster.endpoints, clients=clients, max_ops=max_ops,
                      duration=duration, keys=keys, prefix=prefix, seed=seed,
                      rpc_timeout=rpc_timeout, backoff=0.05, recorder=recorder)
    w.pace = pace
    return w


def run_with_faults(w: Workload, faults: Callable[[], None], ops_before: int = 30,
                    ops_after: int = 60, timeout: float = 60.0) -> list[Operation]:
    """Run the workload: `ops_before` successful operations, then `faults()` (while the
    clients keep going), then `ops_after` more successful ones; returns the history."""
    w.start()
    counts = w.recorder.counts
    try:
        wait_for(lambda: counts["ok"] >= ops_before, timeout,
                 f"{ops_before} successful operations before the faults")
        faults()
        target = counts["ok"] + ops_after
        wait_for(lambda: counts["ok"] >= target or not any(t.is_alive() for t in w._threads),
                 timeout, f"{ops_after} successful operations after the faults")
    finally:
        w.stop()
        history = w.join(30)
    return history


def acknowledged_writes(history: Sequence[Operation]) -> list[Operation]:
    out = []
    for op in history:
        if not op.known:
            continue
        if isinstance(op.input, Put) and isinstance(op.output, PutResult):
            out.append(op)
        elif isinstance(op.input, Cas) and isinstance(op.output, CasResult) and op.output.succeeded:
            out.append(op)
        elif (isinstance(op.input, Delete) and isinstance(op.output, DeleteResult)
              and op.output.deleted):
            out.append(op)
    return out


def assert_linearizable(history: Sequence[Operation], timeout: float = 30.0) -> float:
    res = check_kv(history, timeout=timeout)
    assert res.ok, "history is not linearizable:\n" + res.explain()
    return res.seconds


def assert_revisions_monotonic(history: Sequence[Operation]) -> None:
    """Each client's successive successful calls see non-decreasing header revisions."""
    by_client: dict = {}
    for op in history:
        if op.known and getattr(op.output, "revision", None) is not None:
            by_client.setdefault(op.client_id, []).append(op)
    for client, ops in by_client.items():
        ops.sort(key=lambda o: o.call)
        for a, b in zip(ops, ops[1:], strict=False):
            assert b.output.revision >= a.output.revision, (
                f"client {client} saw the revision go backwards: {a} then {b}")


def assert_no_acked_write_lost(member: ClusterMember, history: Sequence[Operation]) -> int:
    """Every acknowledged write is in the store's history at its acknowledged revision."""
    acked = acknowledged_writes(history)
    kv = member.kv
    for op in acked:
        rev = op.output.revision
        key = op.input.key
        resp = kv.Range(pb.RangeRequest(key=key, revision=rev), timeout=5)
        if isinstance(op.input, Delete):
            assert not resp.kvs, f"acknowledged delete lost: {op}; at {rev}: {resp.kvs}"
            continue
        value = op.input.value if isinstance(op.input, Put) else op.input.new_value
        assert resp.kvs, f"acknowledged write lost: {op}; key absent at revision {rev}"
        got = resp.kvs[0]
        assert (got.value, got.mod_revision) == (value, rev), (
            f"acknowledged write lost: {op}; at revision {rev} the key holds "
            f"{got.value!r} written at {got.mod_revision}")
    # ... and the current state is at least that new, per key.
    latest: dict = {}
    for op in acked:
        latest[op.input.key] = max(latest.get(op.input.key, 0), op.output.revision)
    for key, rev in latest.items():
        resp = kv.Range(pb.RangeRequest(key=key), timeout=5)
        assert resp.header.revision >= rev, f"{member.name} is at {resp.header.revision} < {rev}"
        if resp.kvs:
            assert resp.kvs[0].mod_revision >= rev, (
                f"{key!r}: current mod_revision {resp.kvs[0].mod_revision} is older than "
                f"the acknowledged write at {rev}")
    return len(acked)


def assert_members_equal(cluster: Cluster, timeout: float = 30.0) -> int:
    """Wait for every running member to apply the same index, then compare their states."""
    applied = cluster.wait_converged(timeout)
    members = [m for m in cluster.members if m.running]
    revs = {m.name: m.status().revision for m in members}
    assert len(set(revs.values())) == 1, f"same applied index {applied}, revisions {revs}"
    rev = revs[members[0].name]
    hashes = {m.name: m.hash_kv(rev).hash for m in members}
    assert len(set(hashes.values())) == 1, f"HashKV at revision {rev} differs: {hashes}"
    dumps = {}
    for m in members:
        resp = m.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev,
                                          serializable=True), timeout=5)
        dumps[m.name] = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                         for kv in resp.kvs]
    first = dumps[members[0].name]
    for name, dump in dumps.items():
        assert dump == first, f"{name}'s keys differ from {members[0].name}'s at {rev}"
    # Every member sees the same member list.
    lists = {m.name: sorted((x.ID, x.isLearner) for x in
                            m.cluster.MemberList(pb.MemberListRequest(linearizable=False),
                                                 timeout=5).members)
             for m in members}
    assert len({tuple(v) for v in lists.values()}) == 1, f"member lists differ: {lists}"
    return rev


def verify(cluster: Cluster, history: Sequence[Operation], recorder: Recorder | None = None,
           check_timeout: float = 30.0) -> Report:
    """All the checks of this module, on a healed cluster."""
    seconds = assert_linearizable(history, check_timeout)
    assert_revisions_monotonic(history)
    cluster.wait_leader()
    assert_members_equal(cluster)
    lead = cluster.wait_leader()
    acked = assert_no_acked_write_lost(lead, history)
    counts = recorder.counts if recorder is not None else {}
    return Report(len(history), counts.get("ok", 0), counts.get("unknown", 0),
                  counts.get("failed", 0), acked, seconds)


class Prober(threading.Thread):
    """One client bound to one member, recording puts and linearizable gets into a shared
    recorder (so the checker sees them) and keeping the outcomes for assertions."""

    def __init__(self, member: ClusterMember, recorder: Recorder, client_id: str,
                 key: bytes, rpc_timeout: float = 1.0) -> None:
        super().__init__(name=f"prober-{client_id}", daemon=True)
        self.member = member
        self.recorder = recorder
        self.client_id = client_id
        self.key = key
        self.rpc_timeout = rpc_timeout
        self.stop_event = threading.Event()
        self.outcomes: list[tuple[float, float, object, object]] = []  # (call, ret, inp, out)
        self.seq = 0

    def run(self) -> None:
        ch = grpc.insecure_channel(self.member.endpoint)
        stub = rpc_pb2_grpc.KVStub(ch)
        try:
            while not self.stop_event.is_set():
                self.seq += 1
                inp = Put(self.key, b"%s:%d" % (self.client_id.encode(), self.seq)) \
                    if self.seq % 2 else Get(self.key)
                fn, convert = kv_call(stub, inp, self.rpc_timeout)
                t = time.monotonic()
                out = self.recorder.record(self.client_id, inp, fn, convert)
                self.outcomes.append((t, time.monotonic(), inp, out))
                if out is None:
                    time.sleep(0.05)
        finally:
            ch.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)

    def successes_between(self, start: float, end: float) -> list:
        """Successful calls issued after `start` that returned before `end`."""
        return [o for o in self.outcomes if o[3] is not None and o[0] >= start and o[1] <= end]


__all__ = [
    "Get", "GetResult", "Report", "Prober", "workload", "run_with_faults", "verify",
    "assert_linearizable", "assert_members_equal", "assert_no_acked_write_lost",
    "assert_revisions_monotonic", "acknowledged_writes",
]
