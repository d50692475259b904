"""Pure units: revision bytes, key-index seeks, KeyValue key extraction, CRC-32C."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdproto.mvccpb.kv_pb2 import KeyValue
from kubekv_server.mvcc.compaction import key_of
from kubekv_server.mvcc.hash import crc32c
from kubekv_server.mvcc.key_index import kept_entry, newest_at, visible_at
from kubekv_server.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes

mains = st.integers(min_value=0, max_value=2**63 - 1)


def test_rev_bytes_match_etcd_layout():
    # etcd revision_test.go: revision{1, 2} -> 8 BE bytes, '_', 8 BE bytes.
    assert rev_to_bytes(1, 2) == b"\x00" * 7 + b"\x01_" + b"\x00" * 7 + b"\x02"
    assert len(rev_to_bytes(5, 0)) == 17
    tomb = rev_to_bytes(5, 3, tombstone=True)
    assert len(tomb) == 18 and tomb.endswith(b"t") and tomb[:17] == rev_to_bytes(5, 3)
    assert is_tombstone(tomb) and not is_tombstone(rev_to_bytes(5, 3))
    assert bytes_to_rev(tomb) == (5, 3)
    assert Revision.from_bytes(Revision(7, 1).to_bytes()) == Revision(7, 1)


@given(mains, mains, mains, mains)
def test_rev_bytes_order_is_revision_order(m1, s1, m2, s2):
    a, b = rev_to_bytes(m1, s1), rev_to_bytes(m2, s2)
    assert (a < b) == ((m1, s1) < (m2, s2))
    # a tombstone mark never reorders distinct revisions
    assert (rev_to_bytes(m1, s1, True) < b) == ((m1, s1) < (m2, s2))


@given(st.binary(min_size=1, max_size=300), st.binary(max_size=50), mains, st.booleans())
def test_key_of_reads_field_one(key, value, rev, tomb):
    kv = KeyValue(key=key) if tomb else KeyValue(key=key, value=value, mod_revision=rev)
    assert key_of(kv.SerializeToString()) == key


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


@pytest.fixture
def index(env):
    db = env.open_db(b"idx", dupsort=True)
    rows = {
        b"a": [rev_to_bytes(2), rev_to_bytes(4, 1), rev_to_bytes(6, 0, True), rev_to_bytes(9)],
        b"b": [rev_to_bytes(3)],
    }
    with env.begin(write=True, db=db) as txn:
        for k, revs in rows.items():
            for r in revs:
                txn.put(k, r, dupdata=True)
    with env.begin(db=db) as txn:
        yield txn.cursor()


@pytest.mark.parametrize(
    "key,at,newest,visible",
    [
        (b"a", 1, None, None),
        (b"a", 2, rev_to_bytes(2), rev_to_bytes(2)),
        (b"a", 3, rev_to_bytes(2), rev_to_bytes(2)),
        (b"a", 4, rev_to_bytes(4, 1), rev_to_bytes(4, 1)),
        (b"a", 6, rev_to_bytes(6, 0, True), None),
        (b"a", 8, rev_to_bytes(6, 0, True), None),
        (b"a", 9, rev_to_bytes(9), rev_to_bytes(9)),
        (b"a", 100, rev_to_bytes(9), rev_to_bytes(9)),
        (b"b", 2, None, None),
        (b"b", 3, rev_to_bytes(3), rev_to_bytes(3)),
        (b"c", 5, None, None),
        (b"0", 5, None, None),
    ],
)
def test_key_index_seeks(index, key, at, newest, visible):
    assert newest_at(index, key, at) == newest
    assert visible_at(index, key, at) == visible


def test_kept_entry_follows_etcd_keep_rules():
    revs = [rev_to_bytes(2), rev_to_bytes(4, 1), rev_to_bytes(6, 0, True), rev_to_bytes(9)]
    assert kept_entry(revs, 1) is None
    assert kept_entry(revs, 3) == rev_to_bytes(2)
    assert kept_entry(revs, 5) == rev_to_bytes(4, 1)
    assert kept_entry(revs, 6) is None  # the generation ended: the tombstone goes too
    assert kept_entry(revs, 9) == rev_to_bytes(9)
