"""Txn, differentially: compares, branches, nesting, own writes, checks and their errors."""

from __future__ import annotations

import itertools

import pytest

from tests.differential.framework import cmp, delete, get, op, prefix_end, put, txn

TARGETS = ["VALUE", "VERSION", "CREATE", "MOD", "LEASE"]
RESULTS = ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]


def _fill(d):
    p = d.prefix
    d.send(put(p + b"a", b"1"))
    d.send(put(p + b"b", b"2"))
    d.send(put(p + b"b", b"22"))
    d.send(put(p + b"c", b""))


def _operands(d, target):
    """Compare operands around the values the keys of `_fill` have."""
    if target == "VALUE":
        return [b"", b"1", b"2", b"22", b"3"]
    if target == "LEASE":
        return [0, 1, -1]
    if target == "VERSION":
        return [0, 1, 2, 3]
    return [0, d.rev - 3, d.rev - 2, d.rev, d.rev + 5]


@pytest.mark.parametrize("target,result", list(itertools.product(TARGETS, RESULTS)))
def test_compares(differ, target, result):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    probe = get(p, end, keys_only=True)
    for value in _operands(d, target):
        for key, range_end in [(p + b"a", b""), (p + b"b", b""), (p + b"c", b""),
                               (p + b"missing", b""), (p, end), (p + b"b", b"\0"),
                               (p + b"x", end), (p + b"b", p + b"a")]:
            c = cmp(key, target, result, value, range_end=range_end)
            d.send(txn([c], [probe], [get(p + b"a")]))
    # several compares: all must hold
    d.send(txn([cmp(p + b"a", "VALUE", "EQUAL", b"1"), cmp(p + b"b", "VERSION", "EQUAL", 2)],
               [probe], []))
    d.send(txn([cmp(p + b"a", "VALUE", "EQUAL", b"1"), cmp(p + b"b", "VERSION", "EQUAL", 3)],
               [probe], []))


def test_compare_target_union_mismatch(differ):
    """A compare whose operand field is not the one its target names compares with zero."""
    from etcdproto.etcdserverpb import rpc_pb2 as pb

    d, p = differ, differ.prefix
    _fill(d)
    for target in TARGETS:
        for field, value in [("value", b"1"), ("version", 2), ("create_revision", 3),
                             ("mod_revision", 4), ("lease", 5)]:
            for result in RESULTS:
                c = pb.Compare(key=p + b"a", target=pb.Compare.CompareTarget.Value(target),
                               result=pb.Compare.CompareResult.Value(result), **{field: value})
                d.send(txn([c], [get(p + b"a")], []))
    d.send(txn([pb.Compare(key=p + b"a", result=pb.Compare.EQUAL)], [get(p + b"a")], []))


def test_branches_with_writes(differ):
    d, p = differ, differ.prefix
    _fill(d)
    hit = cmp(p + b"a", "VALUE", "EQUAL", b"1")
    miss = cmp(p + b"a", "VALUE", "EQUAL", b"nope")
    for c in (hit, miss):
        d.send(txn([c], [put(p + b"s", b"then", prev_kv=True), get(p + b"s")],
                   [put(p + b"f", b"else", prev_kv=True), get(p + b"f")]))
        d.send(txn([c], [delete(p + b"s", prev_kv=True), get(p, prefix_end(p))],
                   [delete(p + b"f", prev_kv=True), get(p, prefix_end(p), count_only=True)]))
    d.send(txn([], [put(p + b"n", b"1")], []))  # no compares: success
    d.send(txn([miss], [put(p + b"n", b"2")], []))  # failure branch empty: changes nothing
    d.send(txn([], [], []))  # empty txn
    d.send(txn([miss], [], [get(p + b"n")]))
    d.send(get(p, prefix_end(p)))


def test_reads_of_own_writes(differ):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    r = d.rev
    d.send(txn([], [
        get(p, end),
        put(p + b"a", b"new", prev_kv=True),
        get(p, end),
        get(p, end, revision=r),  # the revision before the txn: without its writes
        delete(p + b"b", prev_kv=True),
        get(p, end, count_only=True),
        get(p + b"b"),
        put(p + b"d", b"created"),
        get(p, end, sort_order=2, sort_target=3),  # DESCEND by MOD
        get(p, end, revision=r - 1, limit=1),
        delete(p + b"zzz"),  # deletes nothing after a write: still the txn's revision
        get(p, end, min_mod_revision=r + 1),
    ]))
    d.send(get(p, end))
    d.send(txn([], [get(p, end, revision=d.rev + 1)]))  # future revision in a read-only txn
    d.send(txn([], [put(p + b"e", b"1"), get(p, end, revision=d.rev + 1)]))  # and in a write txn
    d.send(txn([], [put(p + b"e", b"1"), get(p, end, revision=d.rev)]))


