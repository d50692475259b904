"""Random request sequences, differentially: Hypothesis drives Put/Delete/Range/Txn/Compact.

One kubekv + etcd pair serves the whole test; each example uses its own key
prefix (zero-padded and increasing, so a from-key range sees only the example's
own keys) and revisions counted back from the latest revision seen. Six keys per
example keep every result at most six long: Go's sort.Sort is stable up to six
elements, so sorts with ties order the same way in both servers.

Deterministic by default (a fixed seed, 60 examples of up to 30 requests). To
explore: KUBEKV_DIFF_EXAMPLES=500 KUBEKV_DIFF_RANDOM=1 pytest tests/differential -k random
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.differential.framework import ServerPair, prefix_end

# Half the keys are longer than LMDB allows as a key and share kubekv's stored prefix,
# so their stored order (by digest) differs from key order.
_LONG = b"l" * 460
KEYS = [b"a", b"b", b"c", _LONG + b"d", _LONG + b"e", _LONG + b"f"]
VALUES = [b"", b"x", b"y", b"zz"]

EXAMPLES = int(os.environ.get("KUBEKV_DIFF_EXAMPLES", "60"))
RANDOM = bool(os.environ.get("KUBEKV_DIFF_RANDOM"))


# A generated request is a tree of plain tuples; `build` turns it into a protobuf
# request once the example's key prefix and starting revision are known.

keys = st.sampled_from(KEYS)
# ("key", k): one key; ("range", k, end): [k, end); ("from", k): every key >= k;
# ("prefix",): the example's whole prefix
key_ranges = st.one_of(
    st.tuples(st.just("key"), keys),
    st.tuples(st.just("key"), keys),
    st.tuples(st.just("range"), keys, keys),
    st.tuples(st.just("from"), keys),
    st.just(("prefix",)),
)
# a revision counted back from the latest one seen (None: 0, the current revision)
revs = st.one_of(st.none(), st.integers(-1, 12))
rare = st.sampled_from([False, False, False, True])

puts = st.tuples(
    st.just("put"), keys, st.sampled_from(VALUES),
    st.fixed_dictionaries({}, optional={
        "prev_kv": st.booleans(), "ignore_value": rare,
        "ignore_lease": rare, "lease": st.sampled_from([0, 0, 0, 1]),
    }),
)
deletes = st.tuples(st.just("delete"), key_ranges, st.booleans())
ranges = st.tuples(
    st.just("range"), key_ranges,
    st.fixed_dictionaries({}, optional={
        "revision": revs, "limit": st.integers(0, 4),
        "sort_order": st.integers(0, 2), "sort_target": st.integers(0, 4),
        "keys_only": st.booleans(), "count_only": st.booleans(),
        "serializable": st.booleans(),
        "min_mod_revision": revs, "max_mod_revision": revs,
        "min_create_revision": revs, "max_create_revision": revs,
    }),
)
compares = st.tuples(
    key_ranges, st.integers(0, 4), st.integers(0, 3),
    st.one_of(st.sampled_from(VALUES), st.integers(-1, 4), revs),
)
compacts = st.tuples(st.just("compact"), st.integers(-1, 12), st.booleans())


def _txns(children):
    return st.tuples(
        st.just("txn"),
        st.lists(compares, max_size=2),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3),
    )


txn_ops = st.recursive(st.one_of(puts, deletes, ranges), _txns, max_leaves=8)
requests = st.one_of(
    puts, puts, puts, puts, deletes, ranges, ranges, ranges, _txns(txn_ops), _txns(txn_ops),
    compacts,
)


class Build:
    """Turns generated tuples into requests for one example."""

    def __init__(self, prefix: bytes, differ) -> None:
        self.p = prefix
        self.differ = differ

    def rev(self, r) -> int:
        return 0 if r is None else self.differ.rev - r

    def key_range(self, kr) -> tuple[bytes, bytes]:
        p = self.p
        if kr[0] == "key":
            return p + kr[1], b""
        if kr[0] == "range":
            return p + kr[1], p + kr[2]
        if kr[0] == "from":
            return p + kr[1], b"\0"
        return p, prefix_end(p)

    def request(self, g):
        kind = g[0]
        if kind == "put":
            value = g[2]
            if g[3].get("ignore_value") and value != b"zz":
                value = b""  # mostly valid; "zz" keeps etcd's "value is provided" in play
            return pb.PutRequest(key=self.p + g[1], value=value, **g[3])
        if kind == "delete":
            key, end = self.key_range(g[1])
            return pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=g[2])
        if kind == "range":
            key, end = self.key_range(g[1])
            opts = {k: (self.rev(v) if "revision" in k else v) for k, v in g[2].items()}
            return pb.RangeRequest(key=key, range_end=end, **opts)
        if kind == "txn":
            return pb.TxnRequest(
                compare=[self.compare(c) for c in g[1]],
                success=[self.op(x) for x in g[2]],
                failure=[self.op(x) for x in g[3]],
            )
        if kind == "compact":
            return pb.CompactionRequest(revision=self.differ.rev - g[1], physical=g[2])
        raise ValueError(kind)

    def op(self, g) -> pb.RequestOp:
        r = self.request(g)
        field = {"put": "request_put", "delete": "request_delete_range",
                 "range": "request_range", "txn": "request_txn"}[g[0]]
        return pb.RequestOp(**{field: r})

    def compare(self, g) -> pb.Compare:
        kr, target, result, operand = g
        key, end = self.key_range(kr)
        c = pb.Compare(key=key, range_end=end, target=target, result=result)
        if target == pb.Compare.VALUE:
            c.value = operand if isinstance(operand, bytes) else b"%d" % (operand or 0)
        elif isinstance(operand, bytes):
            setattr(c, _COMPARE_FIELDS[target], len(operand))
        elif target in (pb.Compare.VERSION, pb.Compare.LEASE):
            setattr(c, _COMPARE_FIELDS[target], operand or 0)
        else:
            setattr(c, _COMPARE_FIELDS[target], self.rev(operand))
        return c


_COMPARE_FIELDS = {
    pb.Compare.VERSION: "version", pb.Compare.CREATE: "create_revision",
    pb.Compare.MOD: "mod_revision", pb.Compare.LEASE: "lease",
}


@pytest.fixture
def random_pair(tmp_path):
    pair = ServerPair(tmp_path).start()
    yield pair
    pair.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
@given(sequence=st.lists(requests, min_size=1, max_size=30))
def test_random_sequences(random_pair, sequence):
    differ = random_pair.differ()
    build = Build(b"r%06d/" % next(_examples), differ)
    for g in sequence:
        differ.send(build.request(g))


_examples = itertools.count()
