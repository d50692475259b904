"""Key requests applied while a background commit lands (mvcc/overlay.py) answer, read and
replay exactly as if each had waited for the commit.

A member whose state-db commits are held on the commit thread (a slow disk) is driven
side by side with one that commits synchronously, through the same random batches of
puts, deletes, Kubernetes-shaped txns, and requests the overlay hands back to the apply
txn (range deletes, txns with ranges, keys moving between leases, refused requests):
every response, every watch event and everything a reader sees after each batch must
be the same, and so must the state after a crash and a replay of the log.

The same comparison covers `Applier.apply_inline` (the Runner's loop applying a small
batch itself while the apply thread is idle): it must take the same batches, or decline
them leaving no trace for `apply` to take.
"""

from __future__ import annotations

import random
import threading

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.raftpb import raft_pb2
from kubekv_server.apply.applier import Applier
from kubekv_server.backend.state_db import Backend
from kubekv_server.errors import EtcdError
from kubekv_server.lease import LeaseStore
from kubekv_server.member.proposals import encode_internal
from kubekv_server.mvcc import MVCCStore

LEASE = 7


class HeldBackend(Backend):
    """A Backend whose background commits land only once `release` is set, or after
    `patience` seconds (so a request that must wait for one never waits forever)."""

    def __init__(self, *args, patience: float = 0.05, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.patience = patience

    def _land(self, txn) -> None:
        self.release.wait(self.patience)
        super()._land(txn)


class Member:
    def __init__(self, path, background: bool, held: bool = False) -> None:
        self.path = path
        cls = HeldBackend if held else Backend
        self.backend = cls(str(path), batch_interval=3600, batch_limit=3,
                           commit_in_background=background)
        self.mvcc = MVCCStore(self.backend.env)
        self.leases = LeaseStore(self.backend, 5)
        self.applier = Applier(self.backend, self.mvcc, self.leases)

    inline = False  # apply_inline first, as the Runner's loop does (`inlined` records it)

    def apply(self, entries: list[raft_pb2.Entry]) -> tuple[list, list]:
        out = self.applier.apply_inline(entries) if self.inline else None
        if self.inline:
            self.inlined.append(out is not None)
        if out is None:
            out = self.applier.apply(entries)
        results = [r.SerializeToString() if not isinstance(r, EtcdError)
                   else (r.code, r.message) for _, r in out.results]
        events = [(rev, [e.SerializeToString() for e in evs], size)
                  for rev, evs, size in out.revisions]
        return results, events

    def state(self) -> tuple:
        """Everything a client could read (the pending view over the last commit)."""
        with self.mvcc.read() as r:
            kvs = [kv.SerializeToString() for kv in r.range(b"\x00", b"").kvs]
            history = [(e.type, e.kv.SerializeToString()) for e in r.history(1, 1 << 30)]
            one = r.live_kv(b"k03")
        return (self.mvcc.revisions(), kvs, history, one, self.mvcc.key_count(),
                self.mvcc.hash_kv()[0])

    def counts(self) -> tuple[int, int, int, int]:
        """etcd_mvcc_{range,put,delete,txn}_total: each applied request counted once."""
        c = self.mvcc.counts
        return c.range, c.put, c.delete, c.txn

    def close(self) -> None:
        self.backend.close()


def _entry(index: int, field: str, req) -> raft_pb2.Entry:
    data = encode_internal(index, field, req.SerializeToString(), ("", 0))
    return raft_pb2.Entry(index=index, term=1, data=data, type=raft_pb2.EntryNormal)


def _random_request(rnd: random.Random, revisions: dict[bytes, int]):
    key = b"k%02d" % rnd.randrange(12)
    if rnd.random() < 0.1:
        key = b"long/" + b"x" * 500 + key  # a stored key with a digest (stored_key.py)
    roll = rnd.random()
    if roll < 0.3:
        return "put", pb.PutRequest(key=key, value=b"v%d" % rnd.randrange(1000),
                                    prev_kv=rnd.random() < 0.3)
    if roll < 0.5:  # Kubernetes' update: compare mod_revision, put, else get
        return "txn", pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=revisions.get(key, 0))],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"t"))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))])
    if roll < 0.6:  # Kubernetes' delete
        return "txn", pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=revisions.get(key, 0))],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                key=key, prev_kv=True))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))])
    if roll < 0.7:
        return "delete_range", pb.DeleteRangeRequest(key=key, prev_kv=rnd.random() < 0.5)
    if roll < 0.75:  # a range: the apply txn's
        return "delete_range", pb.DeleteRangeRequest(key=b"k05", range_end=b"k07")
    if roll < 0.8:  # a txn reading a range, and one two puts deep
        return "txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"r")),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k", range_end=b"l"))])
    if roll < 0.85:
        return "txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"a")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"k00", value=b"b")),
            pb.RequestOp(request_range=pb.RangeRequest(key=key))])
    if roll < 0.9:  # a key onto a lease and back: the lease records change with it
        return "put", pb.PutRequest(key=key, value=b"l", lease=LEASE * (rnd.random() < 0.5))
    if roll < 0.95:  # refused: no such lease
        return "put", pb.PutRequest(key=key, value=b"x", lease=999)
    return "txn", pb.TxnRequest(  # a compare on a range, and an old revision's read
        compare=[pb.Compare(key=b"k00", range_end=b"k03", target=pb.Compare.VERSION,
                            result=pb.Compare.GREATER, version=0)],
        success=[pb.RequestOp(request_range=pb.RangeRequest(key=key, revision=2))])