def test_read_only_and_no_op_txns(differ):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    d.send(txn([cmp(p + b"a", "VERSION", "GREATER", 0)], [get(p, end)], [get(p + b"b")]))
    d.send(txn([], [get(p, end, serializable=True)]))
    d.send(txn([], [delete(p + b"nothing")]))  # write txn that writes nothing
    d.send(txn([], [delete(p + b"nothing", prev_kv=True), get(p, end)]))
    d.send(txn([], [delete(p + b"x", p + b"y")]))
    d.send(txn([cmp(p + b"a", "VERSION", "EQUAL", 99)], [put(p + b"a", b"never")],
               [delete(p + b"nothing")]))
    d.send(get(p + b"a"))


def test_nested_txns(differ):
    d, p = differ, differ.prefix
    _fill(d)
    end = prefix_end(p)
    yes = cmp(p + b"a", "VALUE", "EQUAL", b"1")
    no = cmp(p + b"a", "VALUE", "EQUAL", b"0")
    level3 = txn([no], [put(p + b"l3s", b"x")], [put(p + b"l3f", b"y"), get(p, end)])
    level2 = txn([yes], [level3, get(p, end, keys_only=True)], [put(p + b"l2f", b"z")])
    d.send(txn([yes], [level2, put(p + b"l1", b"w")], [get(p + b"a")]))
    d.send(txn([no], [level2], [level2, get(p, end, count_only=True)]))
    # nested read-only txns, both branches
    ro = txn([yes], [get(p + b"a")], [get(p + b"b")])
    d.send(txn([], [ro, txn([no], [get(p + b"a")], [get(p + b"c")]), ro]))
    # sibling txns: the second sees the first's writes, and may delete them
    d.send(txn([], [txn([], [put(p + b"sib", b"1")]),
                    txn([cmp(p + b"sib", "VALUE", "EQUAL", b"1")], [get(p + b"sib")],
                        [get(p, end)]),
                    txn([], [delete(p + b"sib", prev_kv=True)])]))
    d.send(get(p + b"sib"))
    d.send(get(p + b"sib", revision=d.rev))
    # deep nesting
    deep = txn([], [put(p + b"deep", b"bottom")])
    for i in range(8):
        deep = txn([cmp(p + b"a", "VERSION", "GREATER", i % 2)],
                   [deep, get(p + b"deep")], [get(p + b"a", revision=d.rev)])
    d.send(deep)
    d.send(get(p + b"deep"))


def test_duplicate_keys(differ):
    d, p = differ, differ.prefix
    a, b, c = p + b"a", p + b"b", p + b"c"
    cases = [
        [put(a), put(a)],
        [put(a), delete(a)],
        [delete(a), put(a)],
        [put(b), delete(a, c)],
        [put(c), delete(a, c)],  # c is outside [a, c)
        [put(b), delete(a, b"\0")],  # from-key deletes: etcd's interval is [a, "\0")
        [put(a), delete(a, b"\0")],
        [put(a), delete(b, a)],  # inverted range
        [delete(a), delete(a)],
        [delete(a, c), delete(b)],
        [get(a), put(a), get(a)],
        [txn([], [put(a)]), put(a)],
        [put(a), txn([], [put(a)])],
        [txn([], [put(a)], [put(a)])],
        [txn([], [put(a)]), txn([], [put(a)])],
        [txn([], [put(a)]), txn([], [], [put(a)])],
        [txn([], [put(a)], [put(b)]), txn([], [put(b)])],
        [txn([], [put(a)]), txn([], [delete(a)])],  # sibling put then delete: allowed
        [txn([], [delete(a)]), txn([], [put(a)])],
        [delete(a, c), txn([], [put(b)])],
        [txn([], [delete(a, c)]), put(b)],
        [txn([], [txn([], [put(a)])]), put(a)],
        [txn([], [txn([], [put(a)]), txn([], [put(a)])])],
        [txn([], [txn([], [delete(a)])]), txn([], [txn([], [put(a)])])],
        [txn([], [put(a), delete(a)]), put(b)],
    ]
    for ops in cases:
        d.send(txn([], ops))
        d.send(txn([cmp(a, "VERSION", "EQUAL", 99)], [], ops))
    d.send(get(p, prefix_end(p)))


