"""The bench's kube-apiserver Txn shapes (bench/kube_txn.py) and the `txn`/`create`
load loops (bench/loadgen.py): the compares of an update loop hold, as they would for
a kube-apiserver that is the only writer of its objects."""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from bench import loadgen
from bench.kube_txn import (
    CreateLoop,
    UpdateLoop,
    create_request,
    owned_keys,
    revision_after,
    revisions_from_range,
    update_request,
)
from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc


class FakeStore:
    """etcd's Txn semantics for one mod_revision compare, enough for the loops."""

    def __init__(self) -> None:
        self.rev = 1
        self.mod: dict[bytes, int] = {}

    def put(self, key: bytes) -> None:
        self.rev += 1
        self.mod[key] = self.rev

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        (cmp,) = req.compare
        assert cmp.target == pb.Compare.MOD and cmp.result == pb.Compare.EQUAL
        ok = self.mod.get(cmp.key, 0) == cmp.mod_revision
        resp = pb.TxnResponse(succeeded=ok)
        for op in req.success if ok else req.failure:
            if op.HasField("request_put"):
                self.put(op.request_put.key)
                resp.responses.add().response_put.SetInParent()
            else:
                rr = resp.responses.add().response_range
                k = op.request_range.key
                if k in self.mod:
                    rr.kvs.add(key=k, mod_revision=self.mod[k])
        resp.header.revision = self.rev
        return resp


def test_update_request_is_the_guaranteed_update_shape():
    req = update_request(b"k", b"v", 42)
    (cmp,) = req.compare
    assert (cmp.key, cmp.target, cmp.result, cmp.mod_revision) == (
        b"k", pb.Compare.MOD, pb.Compare.EQUAL, 42)
    (then,) = req.success
    assert then.request_put == pb.PutRequest(key=b"k", value=b"v")
    (orelse,) = req.failure
    assert orelse.request_range == pb.RangeRequest(key=b"k")


def test_create_request_is_the_create_shape():
    req = create_request(b"k", b"v")
    (cmp,) = req.compare
    assert cmp.WhichOneof("target_union") == "mod_revision" and cmp.mod_revision == 0
    assert cmp.target == pb.Compare.MOD and cmp.result == pb.Compare.EQUAL
    assert [op.request_put.key for op in req.success] == [b"k"]
    assert not req.failure  # store.Create has no Else


def test_revision_after():
    ok = pb.TxnResponse(succeeded=True)
    ok.header.revision = 7
    assert revision_after(ok) == 7
    failed = pb.TxnResponse(succeeded=False)
    failed.header.revision = 9
    failed.responses.add().response_range.kvs.add(key=b"k", mod_revision=5)
    assert revision_after(failed) == 5
    gone = pb.TxnResponse(succeeded=False)
    gone.responses.add().response_range.SetInParent()
    assert revision_after(gone) == 0


def test_owned_keys_split_the_keys_between_loops():
    for inflight in (1, 3, 16, 256):
        seen = [k for loop in range(inflight) for k in owned_keys(loop, inflight, 1000)]
        assert sorted(seen) == list(range(1000))


def test_revisions_from_range():
    resp = pb.RangeResponse()
    resp.kvs.add(key=b"bench/key/00012", mod_revision=3)
    resp.kvs.add(key=b"bench/key/09999", mod_revision=8)
    assert revisions_from_range(resp) == {12: 3, 9999: 8}


def test_update_loops_compares_hold_and_recover_after_a_foreign_write():
    store = FakeStore()
    keys = {i: b"bench/key/%05d" % i for i in range(20)}
    for k in keys.values():
        store.put(k)
    revs = {i: store.mod[k] for i, k in keys.items()}
    rnd = random.Random(1)
    loops = [UpdateLoop({i: keys[i] for i in owned_keys(n, 4, 20)}, revs, b"v", rnd)
             for n in range(4)]
    for step in range(400):  # interleaved: loops only write their own keys
        upd = loops[step % 4]
        assert upd.done(store.txn(upd.next()))
    only = UpdateLoop({0: keys[0]}, {0: store.mod[keys[0]]}, b"v", rnd)
    store.put(keys[0])  # someone else writes the key
    assert not only.done(store.txn(only.next()))  # compare fails, Else Get gives the rev
    assert only.done(store.txn(only.next()))


def test_update_loop_of_a_missing_key_creates_it():
    store = FakeStore()
    upd = UpdateLoop({3: b"bench/key/00003"}, {}, b"v", random.Random(0))
    assert upd.done(store.txn(upd.next()))
    assert upd.done(store.txn(upd.next()))


def test_create_loop_makes_new_keys():
    store = FakeStore()
    cre = CreateLoop(cell=2, loop=5, value=b"v")
    reqs = [cre.next() for _ in range(3)]
    assert [r.compare[0].key for r in reqs] == [b"bench/create/2/5/1", b"bench/create/2/5/2",
                                                 b"bench/create/2/5/3"]
    assert all(cre.done(store.txn(r)) for r in reqs)
    assert not cre.done(store.txn(reqs[0]))  # exists now: "key exists"


def test_compare_note():
    cells = {("kubekv", 1): {"compare_failed": 0}, ("etcd", 1): {"compare_failed": 2}}
    note = loadgen.compare_note("txn", [1, 16], lambda s, n: cells.get((s, n)),
                                ["kubekv", "etcd"])
    assert "@1 0/2, @16 –/–" in note
    assert loadgen.compare_note("put", [1], lambda s, n: None, ["kubekv"]) == ""


def test_txn_and_create_loops_against_kubekv(kubekv, monkeypatch):
    """Two client 'processes' of 2 loops each, `txn` then `create`, for a second each:
    no errors and no failed compare (each loop is the only writer of its keys)."""
    monkeypatch.setattr(loadgen, "NUM_KEYS", 40)
    for i in range(40):
        kubekv.kv.Put(pb.PutRequest(key=(loadgen.KEY_FMT % i).encode(), value=b"x"), timeout=10)

    async def cell(op: str, seed: int) -> list[dict]:
        async with grpc.aio.insecure_channel(kubekv.endpoint) as ch:
            stubs = [rpc_pb2_grpc.KVStub(ch)]
            revs = await loadgen._fetch_revisions(stubs[0]) if op == "txn" else None
            t_start = time.monotonic() + 0.3
            t_end = t_start + 1.0
            return await asyncio.gather(*(
                loadgen._run_loops(stubs, op, {}, 2, first, t_start, t_end, seed * 10 + first,
                                   4, revs, seed) for first in (0, 2)))

    for seed, op in enumerate(("txn", "create", "txn"), start=1):
        results = asyncio.run(cell(op, seed))
        for r in results:
            assert r["errors"] == {} and r["warm_errors"] == {}, r
            assert r["compare_failed"] == 0 and r["warmup_compare_failed"] == 0, (op, r)
        assert sum(r["ops"]["window"] for r in results) > 0
