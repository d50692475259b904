"""Our etcd protos must be wire-identical to etcd's own.

The independent witness is aetcd's generated code (aetcd.rpc: rpc_pb2, kv_pb2, auth_pb2),
built from etcd 3.5's protos by other people. It lives in protobuf's default descriptor pool
while ours live in etcdproto._pool.POOL, so both can be imported into this one process.

Every message, field, enum and method of the witness must exist in ours with the same full
name, number, type, label and referenced type. Anything we have beyond the witness must be
listed in KNOWN_ADDITIONS, so any other difference in either direction fails.

No generated witness is installed for v3lockpb/v3electionpb; those are checked against a
table transcribed from etcd 3.5's v3lock.proto / v3election.proto instead.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from etcdproto._pool import POOL
from etcdproto.authpb import auth_pb2
from etcdproto.etcdserverpb import rpc_pb2
from etcdproto.mvccpb import kv_pb2
from etcdproto.v3electionpb import v3election_pb2
from etcdproto.v3lockpb import v3lock_pb2

witness_rpc = pytest.importorskip("aetcd.rpc.rpc_pb2")
witness_kv = pytest.importorskip("aetcd.rpc.kv_pb2")
witness_auth = pytest.importorskip("aetcd.rpc.auth_pb2")

# Things in our 3.5 contract that the witness lacks, as "kind:full.name" entries.
# aetcd 1.0.0 was generated from etcd 3.5 protos and already carries everything 3.5 added over
# 3.4 (Maintenance.Downgrade + DowngradeRequest/Response, Auth.AuthStatus + AuthStatusRequest/
# Response, MemberListRequest.linearizable, AuthUserAddRequest.hashedPassword,
# AuthUserChangePasswordRequest.hashedPassword), and etcd 3.5.x releases changed no wire
# facts after that, so the list is empty. Fields that only etcd 3.6 added (for example
# HashKVResponse.hash_revision, SnapshotResponse.version, StatusResponse.storageVersion/
# dbSizeQuota/downgradeInfo) are deliberately NOT in our 3.5 contract.
# Example entry, should a future witness be older than ours:
#   "field:etcdserverpb.MemberListRequest.linearizable",  # added in etcd 3.5
KNOWN_ADDITIONS: frozenset[str] = frozenset()

PAIRS = [
    pytest.param(kv_pb2.DESCRIPTOR, witness_kv.DESCRIPTOR, id="mvccpb"),
    pytest.param(auth_pb2.DESCRIPTOR, witness_auth.DESCRIPTOR, id="authpb"),
    pytest.param(rpc_pb2.DESCRIPTOR, witness_rpc.DESCRIPTOR, id="etcdserverpb"),
]


def _ref(field: FieldDescriptor) -> str | None:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return None


def _label(field: FieldDescriptor) -> str:
    # protobuf 7 dropped FieldDescriptor.label; these predicates carry the same information.
    if field.is_repeated:
        return "repeated"
    return "required" if field.is_required else "optional"


def _field_facts(field: FieldDescriptor) -> tuple:
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return (field.number, field.type, _label(field), field.has_presence, _ref(field), oneof)


def _flatten(file_descriptor) -> dict[str, tuple]:
    """Every wire-relevant fact of a .proto file, keyed "kind:full.name"."""
    facts: dict[str, tuple] = {}

    def enum(e):
        facts[f"enum:{e.full_name}"] = ()
        for v in e.values:
            facts[f"enumvalue:{e.full_name}.{v.name}"] = (v.number,)

    def message(m):
        facts[f"message:{m.full_name}"] = ()
        for f in m.fields:
            facts[f"field:{f.full_name}"] = _field_facts(f)
        for e in m.enum_types:
            enum(e)
        for nested in m.nested_types:
            message(nested)

    facts["package"] = (file_descriptor.package,)
    for m in file_descriptor.message_types_by_name.values():
        message(m)
    for e in file_descriptor.enum_types_by_name.values():
        enum(e)
    for s in file_descriptor.services_by_name.values():
        facts[f"service:{s.full_name}"] = ()
        for method in s.methods:
            facts[f"method:{method.full_name}"] = (
                method.input_type.full_name,
                method.output_type.full_name,
                method.client_streaming,
                method.server_streaming,
            )
    return facts


def test_pools_are_separate():
    assert POOL is not descriptor_pool.Default()
    assert rpc_pb2.DESCRIPTOR.pool is POOL
    assert witness_rpc.DESCRIPTOR.pool is not POOL


@pytest.mark.parametrize(("ours", "witness"), PAIRS)
def test_same_wire_contract_as_witness(ours, witness):
    mine, theirs = _flatten(ours), _flatten(witness)

    missing = sorted(theirs.keys() - mine.keys())
    different = sorted(
        f"{key}: ours={mine[key]} witness={theirs[key]}"
        for key in theirs.keys() & mine.keys()
        if mine[key] != theirs[key]
    )
    extra = sorted(mine.keys() - theirs.keys() - KNOWN_ADDITIONS)

    assert not missing, f"in the witness but not in ours: {missing}"
    assert not different, "differs from the witness:\n" + "\n".join(different)
    assert not extra, f"ours only, and not a listed known addition: {extra}"


def test_known_additions_are_really_ours_only():
    mine, theirs = {}, {}
    for param in PAIRS:
        ours, witness = param.values
        mine |= _flatten(ours)
        theirs |= _flatten(witness)
    stale = sorted(k for k in KNOWN_ADDITIONS if k not in mine or k in theirs)
    assert not stale, f"KNOWN_ADDITIONS entries that no longer apply: {stale}"


# ---------------------------------------------------------------------------------------------
# v3lockpb / v3electionpb: no generated witness available, so an explicit table.
# ---------------------------------------------------------------------------------------------

T = FieldDescriptor
HEADER = (1, T.TYPE_MESSAGE, "optional", True, "etcdserverpb.ResponseHeader", None)
LEADER_KEY = "v3electionpb.LeaderKey"

EXPECTED_CONCURRENCY = {
    "package": ("v3lockpb",),
    "message:v3lockpb.LockRequest": (),
    "field:v3lockpb.LockRequest.name": (1, T.TYPE_BYTES, "optional", False, None, None),
    "field:v3lockpb.LockRequest.lease": (2, T.TYPE_INT64, "optional", False, None, None),
    "message:v3lockpb.LockResponse": (),
    "field:v3lockpb.LockResponse.header": HEADER,
    "field:v3lockpb.LockResponse.key": (2, T.TYPE_BYTES, "optional", False, None, None),
    "message:v3lockpb.UnlockRequest": (),
    "field:v3lockpb.UnlockRequest.key": (1, T.TYPE_BYTES, "optional", False, None, None),
    "message:v3lockpb.UnlockResponse": (),
    "field:v3lockpb.UnlockResponse.header": HEADER,
    "service:v3lockpb.Lock": (),
    "method:v3lockpb.Lock.Lock": ("v3lockpb.LockRequest", "v3lockpb.LockResponse", False, False),
    "method:v3lockpb.Lock.Unlock": (
        "v3lockpb.UnlockRequest",
        "v3lockpb.UnlockResponse",
        False,
        False,
    ),
}

EXPECTED_ELECTION = {
    "package": ("v3electionpb",),
    "message:v3electionpb.CampaignRequest": (),
    "field:v3electionpb.CampaignRequest.name": (1, T.TYPE_BYTES, "optional", False, None, None),
    "field:v3electionpb.CampaignRequest.lease": (2, T.TYPE_INT64, "optional", False, None, None),
    "field:v3electionpb.CampaignRequest.value": (3, T.TYPE_BYTES, "optional", False, None, None),
    "message:v3electionpb.CampaignResponse": (),
    "field:v3electionpb.CampaignResponse.header": HEADER,
    "field:v3electionpb.CampaignResponse.leader": (
        2,
        T.TYPE_MESSAGE,
        "optional",
        True,
        LEADER_KEY,
        None,
    ),
    "message:v3electionpb.LeaderKey": (),
    "field:v3electionpb.LeaderKey.name": (1, T.TYPE_BYTES, "optional", False, None, None),
    "field:v3electionpb.LeaderKey.key": (2, T.TYPE_BYTES, "optional", False, None, None),
    "field:v3electionpb.LeaderKey.rev": (3, T.TYPE_INT64, "optional", False, None, None),
    "field:v3electionpb.LeaderKey.lease": (4, T.TYPE_INT64, "optional", False, None, None),
    "message:v3electionpb.LeaderRequest": (),
    "field:v3electionpb.LeaderRequest.name": (1, T.TYPE_BYTES, "optional", False, None, None),
    "message:v3electionpb.LeaderResponse": (),
    "field:v3electionpb.LeaderResponse.header": HEADER,
    "field:v3electionpb.LeaderResponse.kv": (
        2,
        T.TYPE_MESSAGE,
        "optional",
        True,
        "mvccpb.KeyValue",
        None,
    ),
    "message:v3electionpb.ResignRequest": (),
    "field:v3electionpb.ResignRequest.leader": (
        1,
        T.TYPE_MESSAGE,
        "optional",
        True,
        LEADER_KEY,
        None,
    ),
    "message:v3electionpb.ResignResponse": (),
    "field:v3electionpb.ResignResponse.header": HEADER,
    "message:v3electionpb.ProclaimRequest": (),
    "field:v3electionpb.ProclaimRequest.leader": (
        1,
        T.TYPE_MESSAGE,
        "optional",
        True,
        LEADER_KEY,
        None,
    ),
    "field:v3electionpb.ProclaimRequest.value": (2, T.TYPE_BYTES, "optional", False, None, None),
    "message:v3electionpb.ProclaimResponse": (),
    "field:v3electionpb.ProclaimResponse.header": HEADER,
    "service:v3electionpb.Election": (),
    "method:v3electionpb.Election.Campaign": (
        "v3electionpb.CampaignRequest",
        "v3electionpb.CampaignResponse",
        False,
        False,
    ),
    "method:v3electionpb.Election.Proclaim": (
        "v3electionpb.ProclaimRequest",
        "v3electionpb.ProclaimResponse",
        False,
        False,
    ),
    "method:v3electionpb.Election.Leader": (
        "v3electionpb.LeaderRequest",
        "v3electionpb.LeaderResponse",
        False,
        False,
    ),
    "method:v3electionpb.Election.Observe": (
        "v3electionpb.LeaderRequest",
        "v3electionpb.LeaderResponse",
        False,
        True,
    ),
    "method:v3electionpb.Election.Resign": (
        "v3electionpb.ResignRequest",
        "v3electionpb.ResignResponse",
        False,
        False,
    ),
}


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        pytest.param(v3lock_pb2.DESCRIPTOR, EXPECTED_CONCURRENCY, id="v3lockpb"),
        pytest.param(v3election_pb2.DESCRIPTOR, EXPECTED_ELECTION, id="v3electionpb"),
    ],
)
def test_concurrency_services_match_etcd(ours, expected):
    assert _flatten(ours) == expected


# ---------------------------------------------------------------------------------------------
# Round trips: bytes we serialize parse to the same content with the witness's classes.
# ---------------------------------------------------------------------------------------------


def _roundtrip_samples():
    header = rpc_pb2.ResponseHeader(cluster_id=2**63 + 5, member_id=7, revision=42, raft_term=3)
    kv = kv_pb2.KeyValue(
        key=b"k\x00\xff", create_revision=2, mod_revision=40, version=3, value=b"v" * 300, lease=-1
    )
    yield rpc_pb2.RangeResponse(
        header=header, kvs=[kv, kv_pb2.KeyValue(key=b"z")], more=True, count=9
    )
    yield rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                result=rpc_pb2.Compare.NOT_EQUAL,
                target=rpc_pb2.Compare.LEASE,
                key=b"a",
                lease=12,
                range_end=b"b",
            ),
            rpc_pb2.Compare(target=rpc_pb2.Compare.VALUE, key=b"a", value=b""),
        ],
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"a", value=b"1", prev_kv=True))
        ],
        failure=[
            rpc_pb2.RequestOp(
                request_txn=rpc_pb2.TxnRequest(
                    success=[
                        rpc_pb2.RequestOp(
                            request_range=rpc_pb2.RangeRequest(
                                key=b"a",
                                sort_order=rpc_pb2.RangeRequest.DESCEND,
                                sort_target=rpc_pb2.RangeRequest.MOD,
                                max_create_revision=8,
                            )
                        )
                    ]
                )
            )
        ],
    )
    yield rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(
            key=b"/",
            range_end=b"0",
            start_revision=5,
            filters=[rpc_pb2.WatchCreateRequest.NODELETE],
            prev_kv=True,
            watch_id=3,
            fragment=True,
        )
    )
    yield rpc_pb2.WatchResponse(
        header=header,
        watch_id=3,
        created=True,
        cancel_reason="gone",
        fragment=True,
        events=[kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv, prev_kv=kv)],
    )
    yield rpc_pb2.AlarmResponse(
        header=header, alarms=[rpc_pb2.AlarmMember(memberID=1, alarm=rpc_pb2.CORRUPT)]
    )
    yield rpc_pb2.DowngradeRequest(action=rpc_pb2.DowngradeRequest.CANCEL, version="3.4.0")
    yield rpc_pb2.StatusResponse(
        header=header,
        version="3.5.0",
        dbSize=1 << 40,
        leader=7,
        errors=["x", "y"],
        dbSizeInUse=10,
        isLearner=True,
    )
    yield rpc_pb2.MemberListRequest(linearizable=True)
    yield rpc_pb2.AuthUserAddRequest(
        name="u", hashedPassword="$2a$", options=auth_pb2.UserAddOptions(no_password=True)
    )
    yield rpc_pb2.AuthRoleGetResponse(
        header=header,
        perm=[
            auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")
        ],
    )


@pytest.mark.parametrize("message", list(_roundtrip_samples()), ids=lambda m: m.DESCRIPTOR.name)
def test_witness_parses_our_bytes(message):
    module = {"etcdserverpb": witness_rpc, "mvccpb": witness_kv, "authpb": witness_auth}[
        message.DESCRIPTOR.file.package
    ]
    data = message.SerializeToString(deterministic=True)

    parsed = getattr(module, message.DESCRIPTOR.name).FromString(data)

    # Same content: the witness re-serializes to identical bytes and sees the same text form.
    assert parsed.SerializeToString(deterministic=True) == data
    assert str(parsed) == str(message)
    # And back: our class reads the witness's bytes to an equal message.
    assert type(message).FromString(parsed.SerializeToString()) == message