def _random_batch(rnd: random.Random, batch_no: int, index: int, revisions: dict[bytes, int],
                  most: int) -> list[raft_pb2.Entry]:
    """Batch `batch_no` of a random run, its entries after `index`: the lease the keys
    move onto first, then 1 to `most` random requests and, now and then, a leader's
    empty entry."""
    if batch_no == 0:
        reqs = [("lease_grant", pb.LeaseGrantRequest(ID=LEASE, TTL=100))]
    else:
        reqs = [_random_request(rnd, revisions) for _ in range(rnd.randrange(1, most + 1))]
    entries = []
    for field, req in reqs:
        index += 1
        entries.append(_entry(index, field, req))
    if rnd.random() < 0.1:  # a leader's empty entry
        index += 1
        entries.append(raft_pb2.Entry(index=index, term=1, type=raft_pb2.EntryNormal))
    return entries


def _batches(rnd: random.Random, revisions: dict[bytes, int], log: list[raft_pb2.Entry],
             most: int):
    """80 random batches of at most `most` requests (`_random_batch`), numbered, each
    added to `log` before it is yielded."""
    index = 0
    for batch_no in range(80):
        entries = _random_batch(rnd, batch_no, index, revisions, most)
        index = entries[-1].index
        log.extend(entries)
        yield batch_no, entries


def _close(*members: Member) -> None:
    for m in members:
        if isinstance(m.backend, HeldBackend):
            m.backend.release.set()  # (a commit held at its gate would wait for it)
        m.close()


def _crash_and_replay(m: Member, ref: Member, log: list[raft_pb2.Entry]) -> Member:
    """Crash `m` (what it has not committed is lost), reopen it and replay the whole log
    from the applied index its state db recorded: it must end as `ref`. Returns the new
    member (to close)."""
    m.backend.abort()
    m.close()
    m = Member(m.path, background=True)
    m.apply(log)
    assert m.state() == ref.state()
    m.backend.commit()
    ref.backend.commit()
    assert m.state() == ref.state()
    assert m.backend.applied_index() == ref.backend.applied_index() == log[-1].index
    return m


@pytest.mark.parametrize("seed", range(4))
def test_the_overlay_answers_reads_and_replays_as_the_apply_txn(tmp_path, seed):
    rnd = random.Random(seed)
    m = Member(tmp_path / "m", background=True, held=True)
    ref = Member(tmp_path / "ref", background=False)
    overlaid = []
    inner = m.applier._overlay_request

    def spy(ov, index, data, out):
        took = inner(ov, index, data, out)
        overlaid.append(took)
        return took

    m.applier._overlay_request = spy
    log: list[raft_pb2.Entry] = []
    revisions: dict[bytes, int] = {}
    try:
        for batch_no, entries in _batches(rnd, revisions, log, 5):
            if rnd.random() < 0.3:
                m.backend.release.set()  # the commit under way may land now
            else:
                m.backend.release.clear()
            got, expected = m.apply(entries), ref.apply(entries)
            assert got == expected, f"batch {batch_no}"
            assert m.state() == ref.state(), f"batch {batch_no}"
            with ref.mvcc.read() as r:
                for kv in r.range(b"\x00", b"").kvs:
                    revisions[kv.key] = kv.mod_revision
        assert any(overlaid) and not all(overlaid)  # both paths were taken
        # a crash with a commit landing and an overlay held: replaying the log from
        # the applied index the state db recorded gives the same state
        m.backend.release.set()
        m = _crash_and_replay(m, ref, log)
    finally:
        _close(m, ref)


def test_a_reader_sees_the_overlay_over_a_commit_it_was_not_told_of(tmp_path):
    """Between a background commit landing and the apply thread taking note, a reader's
    snapshot holds the commit while the published pending view still extends the one
    before: it lays only the changes above its snapshot."""
    m = Member(tmp_path / "m", background=True, held=True)
    try:
        idx = iter(range(1, 100))
        m.apply([_entry(next(idx), "put", pb.PutRequest(key=b"a", value=b"1")),
                 _entry(next(idx), "put", pb.PutRequest(key=b"b", value=b"1")),
                 _entry(next(idx), "put", pb.PutRequest(key=b"c", value=b"1"))])
        assert m.backend.landing  # the batch limit: landing, held
        m.apply([_entry(next(idx), "put", pb.PutRequest(key=b"a", value=b"2")),
                 _entry(next(idx), "delete_range", pb.DeleteRangeRequest(key=b"b"))])
        assert m.applier._overlay is not None
        before = m.state()
        m.backend.release.set()
        m.backend._landing.result()  # landed; the apply thread has not taken note
        assert m.backend.landing
        assert m.state() == before
        with m.mvcc.read() as r:
            assert [(kv.key, kv.value) for kv in r.range(b"a", b"z").kvs] == \
                [(b"a", b"2"), (b"c", b"1")]
            assert r.current_revision == 6  # the puts at 2, 3, 4 landed; 5 and 6 laid
            assert r._p.base == 4
        assert m.backend.poll_landing()  # now the overlay goes into the next txn
        assert m.state() == before
    finally:
        m.close()


