"""aetcd 1.0 (asyncio, standard protobuf) against kubekv, with real etcd 3.5 as the reference.

Every test runs on both servers: a test that fails only on kubekv is a kubekv bug,
one that fails on both is a wrong expectation. pytest has no asyncio plugin here,
so each test drives its coroutine with `asyncio.run`.

aetcd 1.0's `get`/`get_prefix`/`get_range` accept no `limit` or `revision` (its
request builder has a TODO for them); those tests call the client's own `kvstub`
with aetcd's own `rpc` request types, which is what an aetcd user does.
"""

from __future__ import annotations

import asyncio
import uuid

import aetcd
import aetcd.exceptions as aexc
import aetcd.rpc as rpc
import pytest

from tests.harness import etcd_process, kubekv_process

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"


@pytest.fixture(scope="module", params=["kubekv", "etcd"])
def server(request, tmp_path_factory):
    """One server per module and kind; tests use distinct key prefixes."""
    make = kubekv_process if request.param == "kubekv" else etcd_process
    proc = make(tmp_path_factory.mktemp(request.param))
    proc.start()
    yield proc
    proc.stop()


def run(server, body) -> None:
    """Run `await body(client, prefix)` on a fresh event loop with a connected client."""

    async def main():
        host, port = server.endpoint.rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port), timeout=10) as client:
            await body(client, f"/aetcd/{uuid.uuid4().hex[:8]}/".encode())

    asyncio.run(main())


def keys(result) -> list[bytes]:
    return [kv.key for kv in result]


