"""The watch service's pre-encoded event responses are byte for byte protobuf's."""

from __future__ import annotations

from types import SimpleNamespace

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import Event, KeyValue
from kubekv_server.api.watch import EventEncoder


def _member(term: int = 7):
    m = SimpleNamespace(cluster_id=0xCDF818194E3A8C32, member_id=0x8E9E05C52164694D,
                        node=SimpleNamespace(term=term))

    def header(h, revision=None, term=None):  # as Member.header
        h.cluster_id, h.member_id = m.cluster_id, m.member_id
        h.raft_term = m.node.term if term is None else term
        if revision is not None:
            h.revision = revision

    m.header = header
    return m


def _events():
    put_new = Event(type=Event.PUT, kv=KeyValue(key=b"a", value=b"1", create_revision=5,
                                                mod_revision=5, version=1))
    put_over = Event(type=Event.PUT,
                     kv=KeyValue(key=b"b", value=b"2" * 300, create_revision=3, mod_revision=5,
                                 version=2, lease=0x1234567890),
                     prev_kv=KeyValue(key=b"b", value=b"x", create_revision=3, mod_revision=3,
                                      version=1))
    delete = Event(type=Event.DELETE, kv=KeyValue(key=b"c", mod_revision=5),
                   prev_kv=KeyValue(key=b"c", value=b"y", create_revision=2, mod_revision=4,
                                    version=2))
    return [put_new, put_over, delete]


def _expected(member, watch_id, revision, events, prev_kv):
    resp = pb.WatchResponse(watch_id=watch_id)
    resp.header.cluster_id = member.cluster_id
    resp.header.member_id = member.member_id
    resp.header.raft_term = member.node.term
    resp.header.revision = revision
    for ev in events:
        e = resp.events.add()
        e.CopyFrom(ev)
        if not prev_kv:
            e.ClearField("prev_kv")
    return resp.SerializeToString()


def test_encoded_responses_equal_protobuf_serialization():
    member = _member()
    enc = EventEncoder(member)
    evs = _events()
    for watch_id in (0, 1, 300, 2**40):
        for prev_kv in (False, True):
            for sel in (evs, evs[:1], evs[1:], evs[2:]):
                got = enc.encode(watch_id, 5, sel, prev_kv).SerializeToString()
                assert got == _expected(member, watch_id, 5, sel, prev_kv)
    # the term in the header follows the member's current term
    member.node.term = 8
    got = enc.encode(3, 5, evs, True).SerializeToString()
    assert got == _expected(member, 3, 5, evs, True)
    assert pb.WatchResponse.FromString(got).events[1].prev_kv.value == b"x"
