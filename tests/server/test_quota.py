"""--quota-backend-bytes: etcd's NOSPACE alarm and capped writes, on a real process."""

from __future__ import annotations

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import etcd_process, kubekv_process


def test_quota_raises_nospace_alarm_and_caps_writes(tmp_path):
    proc = kubekv_process(tmp_path, "--quota-backend-bytes", "200000").start()
    try:
        kv, m = proc.kv, proc.maintenance
        value = b"x" * 8000
        with pytest.raises(grpc.RpcError) as err:
            for i in range(200):
                kv.Put(pb.PutRequest(key=b"k%d" % i, value=value))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "etcdserver: mvcc: database space exceeded"
        alarms = m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms
        assert [a.alarm for a in alarms] == [pb.NOSPACE]
        status = m.Status(pb.StatusRequest())
        assert status.errors == [f"memberID:{status.header.member_id} alarm:NOSPACE "]
        # While the alarm is raised, even a tiny put is refused; deletes still work.
        with pytest.raises(grpc.RpcError) as err:
            kv.Put(pb.PutRequest(key=b"small", value=b"v"))
        assert err.value.details() == "etcdserver: mvcc: database space exceeded"
        # etcd's capped applier refuses a lease grant too (applierV3Capped.LeaseGrant).
        with pytest.raises(grpc.RpcError) as err:
            rpc_pb2_grpc.LeaseStub(proc.channel).LeaseGrant(pb.LeaseGrantRequest(TTL=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "etcdserver: mvcc: database space exceeded"
        assert kv.DeleteRange(pb.DeleteRangeRequest(key=b"k0")).deleted == 1
        # Disarming answers with the alarm it cleared; the alarm survives a restart until then.
        proc.restart()
        m = proc.maintenance
        assert [a.alarm for a in m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms] == [
            pb.NOSPACE
        ]
        cleared = m.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=alarms[0].memberID,
                            alarm=pb.NOSPACE)
        ).alarms
        assert [a.alarm for a in cleared] == [pb.NOSPACE]
        assert m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms == []
    finally:
        proc.stop()


@pytest.mark.parametrize("server", ["etcd", "kubekv"])
def test_nospace_alarm_refuses_lease_grant_as_etcd(tmp_path, server):
    """Side by side with etcd 3.5.1: with NOSPACE raised, LeaseGrant is refused with
    etcd's code and message (applierV3Capped), a Put too, and disarming lets both pass."""
    proc = (etcd_process if server == "etcd" else kubekv_process)(tmp_path).start()
    try:
        m, lease = proc.maintenance, rpc_pb2_grpc.LeaseStub(proc.channel)
        member_id = m.Status(pb.StatusRequest()).header.member_id
        m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member_id,
                                alarm=pb.NOSPACE))
        for call in (lambda: lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=5),
                     lambda: proc.kv.Put(pb.PutRequest(key=b"q", value=b"v"), timeout=5)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
        m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member_id,
                                alarm=pb.NOSPACE))
        assert lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=5).ID != 0
    finally:
        proc.stop()