def prefix_end(p: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(p)


# ------------------------------------------------------------------ put / get


def test_put_get_overwrite(server):
    async def body(c: aetcd.Client, p: bytes):
        put = await c.put(p + b"k", b"v1")
        r1 = put.header.revision
        assert put.prev_kv is None
        got = await c.get(p + b"k")
        assert (got.key, got.value, got.create_revision, got.mod_revision, got.version) == (
            p + b"k", b"v1", r1, r1, 1)
        assert got.header.revision >= r1
        assert got.header.cluster_id and got.header.member_id and got.header.raft_term >= 1
        put = await c.put(p + b"k", b"v2", prev_kv=True)
        assert put.header.revision == r1 + 1
        assert (put.prev_kv.value, put.prev_kv.version, put.prev_kv.mod_revision) == (b"v1", 1, r1)
        got = await c.get(p + b"k", serializable=True)
        assert (got.value, got.create_revision, got.mod_revision, got.version) == (
            b"v2", r1, r1 + 1, 2)
        assert await c.get(p + b"missing") is None
        binary = bytes(range(256))
        await c.put(p + b"\x00\xff", binary)
        assert (await c.get(p + b"\x00\xff")).value == binary

    run(server, body)


def test_concurrent_puts_get_distinct_contiguous_revisions(server):
    """Many puts in flight at once (one batch on kubekv): one revision each, no gaps."""

    async def body(c: aetcd.Client, p: bytes):
        results = await asyncio.gather(*(c.put(p + b"%03d" % i, b"%d" % i) for i in range(200)))
        revs = sorted(r.header.revision for r in results)
        assert revs == list(range(revs[0], revs[0] + 200))
        got = await c.get_prefix(p)
        assert got.count == 200
        by_key = {kv.key: kv for kv in got}
        for i, r in enumerate(results):
            kv = by_key[p + b"%03d" % i]
            assert (kv.value, kv.mod_revision) == (b"%d" % i, r.header.revision)

    run(server, body)


# ------------------------------------------------------------------ ranges


def test_prefix_range_sort_and_keys_only(server):
    async def body(c: aetcd.Client, p: bytes):
        for i, name in enumerate([b"c", b"a", b"e", b"b", b"d"]):
            await c.put(p + name, name + b"%d" % i)
        await c.put(p[:-1] + b"0", b"outside the prefix")
        got = await c.get_prefix(p)
        assert (got.count, got.more, len(got)) == (5, False, 5)
        assert keys(got) == [p + k for k in [b"a", b"b", b"c", b"d", b"e"]]
        assert [kv.value for kv in got] == [b"a1", b"b3", b"c0", b"d4", b"e2"]
        got = await c.get_prefix(p, sort_order="descend")
        assert keys(got) == [p + k for k in [b"e", b"d", b"c", b"b", b"a"]]
        got = await c.get_prefix(p, sort_order="ascend", sort_target="create")
        assert keys(got) == [p + k for k in [b"c", b"a", b"e", b"b", b"d"]]
        got = await c.get_prefix(p, sort_order="descend", sort_target="mod")
        assert keys(got) == [p + k for k in [b"d", b"b", b"e", b"a", b"c"]]
        got = await c.get_prefix(p, sort_order="descend", sort_target="value")
        assert [kv.value for kv in got] == [b"e2", b"d4", b"c0", b"b3", b"a1"]
        got = await c.get_prefix(p, keys_only=True)
        assert [kv.value for kv in got] == [b""] * 5
        got = await c.get_range(p + b"b", p + b"d")
        assert keys(got) == [p + b"b", p + b"c"]
        got = await c.get_range(p + b"d", b"\x00")  # "\0" as range_end: every key >= start
        assert keys(got)[:2] == [p + b"d", p + b"e"]
        everything = await c.get_all(keys_only=True)
        assert {p + k for k in [b"a", b"b", b"c", b"d", b"e"]} <= set(keys(everything))
        empty = await c.get_prefix(p + b"nothing/")
        assert (bool(empty), empty.count, len(empty)) == (False, 0, 0)

    run(server, body)


def test_limit_and_revision(server):
    async def body(c: aetcd.Client, p: bytes):
        revs = [(await c.put(p + b"%d" % i, b"v%d" % i)).header.revision for i in range(5)]
        r_over = (await c.put(p + b"0", b"changed")).header.revision
        await c.delete(p + b"4")
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), limit=2)
        resp = await c.kvstub.Range(req)
        assert ([kv.key for kv in resp.kvs], resp.count, resp.more) == ([p + b"0", p + b"1"], 4,
                                                                        True)
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), limit=4)
        resp = await c.kvstub.Range(req)
        assert (len(resp.kvs), resp.more) == (4, False)
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), revision=revs[2])
        resp = await c.kvstub.Range(req)
        assert [(kv.key, kv.value) for kv in resp.kvs] == [(p + b"%d" % i, b"v%d" % i)
                                                           for i in range(3)]
        assert resp.header.revision >= r_over + 1  # the header is the current revision
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), revision=r_over, limit=1,
                               sort_order=rpc.RangeRequest.DESCEND,
                               sort_target=rpc.RangeRequest.MOD)
        resp = await c.kvstub.Range(req)
        assert [(kv.key, kv.value) for kv in resp.kvs] == [(p + b"0", b"changed")]
        assert (resp.count, resp.more) == (5, True)
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), count_only=True)
        resp = await c.kvstub.Range(req)
        assert (len(resp.kvs), resp.count) == (0, 4)
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), min_mod_revision=revs[3])
        resp = await c.kvstub.Range(req)
        assert [kv.key for kv in resp.kvs] == [p + b"0", p + b"3"]
        req = rpc.RangeRequest(key=p, range_end=prefix_end(p), max_create_revision=revs[1])
        resp = await c.kvstub.Range(req)
        assert [kv.key for kv in resp.kvs] == [p + b"0", p + b"1"]

    run(server, body)


# ------------------------------------------------------------------ deletes


def test_delete_delete_prefix_delete_range(server):
    async def body(c: aetcd.Client, p: bytes):
        for k in [b"a", b"b", b"c", b"sub/1", b"sub/2", b"sub/3"]:
            await c.put(p + k, k)
        d = await c.delete(p + b"a", prev_kv=True)
        assert (d.deleted, d.prev_kv.value) == (1, b"a")
        assert await c.delete(p + b"a") is None
        d = await c.delete_prefix(p + b"sub/", prev_kv=True)
        assert d.deleted == 3
        assert sorted(kv.value for kv in d.prev_kvs) == [b"sub/1", b"sub/2", b"sub/3"]
        before = (await c.get(p + b"b")).header.revision
        d = await c.delete_prefix(p + b"sub/")
        assert (d.deleted, d.header.revision) == (0, before)
        d = await c.delete_range(p + b"b", p + b"c\x00")
        assert d.deleted == 2
        assert not await c.get_prefix(p)
        r = (await c.put(p + b"a", b"again")).header.revision
        got = await c.get(p + b"a")
        assert (got.version, got.create_revision) == (1, r)

    run(server, body)


