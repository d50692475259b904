"""A request that fails in the applier leaves no change, whatever else its batch held:
key requests write straight into the apply transaction (or, after another kind of
request, share a nested one per batch: apply/applier.py), so one that fails half-way
makes the earlier ones it held since its last commit be applied again."""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.raftpb import raft_pb2
from kubekv_server import errors
from kubekv_server.apply.applier import Applier
from kubekv_server.backend.state_db import Backend
from kubekv_server.lease import LeaseStore
from kubekv_server.member.proposals import encode_internal
from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.store import WriteTxn


class Member:
    def __init__(self, path) -> None:
        self.backend = Backend(str(path), batch_interval=3600)
        self.mvcc = MVCCStore(self.backend.env)
        self.leases = LeaseStore(self.backend, 5)
        self.applier = Applier(self.backend, self.mvcc, self.leases)
        self.index = 0

    def apply(self, *requests: tuple[str, object]) -> list:
        entries = []
        for field, req in requests:
            self.index += 1
            data = encode_internal(self.index, field, req.SerializeToString(), ("", 0))
            entries.append(raft_pb2.Entry(index=self.index, term=1, data=data,
                                          type=raft_pb2.EntryNormal))
        return [r for _, r in self.applier.apply(entries).results]

    def state(self) -> tuple:
        """Everything a client could read (the pending view over the last commit)."""
        with self.mvcc.read() as r:
            kvs = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version,
                    kv.lease) for kv in r.range(b"\x00", b"").kvs]
            history = [(e.type, e.kv.SerializeToString()) for e in r.history(1, 1 << 30)]
        return self.mvcc.revisions(), kvs, history, self.mvcc.key_count()


def put(key: bytes, lease: int = 0) -> tuple[str, object]:
    return "put", pb.PutRequest(key=key, value=b"v-" + key, lease=lease)


def txn(key: bytes, value: bytes) -> tuple[str, object]:
    return "txn", pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.VERSION, version=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
        failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))])


@pytest.fixture
def failing_end(monkeypatch):
    """An MVCC write txn that changed the key `bad` raises as it ends: after its writes
    (and its op counts), as a failing LMDB call or a bug there would."""
    end = WriteTxn.end

    def maybe_fail(self):
        rev = end(self)
        if any(ev.kv.key == b"bad" for ev in self.changes):
            raise RuntimeError("disk on fire")
        return rev

    monkeypatch.setattr(WriteTxn, "end", maybe_fail)


def test_a_request_failing_after_its_writes_leaves_nothing(tmp_path, failing_end):
    m, ref = Member(tmp_path / "m"), Member(tmp_path / "ref")
    m.apply(put(b"a"), ("delete_range", pb.DeleteRangeRequest(key=b"nothing")))
    ref.apply(put(b"a"), ("delete_range", pb.DeleteRangeRequest(key=b"nothing")))
    out = m.apply(put(b"b"), txn(b"c", b"1"), put(b"bad"), put(b"d"), txn(b"c", b"2"))
    expected = ref.apply(put(b"b"), txn(b"c", b"1"), put(b"d"), txn(b"c", b"2"))
    assert isinstance(out[2], errors.EtcdError)
    assert "internal error" in out[2].message
    del out[2]
    assert out == expected
    assert [r.header.revision for r in out] == [3, 4, 5, 6]
    assert m.state() == ref.state()
    # each counted once, not again when applied anew (the failed put too: it got as far)
    counts, rc = m.mvcc.counts, ref.mvcc.counts
    assert (counts.range, counts.put, counts.delete, counts.txn) == \
        (rc.range, rc.put + 1, rc.delete, rc.txn)
    m.backend.commit()
    ref.backend.commit()
    assert m.state() == ref.state()
    skip = (Backend.APPLIED_INDEX,)  # one entry more in m's log: the failed one
    assert m.backend.hash(skip) == ref.backend.hash(skip)


def test_refused_and_other_requests_between_key_requests(tmp_path):
    m = Member(tmp_path / "m")
    out = m.apply(put(b"a"), put(b"b", lease=7),  # no lease 7 yet: refused
                  ("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=60)),
                  put(b"b", lease=7), put(b"c"))
    assert out[1] == errors.LEASE_NOT_FOUND
    assert [r.header.revision for r in (out[0], out[2], out[3], out[4])] == [2, 2, 3, 4]
    _rev, kvs, _history, count = m.state()
    assert [(k, lease) for k, _v, _c, _m, _ver, lease in kvs] == \
        [(b"a", 0), (b"b", 7), (b"c", 0)]
    assert count == 3
    with m.backend.env.begin() as t:
        assert m.leases.keys(t, 7) == [b"b"]


def test_a_failure_after_another_kind_of_request_in_the_window(tmp_path, failing_end):
    """After a lease grant the window's key requests run in a nested txn: a failure there
    applies again only that txn's requests (the grant is not applied twice)."""
    m, ref = Member(tmp_path / "m"), Member(tmp_path / "ref")
    grant = ("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=60))
    for member in (m, ref):
        member.apply(put(b"a"), txn(b"c", b"0"))
    out = m.apply(put(b"b"), grant, put(b"c"), put(b"bad"), put(b"d", lease=7))
    expected = ref.apply(put(b"b"), grant, put(b"c"), put(b"d", lease=7))
    assert isinstance(out[3], errors.EtcdError)
    del out[3]
    assert out == expected
    assert m.state() == ref.state()
    skip = (Backend.APPLIED_INDEX,)
    assert m.backend.hash(skip) == ref.backend.hash(skip)
    m.apply(put(b"e"))  # a window after the commit writes straight into the txn again
    ref.apply(put(b"e"))
    m.backend.commit()
    ref.backend.commit()
    assert m.state() == ref.state()
    assert m.backend.hash(skip) == ref.backend.hash(skip)


def test_the_applied_index_and_revision_are_committed_with_the_changes(tmp_path):
    """Both are stored when the apply txn commits, not per batch: the file holds them
    exactly as of the changes it holds, for replay after a restart."""
    m = Member(tmp_path / "m")
    m.apply(put(b"a"), put(b"b"))
    m.apply(txn(b"c", b"1"))
    assert m.backend.applied_index() == 0  # nothing committed yet
    m.backend.commit()
    assert m.backend.applied_index() == 3
    with m.backend.env.begin() as t:
        assert m.mvcc.current_revision(t) == 4
    m.backend.close()
    again = Member(tmp_path / "m")
    assert again.applier.applied_index == 3
    assert again.mvcc.revisions() == (4, -1)
    again.index = 3
    assert [r.header.revision for r in again.apply(put(b"d"))] == [5]
