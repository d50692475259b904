"""/metrics: the exposition format as pure logic, what a member reports after some
traffic, the --listen-metrics-urls listener, and the families' names, types and help
texts next to a real etcd 3.5's."""

from __future__ import annotations

import http.client
import re

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.metrics.exposition import Counter, Gauge, Histogram, Registry, format_value
from tests.harness import etcd_process, free_port, kubekv_process, running


@pytest.mark.parametrize("value, text", [
    (0, "0"), (3.0, "3"), (0.25, "0.25"), (2147483648, "2147483648"), (1e-05, "1e-05"),
    (1.5e22, "1.5e+22"), (float("inf"), "+Inf"),
])
def test_values_are_written_as_go_writes_them(value, text):
    assert format_value(value) == text


def test_exposition_sorts_families_and_series_and_renders_histograms():
    r = Registry()
    c = r.add(Counter("b_total", "B.", ("code", "method")))
    c.inc("OK", "Range")
    c.inc("Aborted", "Range", by=2)
    r.add(Gauge("a_value", "A.", fn=lambda: 7))
    h = r.add(Histogram("c_seconds", "C.", [0.1, 1]))
    h.observe(0.05)
    h.observe(0.5)
    h.observe(3)
    assert r.render() == (
        "# HELP a_value A.\n# TYPE a_value gauge\na_value 7\n"
        "# HELP b_total B.\n# TYPE b_total counter\n"
        'b_total{code="Aborted",method="Range"} 2\nb_total{code="OK",method="Range"} 1\n'
        "# HELP c_seconds C.\n# TYPE c_seconds histogram\n"
        'c_seconds_bucket{le="0.1"} 1\nc_seconds_bucket{le="1"} 2\n'
        'c_seconds_bucket{le="+Inf"} 3\nc_seconds_sum 3.55\nc_seconds_count 3\n')


def _scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_member_reports_its_state_and_calls(tmp_path):
    mport = free_port()
    proc = kubekv_process(tmp_path, "--listen-metrics-urls", f"http://127.0.0.1:{mport}")
    with running(proc):
        kv = rpc_pb2_grpc.KVStub(proc.channel)
        for i in range(3):
            kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"))
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"k0"))
        kv.Range(pb.RangeRequest(key=b"k1"))
        with pytest.raises(grpc.RpcError):
            kv.Range(pb.RangeRequest())  # no key: InvalidArgument
        kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k1")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"k1", value=b"w"))]))
        watch = rpc_pb2_grpc.WatchStub(proc.channel).Watch(iter([pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=b"k"))]))
        next(watch)
        watch.cancel()  # the client cancels: grpc_code="Canceled"
        status, ctype, text = _scrape(proc.port)
        assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
        s = _samples(text)
        kv_labels = 'grpc_method="{}",grpc_service="etcdserverpb.KV",grpc_type="unary"'
        assert s["grpc_server_started_total{" + kv_labels.format("Put") + "}"] == 3
        assert s['grpc_server_handled_total{grpc_code="OK",' + kv_labels.format("Put") + "}"] == 3
        assert s['grpc_server_handled_total{grpc_code="InvalidArgument",'
                 + kv_labels.format("Range") + "}"] == 1
        assert s["etcd_server_has_leader"] == 1 and s["etcd_server_is_leader"] == 1
        assert s["etcd_server_leader_changes_seen_total"] == 1
        assert s["etcd_debugging_mvcc_keys_total"] == 2
        assert s["etcd_debugging_mvcc_current_revision"] == 6
        # etcd counts calls per mvcc txn (a DeleteRange is one delete however many keys)
        assert (s["etcd_mvcc_put_total"], s["etcd_mvcc_delete_total"],
                s["etcd_mvcc_txn_total"]) == (4, 1, 1)
        assert s['grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",'
                 'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}'] == 1
        assert s["etcd_server_proposals_applied_total"] == s[
            "etcd_server_proposals_committed_total"] >= 6
        assert s["etcd_disk_wal_fsync_duration_seconds_count"] >= 4
        assert s["etcd_disk_backend_commit_duration_seconds_count"] >= 4
        assert s['etcd_server_version{server_version="3.5.17"}'] == 1
        assert s["process_resident_memory_bytes"] > 1 << 20
        # the metrics listener serves /metrics and the health endpoints, nothing else
        status, _, text = _scrape(mport)
        assert status == 200 and "etcd_server_has_leader 1" in text
        assert _scrape(mport, "/health")[2] == '{"health":"true"}'
        assert _scrape(mport, "/v3/kv/range")[0] == 404


def test_families_are_named_typed_and_described_as_etcds(tmp_path):
    """Every family kubekv exposes exists in etcd 3.5 with the same type and help."""
    def families(port: int) -> dict[str, tuple[str, str]]:
        text = _scrape(port)[2]
        helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        return {name: (types[name], helps[name]) for name in types}

    with running(kubekv_process(tmp_path)) as ours, running(etcd_process(tmp_path)) as theirs:
        mine, etcds = families(ours.port), families(theirs.port)
    missing = sorted(set(mine) - set(etcds))
    assert not missing
    assert {n: mine[n] for n in mine} == {n: etcds[n] for n in mine}


def test_mvcc_operation_counters_move_as_etcds(tmp_path):
    """The same calls on kubekv and etcd 3.5: etcd_mvcc_{range,put,delete,txn}_total
    agree after each step (start-up included)."""
    def steps(proc):
        kv = rpc_pb2_grpc.KVStub(proc.channel)
        out = [_mvcc_counts(proc.port)]
        for i in range(3):
            kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"))
        out.append(_mvcc_counts(proc.port))
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"))
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"nothing"))
        kv.Range(pb.RangeRequest(key=b"k1"))
        kv.Range(pb.RangeRequest(key=b"k1", serializable=True))
        out.append(_mvcc_counts(proc.port))
        kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k1")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"k1", value=b"w"))]))
        kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=b"k1", target=pb.Compare.VALUE, value=b"w")],
            success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k1"))]))
        out.append(_mvcc_counts(proc.port))
        return out

    (tmp_path / "k").mkdir()
    (tmp_path / "e").mkdir()
    with running(kubekv_process(tmp_path / "k")) as ours:
        mine = steps(ours)
    with running(etcd_process(tmp_path / "e")) as theirs:
        etcds = steps(theirs)
    assert mine == etcds


def _mvcc_counts(port: int) -> dict[str, float]:
    s = _samples(_scrape(port)[2])
    return {k: v for k, v in s.items() if k.startswith("etcd_mvcc_") and k.endswith("_total")}