# ------------------------------------------------------------------ transactions


def test_transactions(server):
    async def body(c: aetcd.Client, p: bytes):
        t = c.transactions
        k = p + b"k"
        r1 = (await c.put(k, b"v1")).header.revision
        ok, responses = await c.transaction(
            compare=[t.value(k) == b"v1", t.version(k) == 1, t.create(k) == r1, t.mod(k) == r1],
            success=[t.put(k, b"v2"), t.put(p + b"other", b"o"), t.get(k)],
            failure=[t.put(k, b"wrong")],
        )
        assert ok
        assert [v for v, _ in responses[2]] == [b"v2"]
        assert (await c.get(k)).mod_revision == (await c.get(p + b"other")).mod_revision == r1 + 1

        ok, responses = await c.transaction(
            compare=[t.value(k) == b"nope"],
            success=[t.put(k, b"wrong")],
            failure=[t.put(k, b"v3"), t.delete(p + b"other")],
        )
        assert not ok
        assert responses[1].response_delete_range.deleted == 1
        assert (await c.get(k)).value == b"v3"
        assert await c.get(p + b"other") is None

        cases = [
            (t.value(k) != b"v1", True), (t.value(k) < b"v4", True), (t.value(k) > b"v4", False),
            (t.version(k) > 2, True), (t.version(k) < 3, False),
            (t.create(k) == r1, True), (t.create(k) > r1, False),
            (t.mod(k) > r1, True), (t.mod(k) < r1, False),
            (t.version(p + b"missing") == 0, True), (t.create(p + b"missing") == 0, True),
            (t.value(p + b"missing") == b"", False),
        ]
        for cmp_, want in cases:
            ok, _ = await c.transaction(compare=[cmp_], success=[], failure=[])
            assert ok is want, repr(cmp_)

        assert await c.replace(k, b"v3", b"v4")
        assert not await c.replace(k, b"v3", b"v5")
        assert (await c.get(k)).value == b"v4"

        before = (await c.get(k)).header.revision
        ok, responses = await c.transaction(compare=[], success=[t.get(k)], failure=[])
        assert ok and [v for v, _ in responses[0]] == [b"v4"]
        assert (await c.get(k)).header.revision == before

        inner = t.txn(compare=[t.value(k) == b"v4"], success=[t.put(p + b"nested", b"yes")],
                      failure=[t.put(p + b"nested", b"no")])
        ok, responses = await c.transaction(compare=[], success=[inner], failure=[])
        assert responses[0].response_txn.succeeded
        assert (await c.get(p + b"nested")).value == b"yes"

    run(server, body)


def test_compare_and_swap_counter_under_contention(server):
    """Concurrent read-modify-write through Txn: every successful swap counts exactly once."""

    async def body(c: aetcd.Client, p: bytes):
        t = c.transactions
        key = p + b"counter"
        await c.put(key, b"0")
        swaps = 0

        async def incrementer(n: int) -> None:
            nonlocal swaps
            done = 0
            while done < n:
                cur = await c.get(key)
                new = b"%d" % (int(cur.value) + 1)
                ok, _ = await c.transaction(compare=[t.mod(key) == cur.mod_revision],
                                            success=[t.put(key, new)], failure=[])
                if ok:
                    done += 1
                    swaps += 1

        await asyncio.gather(*(incrementer(15) for _ in range(8)))
        got = await c.get(key)
        assert (got.value, got.version) == (b"%d" % swaps, swaps + 1)
        assert swaps == 120

    run(server, body)


# ------------------------------------------------------------------ compaction, errors


def test_compaction(server):
    async def body(c: aetcd.Client, p: bytes):
        key = p + b"k"
        revs = [(await c.put(key, b"%d" % i)).header.revision for i in range(4)]
        await c.compact(revs[2])
        with pytest.raises(rpc.AioRpcError, match=COMPACTED) as err:  # the raw stub's error
            await c.kvstub.Range(rpc.RangeRequest(key=key, revision=revs[1]))
        assert err.value.code() == rpc.StatusCode.OUT_OF_RANGE
        resp = await c.kvstub.Range(rpc.RangeRequest(key=key, revision=revs[2]))
        assert [kv.value for kv in resp.kvs] == [b"2"]
        with pytest.raises(aexc.ClientError, match=COMPACTED):
            await c.compact(revs[1])
        with pytest.raises(aexc.ClientError, match=COMPACTED):
            await c.compact(revs[2])
        with pytest.raises(rpc.AioRpcError, match=FUTURE_REV):
            await c.kvstub.Range(rpc.RangeRequest(key=key, revision=revs[3] + 1000))
        await c.compact(revs[3], physical=True)
        got = await c.get(key)
        assert (got.value, got.mod_revision, got.version) == (b"3", revs[3], 4)
        resp = await c.kvstub.Range(rpc.RangeRequest(key=key, revision=revs[3]))
        assert [kv.value for kv in resp.kvs] == [b"3"]

    run(server, body)