def test_too_many_ops(differ):
    d, p = differ, differ.prefix
    keys = [p + b"%03d" % i for i in range(130)]
    d.send(txn([], [put(k) for k in keys[:128]]))  # exactly the limit
    d.send(txn([], [put(k) for k in keys[:129]]))
    d.send(txn([], [], [get(k) for k in keys[:129]]))
    d.send(txn([cmp(k, "VERSION", "EQUAL", 1) for k in keys[:129]], [], []))
    d.send(txn([cmp(k, "VERSION", "EQUAL", 1) for k in keys[:128]], [get(keys[0])], []))
    # a nested txn's budget is what its parent leaves
    inner = txn([], [get(k) for k in keys[:29]])
    d.send(txn([], [inner] + [get(k) for k in keys[:99]]))
    d.send(txn([], [inner] + [get(k) for k in keys[:100]]))
    # etcd proposes every txn holding a nested txn, read-only or not: this one reads
    # only, but its 64000 ranges exceed --max-request-bytes for a log entry
    d.send(txn([], [txn([], [txn([], [get(keys[0])] * 40)] * 40)] * 40))
    d.send(txn([], [txn([], [get(keys[0])] * 40)] * 40))
    d.send(get(p, prefix_end(p), count_only=True))


def test_empty_keys_and_empty_ops(differ):
    from etcdproto.etcdserverpb import rpc_pb2 as pb

    d, p = differ, differ.prefix
    d.send(txn([cmp(b"", "VERSION", "EQUAL", 0)], [], []))
    d.send(txn([], [put(b"")]))
    d.send(txn([], [], [get(b"")]))
    d.send(txn([], [delete(b"")]))
    d.send(txn([], [txn([], [txn([], [put(b"", b"deep")])])]))
    d.send(txn([], [txn([cmp(b"", "VALUE", "EQUAL", b"")])]))
    d.send(txn([], [pb.RequestOp()]))
    d.send(txn([], [get(p + b"a")], [pb.RequestOp()]))
    d.send(txn([], [txn([], [], [pb.RequestOp()])]))
    d.send(txn([], [put(p + b"a", b"x", ignore_value=True)]))  # value provided
    d.send(txn([], [put(p + b"a", lease=3, ignore_lease=True)]))  # lease provided
    d.send(txn([], [op(put(p + b"a", b"1")), pb.RequestOp(), op(put(b""))]))
    d.send(get(p + b"a"))


def test_txn_put_checks(differ):
    d, p = differ, differ.prefix
    _fill(d)
    d.send(txn([], [put(p + b"missing", ignore_value=True)]))  # key not found
    d.send(txn([], [put(p + b"missing", ignore_lease=True)]))
    d.send(txn([], [put(p + b"a", ignore_value=True, prev_kv=True)]))
    d.send(txn([], [put(p + b"a", b"2", ignore_lease=True, prev_kv=True)]))
    d.send(txn([], [put(p + b"a", b"3", lease=77)]))  # lease not found
    d.send(txn([], [put(p + b"missing", lease=77, ignore_value=True)]))  # which error first
    d.send(txn([], [put(p + b"x", b"1"), put(p + b"missing", ignore_value=True)]))
    d.send(txn([], [txn([], [put(p + b"missing", ignore_value=True)])]))
    # the branch not taken is not checked
    d.send(txn([], [get(p + b"a")], [put(p + b"missing", ignore_value=True)]))
    d.send(txn([], [get(p + b"a")], [put(p + b"a", b"1", lease=5)]))
    # reads with revisions in a write txn are checked before anything is written
    d.send(txn([], [put(p + b"y", b"1"), get(p + b"a", revision=d.rev + 3)]))
    d.send(get(p, prefix_end(p)))


def test_unknown_compare_target_and_result(differ):
    """Enum values etcd does not know: an unknown target compares equal, an unknown result holds."""
    from etcdproto.etcdserverpb import rpc_pb2 as pb

    d, p = differ, differ.prefix
    _fill(d)
    for key in (p + b"a", p + b"missing"):
        for target, result in itertools.product([0, 1, 4, 5, 7], [0, 1, 2, 3, 4, 9]):
            c = pb.Compare(key=key, target=target, result=result, version=1)
            d.send(txn([c], [get(p + b"a", keys_only=True)], [get(p + b"b", count_only=True)]))
