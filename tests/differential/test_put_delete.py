"""Put and DeleteRange, differentially: prev_kv, ignore_value/ignore_lease, leases, deletes."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.mvcc.stored_key import PREFIX
from tests.differential.framework import cmp, delete, get, prefix_end, put, txn


def test_put_prev_kv_and_versions(differ):
    d, p = differ, differ.prefix
    d.send(put(p + b"a", b"1", prev_kv=True))  # no previous value
    d.send(put(p + b"a", b"2", prev_kv=True))
    d.send(put(p + b"a", b"", prev_kv=True))  # empty value
    d.send(put(p + b"a", b"3"))
    d.send(get(p + b"a"))
    d.send(delete(p + b"a"))
    d.send(put(p + b"a", b"again", prev_kv=True))  # recreated: version 1, new create_revision
    d.send(get(p + b"a"))
    d.send(put(b"", b"x"))
    d.send(put(b"", b"x", prev_kv=True, ignore_value=True))


def test_put_ignore_value_and_lease(differ):
    d, p = differ, differ.prefix
    d.send(put(p + b"missing", ignore_value=True))  # key not found
    d.send(put(p + b"missing", ignore_lease=True))
    d.send(put(p + b"missing", b"v", ignore_value=True))  # value provided wins over not found
    d.send(put(p + b"a", b"1"))
    d.send(put(p + b"a", ignore_value=True, prev_kv=True))
    d.send(put(p + b"a", b"2", ignore_lease=True, prev_kv=True))
    d.send(put(p + b"a", ignore_value=True, ignore_lease=True))
    d.send(put(p + b"a", b"x", ignore_value=True))  # value is provided
    d.send(put(p + b"a", lease=5, ignore_lease=True))  # lease is provided
    d.send(put(p + b"a", b"x", lease=5, ignore_value=True, ignore_lease=True))
    d.send(get(p + b"a"))


def test_put_with_unknown_lease(differ):
    d, p = differ, differ.prefix
    d.send(put(p + b"a", b"1", lease=1))  # no leases exist
    d.send(put(p + b"a", b"1", lease=-7))
    d.send(put(p + b"a", b"1"))
    d.send(put(p + b"a", b"2", lease=123456789, prev_kv=True))
    d.send(put(p + b"missing", lease=99, ignore_value=True))
    d.send(get(p + b"a"))


def test_put_binary_and_long_keys(differ):
    d, p = differ, differ.prefix
    d.send(put(p + b"\x00\xff\x01", b"\x00\x00"))
    d.send(put(p + b"k" * 400, b"long key"))
    d.send(put(b"\xff" * 3, b"top"))
    d.send(get(p, prefix_end(p)))
    d.send(get(b"\xff\xff", b"\0"))
    d.send(delete(b"\xff" * 3, prev_kv=True))


def test_delete_ranges(differ):
    d, p = differ, differ.prefix
    for c in b"abcdef":
        d.send(put(p + bytes([c]), bytes([c]) * 2))
    d.send(delete(p + b"zz"))  # nothing: revision must not move
    d.send(delete(p + b"zz", prev_kv=True))
    d.send(delete(p + b"c", p + b"c"))  # empty range
    d.send(delete(p + b"d", p + b"b", prev_kv=True))  # range_end < key
    d.send(delete(p + b"a"))
    d.send(delete(p + b"a", prev_kv=True))  # already gone
    d.send(delete(p + b"b", p + b"d", prev_kv=True))
    d.send(get(p, prefix_end(p)))
    d.send(delete(p + b"e", b"\0", prev_kv=True))  # from key: later tests' keys too
    d.send(get(p, prefix_end(p)))
    d.send(delete(p, prefix_end(p)))
    d.send(delete(p, prefix_end(p), prev_kv=True))
    d.send(delete(b""))
    d.send(delete(b"", b"\0"))
    d.send(get(p + b"a", revision=d.rev - 3))


def test_keys_longer_than_lmdb_allows(differ):
    """Keys past LMDB's 511-byte key limit (kubekv stores them as prefix + digest): the
    same results, in the same order, as etcd's, also among long keys that share their
    first stored bytes and for range bounds that fall inside such a group."""
    d, p = differ, differ.prefix
    head = (p + b"h" * PREFIX)[:PREFIX]
    longs = [head + b"\x00", head + b"a", head + b"ab", head + b"b" * 2000,
             head + b"a" * 100_000]
    d.send(put(head, b"short"))
    d.send(put(head[:-1] + b"i", b"after"))
    for i, k in enumerate(longs):
        d.send(put(k, b"%d" % i, prev_kv=True))
    d.send(put(longs[1], b"again", prev_kv=True))
    d.send(get(longs[1]))
    d.send(get(longs[1], revision=d.rev - 1))
    d.send(get(head, prefix_end(p)))
    d.send(get(head, prefix_end(p), limit=3, keys_only=True))
    d.send(get(head + b"a", head + b"b", count_only=True))
    d.send(get(head + b"\x00\x00", head + b"ab"))
    d.send(get(head + b"a", b"\0", limit=2))
    d.send(get(head, prefix_end(head), sort_order=pb.RangeRequest.DESCEND, limit=4))
    d.send(get(head, prefix_end(head), revision=d.rev - 2))
    d.send(txn([cmp(longs[3], "VALUE", "EQUAL", b"3"), cmp(longs[4], "VERSION", "EQUAL", 1)],
               [put(longs[3], b"t"), get(longs[3])], [get(head)]))
    d.send(delete(head + b"a", head + b"b", prev_kv=True))
    d.send(get(head, prefix_end(p)))
    d.send(delete(head, prefix_end(p), prev_kv=True))
    d.send(get(head, prefix_end(p), revision=d.rev - 1, keys_only=True))
