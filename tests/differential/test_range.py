"""Range, differentially: key ranges, limit/more/count, revisions, sorting, filters, flags."""

from __future__ import annotations

import itertools

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.differential.framework import compact, delete, get, prefix_end, put

SORT_ORDERS = ["NONE", "ASCEND", "DESCEND"]
SORT_TARGETS = ["KEY", "VERSION", "CREATE", "MOD", "VALUE"]


def _fill(d, names=b"abcde"):
    """Keys p/a.. with distinct create/mod revisions, versions and values (no sort ties)."""
    p = d.prefix
    for i, c in enumerate(names):
        d.send(put(p + bytes([c]), b"v%d" % (len(names) - i)))
    # different versions and mod revisions: update some keys again, in another order
    d.send(put(p + b"b", b"w1"))
    d.send(put(p + b"b", b"w2"))
    d.send(put(p + b"d", b"x"))


def test_single_keys_and_missing(differ):
    d, p = differ, differ.prefix
    d.send(put(p + b"a", b"1"))
    d.send(get(p + b"a"))
    d.send(get(p + b"missing"))
    d.send(get(p + b"a", serializable=True))
    d.send(get(b""))  # empty key: etcd refuses
    d.send(get(b"", range_end=b"\0"))
    d.send(get(b"", range_end=b"z"))


def test_key_ranges(differ):
    d, p = differ, differ.prefix
    _fill(d)
    d.send(get(p, prefix_end(p)))
    d.send(get(p + b"b", p + b"d"))  # half open
    d.send(get(p + b"b", p + b"b"))  # range_end == key: nothing
    d.send(get(p + b"d", p + b"b"))  # range_end < key: nothing
    d.send(get(p + b"d", b"\0"))  # from key
    d.send(get(p + b"zz", b"\0"))  # from a key past everything
    d.send(get(p + b"a", p + b"a\0"))  # exactly one key via range
    d.send(get(p + b"c", prefix_end(p + b"c")))
    d.send(get(b"\0", b"\0", keys_only=True, count_only=True))  # every key, count only
    d.send(get(b"\xff", b"\0"))
    d.send(get(b"\xff\xff", b"\xff\xff\xff"))


def test_limit_more_and_count(differ):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    for limit in (0, 1, 2, 4, 5, 6, 100):
        d.send(get(p, end, limit=limit))
        d.send(get(p, end, limit=limit, keys_only=True))
        d.send(get(p, end, limit=limit, count_only=True))
        d.send(get(p + b"c", b"\0", limit=limit))
    d.send(get(p, end, limit=-1))
    d.send(get(p + b"a", limit=1))
    d.send(get(p + b"a", limit=1, count_only=True))


def test_revisions(differ):
    d, p = differ, differ.prefix
    r0 = d.rev
    _fill(d)
    d.send(delete(p + b"c"))
    end = prefix_end(p)
    for rev in range(r0, d.rev + 2):
        d.send(get(p, end, revision=rev))
        d.send(get(p + b"b", revision=rev))
        d.send(get(p, end, revision=rev, limit=2))
        d.send(get(p, end, revision=rev, count_only=True))
        d.send(get(p + b"b", b"\0", revision=rev, serializable=True, limit=1))
    d.send(get(p, end, revision=d.rev + 100))
    d.send(get(p, end, revision=-1))
    d.send(get(p, end, revision=2**62))


def test_compacted_boundaries(differ):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    at = d.rev - 2
    d.send(compact(at))
    for rev in (at - 1, at, at + 1, d.rev, d.rev + 1):
        d.send(get(p, end, revision=rev))
        d.send(get(p + b"b", revision=rev))
        d.send(get(p, end, revision=rev, count_only=True))
    d.send(get(p, end, revision=1))


@pytest.mark.parametrize("order,target", list(itertools.product(SORT_ORDERS, SORT_TARGETS)))
def test_sort(differ, order, target):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    o = pb.RangeRequest.SortOrder.Value(order)
    t = pb.RangeRequest.SortTarget.Value(target)
    d.send(get(p, end, sort_order=o, sort_target=t))
    d.send(get(p, end, sort_order=o, sort_target=t, limit=2))
    d.send(get(p, end, sort_order=o, sort_target=t, limit=3, keys_only=True))
    d.send(get(p, end, sort_order=o, sort_target=t, count_only=True, limit=1))
    d.send(get(p + b"b", end, sort_order=o, sort_target=t, revision=d.rev - 2, limit=2))


def test_sort_ties(differ):
    """Equal sort keys keep key order in both (Go's sort.Sort is stable below 7 elements)."""
    d, p = differ, differ.prefix
    for c in b"abcde":
        d.send(put(p + bytes([c]), b"same"))
    end = prefix_end(p)
    for order, target in itertools.product(SORT_ORDERS, ["VERSION", "VALUE"]):
        d.send(get(p, end, sort_order=pb.RangeRequest.SortOrder.Value(order),
                   sort_target=pb.RangeRequest.SortTarget.Value(target), limit=3))


def test_revision_filters(differ):
    d, p = differ, differ.prefix
    r0 = d.rev
    _fill(d)
    end = prefix_end(p)
    for field in ("min_mod_revision", "max_mod_revision", "min_create_revision",
                  "max_create_revision"):
        for rev in (r0 + 2, r0 + 4, r0 + 7):
            d.send(get(p, end, **{field: rev}))
            d.send(get(p, end, limit=2, **{field: rev}))
            d.send(get(p, end, limit=1, count_only=True, **{field: rev}))
            d.send(get(p, end, limit=2, sort_order=pb.RangeRequest.DESCEND,
                       sort_target=pb.RangeRequest.MOD, **{field: rev}))
            d.send(get(p, end, keys_only=True, sort_target=pb.RangeRequest.VALUE, **{field: rev}))
    d.send(get(p, end, min_mod_revision=r0 + 3, max_mod_revision=r0 + 6,
               min_create_revision=r0 + 2, max_create_revision=r0 + 4, limit=1))
    d.send(get(p, end, min_mod_revision=r0 + 6, max_mod_revision=r0 + 3))
    d.send(get(p, end, min_mod_revision=-5, max_create_revision=-1))
    d.send(get(p, end, revision=r0 + 4, min_mod_revision=r0 + 2, limit=1))


def test_keys_only_count_only(differ):
    d, p = differ, differ.prefix
    _fill(d)
    d.send(put(p + b"empty", b""))
    end = prefix_end(p)
    d.send(get(p, end, keys_only=True))
    d.send(get(p, end, count_only=True))
    d.send(get(p, end, keys_only=True, count_only=True))
    d.send(get(p + b"empty"))
    d.send(get(p + b"empty", keys_only=True))
    d.send(get(p + b"nope", count_only=True))


def test_unknown_sort_order(differ):
    """A sort order etcd does not know sorts nothing, but still turns off limit push-down."""
    d, p = differ, differ.prefix
    _fill(d)
    for target in SORT_TARGETS:
        t = pb.RangeRequest.SortTarget.Value(target)
        d.send(get(p, prefix_end(p), sort_order=7, sort_target=t, limit=2))