@pytest.mark.parametrize(("seed", "held"), [(0, True), (1, True), (2, False), (3, False)])
def test_apply_inline_answers_reads_and_replays_as_the_apply_thread(tmp_path, seed, held):
    """Batches tried with `apply_inline` first (declined while a commit lands, for a
    window holding another kind of request, for anything that reads more than single
    live keys or moves a key between leases) against a member that only uses `apply`."""
    rnd = random.Random(seed)
    m = Member(tmp_path / "m", background=True, held=held)
    m.inline, m.inlined = True, []
    ref = Member(tmp_path / "ref", background=True)
    log: list[raft_pb2.Entry] = []
    revisions: dict[bytes, int] = {}
    try:
        for batch_no, entries in _batches(rnd, revisions, log, 3):
            if held and rnd.random() < 0.5:
                m.backend.release.set()
            elif held:
                m.backend.release.clear()
            if m.backend.landing and rnd.random() < 0.7:
                m.backend.wait_landing()  # (the server's commits mostly land between writes)
            got, expected = m.apply(entries), ref.apply(entries)
            assert got == expected, f"batch {batch_no}"
            assert m.counts() == ref.counts(), f"batch {batch_no}"
            assert m.state() == ref.state(), f"batch {batch_no}"
            for member in (m, ref):  # (read on both: reads count too)
                with member.mvcc.read() as r:
                    for kv in r.range(b"\x00", b"").kvs:
                        revisions[kv.key] = kv.mod_revision
        assert any(m.inlined) and not all(m.inlined)  # both paths were taken
        if held:
            m.backend.release.set()
        m = _crash_and_replay(m, ref, log)
    finally:
        _close(m, ref)


def test_apply_inline_gives_up_past_its_time_budget_leaving_nothing_done(tmp_path, monkeypatch):
    """The loop serves no client while it applies: a batch unfinished after
    INLINE_APPLY_SECONDS declines, nothing applied, for the apply thread to take."""
    from kubekv_server.apply import applier as applier_module

    m = Member(tmp_path / "m", background=True)
    try:
        m.apply([_entry(1, "put", pb.PutRequest(key=b"a", value=b"1"))])  # opens the txn
        before = m.state()
        counts = m.counts()  # (reads count too: taken after the state's)
        monkeypatch.setattr(applier_module, "INLINE_APPLY_SECONDS", -1.0)
        batch = [_entry(2, "put", pb.PutRequest(key=b"b", value=b"2")),
                 _entry(3, "put", pb.PutRequest(key=b"a", value=b"3"))]
        assert m.applier.apply_inline(batch) is None
        assert m.counts() == counts
        assert m.state() == before
        assert m.applier.applied_index == 1
        monkeypatch.undo()
        out = m.applier.apply_inline(batch)
        assert out is not None and out.applied_index == 3
        with m.mvcc.read() as r:
            assert [(kv.key, kv.value) for kv in r.range(b"a", b"z").kvs] == \
                [(b"a", b"3"), (b"b", b"2")]
    finally:
        m.close()


def test_a_redo_after_an_inline_batch_applies_its_requests_again(tmp_path, monkeypatch):
    """A key request that fails after it wrote makes the apply txn begin anew and the
    window's key requests apply again (`Applier._redo`): those the loop applied inline
    are in that window too, so nothing they reported applied is lost from the txn."""
    from kubekv_server.apply import handlers

    real_put = handlers.apply_put

    def put_then_fail(w, req, lease_exists):
        resp = real_put(w, req, lease_exists)
        if req.key == b"boom":
            raise RuntimeError("failed after its write")  # (no request does this today)
        return resp

    monkeypatch.setattr(handlers, "apply_put", put_then_fail)
    m = Member(tmp_path / "m", background=True)
    ref = Member(tmp_path / "ref", background=True)
    log = [_entry(1, "put", pb.PutRequest(key=b"a", value=b"1")),
           _entry(2, "put", pb.PutRequest(key=b"b", value=b"2")),
           _entry(3, "put", pb.PutRequest(key=b"boom", value=b"3"))]
    try:
        for member in (m, ref):
            member.apply(log[:1])  # opens the apply txn
        assert m.applier.apply_inline(log[1:2]) is not None
        ref.apply(log[1:2])
        got, expected = m.apply(log[2:]), ref.apply(log[2:])
        assert got == expected
        assert m.backend.landing  # the window's bound (3 entries) commits it
        for member in (m, ref):
            member.backend.wait_landing()
        assert m.state() == ref.state()
        with m.mvcc.read() as r:
            assert [(kv.key, kv.value) for kv in r.range(b"a", b"z").kvs] == \
                [(b"a", b"1"), (b"b", b"2")]
        assert m.backend.applied_index() == 3
    finally:
        _close(m, ref)
