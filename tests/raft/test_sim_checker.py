"""The simulator's log-matching check compares a write with the disk it extends."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.sim.checker import SafetyChecker, SafetyViolation


def _node(node_id: int, terms: list[int]) -> SimpleNamespace:
    """A node whose disk holds entries 1..len(terms) with these terms."""
    st = MemoryStorage()
    st.append([pb.Entry(index=i, term=t, data=b"%d" % i) for i, t in enumerate(terms, 1)])
    return SimpleNamespace(id=node_id, storage=st)


def test_a_write_whose_disk_predecessor_differs_is_a_log_matching_failure():
    chk = SafetyChecker()
    chk.before_persist(_node(1, [1, 1]), [pb.Entry(index=3, term=2, data=b"3")])
    with pytest.raises(SafetyViolation, match="entry \\(3, 2\\) follows term 3"):
        chk.before_persist(_node(2, [1, 3]), [pb.Entry(index=3, term=2, data=b"3")])


def test_a_write_is_checked_against_its_disk_not_a_newer_log_in_memory():
    """A node steps a newer leader's append while a write is under way: its memory may
    already hold a replacement for the entry the write extends (etcd-io/raft's
    stableTo keeps that replacement unstable); the write itself extends the disk."""
    chk = SafetyChecker()
    chk.before_persist(_node(1, [1, 1]), [pb.Entry(index=3, term=2, data=b"3")])
    n2 = _node(2, [1, 1])
    n2.raw = SimpleNamespace(raft=SimpleNamespace(raft_log=SimpleNamespace(
        zero_term=lambda i: 3)))  # memory: entry 2 replaced by a term-3 leader's
    chk.before_persist(n2, [pb.Entry(index=3, term=2, data=b"3")])