def test_errors(server):
    async def body(c: aetcd.Client, p: bytes):
        t = c.transactions
        with pytest.raises(aexc.InvalidArgumentError, match="etcdserver: key is not provided"):
            await c.put(b"", b"v")
        with pytest.raises(aexc.InvalidArgumentError, match="etcdserver: key is not provided"):
            await c.get(b"")
        with pytest.raises(aexc.InvalidArgumentError, match="duplicate key given in txn request"):
            await c.transaction(compare=[], success=[t.put(p + b"d", b"1"), t.put(p + b"d", b"2")],
                                failure=[])
        with pytest.raises(aexc.InvalidArgumentError, match="too many operations in txn request"):
            await c.transaction(compare=[], success=[t.put(p + b"%d" % i, b"x")
                                                     for i in range(129)], failure=[])
        with pytest.raises(aexc.InvalidArgumentError, match="etcdserver: request is too large"):
            await c.put(p + b"huge", b"x" * (1600 * 1024))
        assert not await c.get_prefix(p)
        # the client stays usable after errors
        await c.put(p + b"fine", b"yes")
        assert (await c.get(p + b"fine")).value == b"yes"

    run(server, body)


# ------------------------------------------------------------------ status, members


def test_status_and_members(server):
    async def body(c: aetcd.Client, p: bytes):
        status = await c.status()
        assert status.version.startswith("3.5.")
        assert status.db_size > 0 and status.raft_term >= 1 and status.raft_index >= 1
        members = [m async for m in c.members()]
        assert len(members) == 1
        m = members[0]
        assert status.leader is not None and status.leader.id == m.id
        assert m.client_urls == [f"http://{server.endpoint}"]
        assert len(m.peer_urls) == 1 and m.peer_urls[0].startswith("http://127.0.0.1:")
        put = await c.put(p + b"k", b"v")
        assert put.header.member_id == m.id
        after = await c.status()
        assert after.raft_index > status.raft_index

    run(server, body)


def test_put_options_and_lease_errors(server):
    """ignore_value / ignore_lease and a missing lease, through aetcd's own request types."""

    async def body(c: aetcd.Client, p: bytes):
        k = p + b"k"
        with pytest.raises(rpc.AioRpcError, match="etcdserver: key not found"):
            await c.kvstub.Put(rpc.PutRequest(key=k, ignore_value=True))
        with pytest.raises(rpc.AioRpcError, match="etcdserver: requested lease not found"):
            await c.kvstub.Put(rpc.PutRequest(key=k, value=b"v", lease=0x1234))
        with pytest.raises(rpc.AioRpcError, match="etcdserver: value is provided"):
            await c.kvstub.Put(rpc.PutRequest(key=k, value=b"v", ignore_value=True))
        r1 = (await c.put(k, b"v1")).header.revision
        resp = await c.kvstub.Put(rpc.PutRequest(key=k, ignore_value=True, prev_kv=True))
        assert resp.prev_kv.value == b"v1"
        got = await c.get(k)
        assert (got.value, got.version, got.mod_revision) == (b"v1", 2, r1 + 1)
        await c.kvstub.Put(rpc.PutRequest(key=k, value=b"v2", ignore_lease=True))
        assert (await c.get(k)).value == b"v2"
        ok, _ = await c.transaction(compare=[], success=[c.transactions.put(p + b"t", b"x")],
                                    failure=[])
        assert ok
        with pytest.raises(rpc.AioRpcError, match="etcdserver: key not found"):
            await c.kvstub.Txn(rpc.TxnRequest(success=[rpc.RequestOp(
                request_put=rpc.PutRequest(key=p + b"absent", ignore_value=True))]))
        assert await c.get(p + b"absent") is None

    run(server, body)
