"""Stored keys: any key length fits LMDB, and scans give user-key order back."""

from __future__ import annotations

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubekv_server.mvcc.stored_key import PREFIX, is_long, scan, stored

# Keys around the PREFIX boundary, many sharing their first PREFIX bytes.
_heads = st.sampled_from([b"", b"a" * (PREFIX - 1), b"a" * PREFIX, b"a" * (PREFIX - 1) + b"b"])
_tails = st.lists(st.sampled_from([b"\x00", b"a", b"b", b"\xff"]), max_size=40).map(b"".join)
user_keys = st.builds(lambda h, t: h + t, _heads, _tails).filter(bool)


def test_short_keys_are_stored_as_themselves():
    assert stored(b"a" * PREFIX) == b"a" * PREFIX
    long = stored(b"a" * (PREFIX + 1))
    assert is_long(long) and long.startswith(b"a" * PREFIX) and len(long) < 511
    assert stored(b"x" * 100_000) != stored(b"x" * 100_001)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = lmdb.open(str(tmp_path_factory.mktemp("stored")), max_dbs=4, map_size=1 << 26)
    yield e
    e.close()


@settings(max_examples=300, deadline=None)
@given(st.sets(user_keys, max_size=12), user_keys, st.one_of(st.just(b""), user_keys))
def test_scan_is_user_key_order_within_bounds(env, keys, lo, hi):
    db, long_keys = env.open_db(b"t"), env.open_db(b"long_keys")
    with env.begin(write=True) as txn:
        for k in keys:
            txn.put(stored(k), k, db=long_keys)
            txn.put(stored(k), b"v" + k, db=db)
        got = list(scan(txn.cursor(db=db), lo, hi, lambda s: txn.get(s, db=long_keys)))
        txn.abort()
    want = sorted(k for k in keys if k >= lo and (not hi or k < hi))
    assert [u for u, _, _ in got] == want
    assert [(s, v) for _, s, v in got] == [(stored(k), b"v" + k) for k in want]
