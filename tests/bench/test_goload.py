"""bench/'s Go load client (bench/goload.py, bench/goload/main.go) against a real
kubekv member: it builds, and each op's loops get answers, with the kube Txns'
compares holding as they do for the Python loops."""

from __future__ import annotations

import shutil

import grpc
import pytest

from bench import goload, loadgen
from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not goload.CLIENT_PKG.is_dir(),
    reason="the Go load client needs Debian's golang-go and golang-etcd-server-dev "
           "(etcd's Go client sources under /usr/share/gocode)")


def test_go_clients_run_every_op_against_kubekv(kubekv, tmp_path):
    clients = goload.GoClients(kubekv.endpoint, 2, 1, cache=tmp_path / "cache")
    try:
        assert clients.preload(loadgen.NUM_KEYS, 64) == loadgen.NUM_KEYS
        with grpc.insecure_channel(kubekv.endpoint) as ch:
            assert loadgen.count_keys(rpc_pb2_grpc.KVStub(ch)) == loadgen.NUM_KEYS
        for seed, op in enumerate(("put", "range", "srange", "txn", "create"), 1):
            cell = loadgen.run_cell([kubekv.proc.pid], lambda: None, clients, op, 8,
                                    warmup=0.3, duration=1.0, seed=seed)
            assert cell["ops"] > 50, (op, cell)
            assert cell["errors"] == 0 and cell["warmup_errors"] == 0, (op, cell)
            assert cell["compare_failed"] == 0, (op, cell)
            assert 0 < cell["p50_ms"] <= cell["p99_ms"] < 1000, (op, cell)
        with grpc.insecure_channel(kubekv.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            one = kv.Range(pb.RangeRequest(key=b"bench/key/00000"))
            assert len(one.kvs[0].value) == loadgen.VALUE_SIZE
            created = kv.Range(pb.RangeRequest(key=b"bench/create/5/", range_end=b"bench/create/50",
                                               count_only=True))
            assert created.count > 50  # every create Txn made a new key
    finally:
        clients.close()
    assert all(p.poll() is not None for p in clients.procs)
