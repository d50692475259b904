"""--quota-backend-bytes: etcd's NOSPACE alarm and capped writes, on a real process."""

from __future__ import annotations

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import kubekv_process


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
