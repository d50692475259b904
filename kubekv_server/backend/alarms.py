"""Cluster alarms (NOSPACE, CORRUPT): raised and cleared through the log, kept in `meta`."""

from __future__ import annotations

import struct

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb

_PREFIX = b"alarm/"
_KEY = struct.Struct(">QI")


def _key(member_id: int, alarm: int) -> bytes:
    return _PREFIX + _KEY.pack(member_id, alarm)


def list_alarms(txn: lmdb.Transaction, meta_db) -> list[pb.AlarmMember]:
    """Every active alarm, ordered by member then type."""
    out = []
    cur = txn.cursor(db=meta_db)
    if cur.set_range(_PREFIX):
        for key in cur.iternext(values=False):
            if not key.startswith(_PREFIX):
                break
            mid, alarm = _KEY.unpack(key[len(_PREFIX) :])
            out.append(pb.AlarmMember(memberID=mid, alarm=alarm))
    return out


def apply_alarm(txn: lmdb.Transaction, meta_db, r: pb.AlarmRequest) -> pb.AlarmResponse:
    """etcd's applier Alarm: ACTIVATE/DEACTIVATE answer with the alarm they changed, if any."""
    resp = pb.AlarmResponse()
    if r.action == pb.AlarmRequest.GET:
        resp.alarms.extend(list_alarms(txn, meta_db))
        return resp
    if r.alarm == pb.NONE:
        return resp
    key = _key(r.memberID, r.alarm)
    present = txn.get(key, db=meta_db) is not None
    if r.action == pb.AlarmRequest.ACTIVATE and not present:
        txn.put(key, b"", db=meta_db)
        resp.alarms.add(memberID=r.memberID, alarm=r.alarm)
    elif r.action == pb.AlarmRequest.DEACTIVATE and present:
        txn.delete(key, db=meta_db)
        resp.alarms.add(memberID=r.memberID, alarm=r.alarm)
    return resp
