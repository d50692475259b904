"""The metric families deploy/monitoring's rules and dashboard use: each is in kubekv's
/metrics with etcd 3.5.1's name, type, help, label names and buckets (reference:
etcd-3.5.1-metrics.txt, itself checked against a running etcd), and moves with real
values; plus the sources behind them that a process test cannot steer (late heartbeats)."""

from __future__ import annotations

import asyncio
import pathlib
import urllib.request

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.raftpb import raft_pb2
from kubekv_server.peer import sender as peer_sender
from kubekv_testing.cluster import Cluster
from kubekv_testing.polling import wait_for
from tests.harness import etcd_process, free_port, running

from .promql import (
    dashboard_expressions,
    families_used,
    grafana_to_promql,
    metric_names,
    parse_families,
    rule_expressions,
)

HERE = pathlib.Path(__file__).resolve().parent
ETCD_REFERENCE = parse_families((HERE / "etcd-3.5.1-metrics.txt").read_text())


def used_families() -> set[str]:
    names: set[str] = set()
    for expr in rule_expressions() + [grafana_to_promql(e) for e in dashboard_expressions()]:
        names |= metric_names(expr)
    types = {name: f.type for name, f in ETCD_REFERENCE.items()}
    return families_used(names, types)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _shape(f) -> tuple:
    return f.type, f.help, f.labels, f.buckets


def test_the_reference_names_every_family_used():
    used = used_families()
    assert len(used) >= 25
    assert used <= set(ETCD_REFERENCE), sorted(used - set(ETCD_REFERENCE))


def test_the_reference_is_what_etcd_3_5_1_exposes(tmp_path):
    """A running etcd 3.5.1 (--metrics extensive) shows the reference's families as the
    file has them (those a single member has: its peer families need peers)."""
    with running(etcd_process(tmp_path, "--metrics", "extensive")) as etcd:
        etcd.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
        live = parse_families(scrape(etcd.port))
    shown = [name for name in ETCD_REFERENCE if name in live]
    assert len(shown) >= 20
    for name in shown:
        assert _shape(live[name]) == _shape(ETCD_REFERENCE[name]), name


def test_every_family_used_is_in_kubekvs_metrics_as_etcds(tmp_path):
    """A 3-member kubekv (--metrics extensive) with one member killed: every family the
    rules and dashboard use is there with etcd's shape, and the new ones carry real values."""
    c = Cluster(tmp_path, 3, flags=["--metrics", "extensive",
                                    "--experimental-warning-apply-duration", "1ns"])
    try:
        c.start()
        leader = c.wait_leader()
        for i in range(5):
            leader.kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v" * 100))
        follower = c.followers()[0]
        follower.kill()
        for i in range(5):
            leader.kv.Put(pb.PutRequest(key=b"after%d" % i, value=b"v"))
        to = f"{follower.id:x}"

        def ready():
            fams = parse_families(text := scrape(leader.client_port))
            # the prober's first round comes PROBE_INTERVAL after start
            if "etcd_network_peer_round_trip_time_seconds" in fams and \
                    f'etcd_network_peer_sent_failures_total{{To="{to}"}}' in text:
                return fams, text
            return None

        fams, text = wait_for(ready, 30, "peer send failures and round trips in /metrics")
        for name in sorted(used_families()):
            assert name in fams, f"{name} missing from kubekv's /metrics"
            assert _shape(fams[name]) == _shape(ETCD_REFERENCE[name]), name
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line and not line.startswith("#")}
        for name in ("etcd_network_client_grpc_received_bytes_total",
                     "etcd_network_client_grpc_sent_bytes_total", "etcd_server_slow_apply_total"):
            assert values[name] > 0, name
        assert values[f'etcd_network_peer_sent_failures_total{{To="{to}"}}'] > 0
        others = [m for m in c.members if m not in (leader, follower)]
        peer = f"{others[0].id:x}"
        assert values[f'etcd_network_peer_sent_bytes_total{{To="{peer}"}}'] > 500
        assert values[f'etcd_network_peer_received_bytes_total{{From="{peer}"}}'] > 0
        assert values[f'etcd_network_peer_round_trip_time_seconds_count{{To="{peer}"}}'] >= 1
        assert values['grpc_server_handling_seconds_count{grpc_method="Put",'
                       'grpc_service="etcdserverpb.KV",grpc_type="unary"}'] == 10
        # no quorum: a linearizable read waits, its read-index round is retried (slow)
        others[0].kill()
        with pytest.raises(grpc.RpcError):
            leader.kv.Range(pb.RangeRequest(key=b"k0"), timeout=1.5)
        wait_for(lambda: "etcd_server_slow_read_indexes_total 0\n" not in scrape(
            leader.client_port), 10, "a slow read index counted")
    finally:
        c.close()


def test_a_late_heartbeat_of_the_same_term_is_a_heartbeat_send_failure(monkeypatch):
    """etcd's timeoutDetector: a heartbeat more than 2 heartbeat intervals after the last
    one to that peer counts; the first of a new term does not."""
    clock = [100.0]
    monkeypatch.setattr(peer_sender.time, "monotonic", lambda: clock[0])

    async def main() -> int:
        t = peer_sender.GrpcTransport(1, 7)
        t.heartbeat_late = 0.25  # binary fractions: exact sums
        t.add_peer(2, [f"http://127.0.0.1:{free_port()}"])

        def beat(term: int, after: float) -> None:
            clock[0] += after
            t.send([raft_pb2.Message(type=raft_pb2.MsgHeartbeat, to=2, term=term)])

        beat(1, 0)
        beat(1, 0.125)  # on time
        beat(1, 0.375)  # late: 1
        beat(2, 5.0)    # a new term starts the detector again
        beat(2, 0.25)   # exactly on the limit: on time
        beat(2, 0.5)    # late: 2
        await t.close()
        return t.heartbeat_send_failures

    assert asyncio.run(main()) == 2
