"""etcd's JSON gateway on the client port: `POST /v3/kv/put` with a JSON body, as curl
and HTTP-only clients use it (etcd serves grpc-gateway v1 there).

Each request is decoded from protobuf JSON (proto or lowerCamel field names, int64 as
string or number, bytes in base64), sent as a gRPC call to this server over a private
abstract unix socket (as etcd's gateway dials its own gRPC port), and the answer is
encoded back with proto field names, int64 as strings and default values left out.
Streams (watch, lease keep-alive, observe, snapshot) read the body as a sequence of
JSON objects and answer `{"result": ...}` lines, chunked, as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus

import grpc
from google.protobuf import json_format

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.v3electionpb import v3election_pb2 as epb
from etcdproto.v3lockpb import v3lock_pb2 as lpb
from kubekv_server.http.gateway_json import JSONError, decode_stream
from kubekv_server.rpc.http1 import REASONS

log = logging.getLogger("kubekv.gateway")

PREFIXES = ("/v3", "/v3beta")  # etcd 3.5 (3.4 also served /v3alpha)

UNARY, SERVER_STREAM, BIDI = "unary", "server_stream", "bidi"

_KV = "/etcdserverpb.KV/"
_LEASE = "/etcdserverpb.Lease/"
_CLUSTER = "/etcdserverpb.Cluster/"
_MAINT = "/etcdserverpb.Maintenance/"
_AUTH = "/etcdserverpb.Auth/"

# path under a prefix -> (gRPC method, request class, response class, kind); etcd's
# google.api.http bindings (all POST, body "*")
ROUTES: dict[str, tuple[str, type, type, str]] = {
    "/kv/range": (_KV + "Range", pb.RangeRequest, pb.RangeResponse, UNARY),
    "/kv/put": (_KV + "Put", pb.PutRequest, pb.PutResponse, UNARY),
    "/kv/deleterange": (_KV + "DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse,
                        UNARY),
    "/kv/txn": (_KV + "Txn", pb.TxnRequest, pb.TxnResponse, UNARY),
    "/kv/compaction": (_KV + "Compact", pb.CompactionRequest, pb.CompactionResponse, UNARY),
    "/watch": ("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse, BIDI),
    "/lease/grant": (_LEASE + "LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse,
                     UNARY),
    "/lease/revoke": (_LEASE + "LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse,
                      UNARY),
    "/kv/lease/revoke": (_LEASE + "LeaseRevoke", pb.LeaseRevokeRequest,
                         pb.LeaseRevokeResponse, UNARY),
    "/lease/keepalive": (_LEASE + "LeaseKeepAlive", pb.LeaseKeepAliveRequest,
                         pb.LeaseKeepAliveResponse, BIDI),
    "/lease/timetolive": (_LEASE + "LeaseTimeToLive", pb.LeaseTimeToLiveRequest,
                          pb.LeaseTimeToLiveResponse, UNARY),
    "/kv/lease/timetolive": (_LEASE + "LeaseTimeToLive", pb.LeaseTimeToLiveRequest,
                             pb.LeaseTimeToLiveResponse, UNARY),
    "/lease/leases": (_LEASE + "LeaseLeases", pb.LeaseLeasesRequest, pb.LeaseLeasesResponse,
                      UNARY),
    "/kv/lease/leases": (_LEASE + "LeaseLeases", pb.LeaseLeasesRequest,
                         pb.LeaseLeasesResponse, UNARY),
    "/cluster/member/add": (_CLUSTER + "MemberAdd", pb.MemberAddRequest, pb.MemberAddResponse,
                            UNARY),
    "/cluster/member/remove": (_CLUSTER + "MemberRemove", pb.MemberRemoveRequest,
                               pb.MemberRemoveResponse, UNARY),
    "/cluster/member/update": (_CLUSTER + "MemberUpdate", pb.MemberUpdateRequest,
                               pb.MemberUpdateResponse, UNARY),
    "/cluster/member/list": (_CLUSTER + "MemberList", pb.MemberListRequest,
                             pb.MemberListResponse, UNARY),
    "/cluster/member/promote": (_CLUSTER + "MemberPromote", pb.MemberPromoteRequest,
                                pb.MemberPromoteResponse, UNARY),
    "/maintenance/alarm": (_MAINT + "Alarm", pb.AlarmRequest, pb.AlarmResponse, UNARY),
    "/maintenance/status": (_MAINT + "Status", pb.StatusRequest, pb.StatusResponse, UNARY),
    "/maintenance/defragment": (_MAINT + "Defragment", pb.DefragmentRequest,
                                pb.DefragmentResponse, UNARY),
    "/maintenance/hash": (_MAINT + "Hash", pb.HashRequest, pb.HashResponse, UNARY),
    "/maintenance/hashkv": (_MAINT + "HashKV", pb.HashKVRequest, pb.HashKVResponse, UNARY),
    "/maintenance/snapshot": (_MAINT + "Snapshot", pb.SnapshotRequest, pb.SnapshotResponse,
                              SERVER_STREAM),
    "/maintenance/transfer-leadership": (_MAINT + "MoveLeader", pb.MoveLeaderRequest,
                                         pb.MoveLeaderResponse, UNARY),
    "/auth/enable": (_AUTH + "AuthEnable", pb.AuthEnableRequest, pb.AuthEnableResponse, UNARY),
    "/auth/disable": (_AUTH + "AuthDisable", pb.AuthDisableRequest, pb.AuthDisableResponse,
                      UNARY),
    "/auth/status": (_AUTH + "AuthStatus", pb.AuthStatusRequest, pb.AuthStatusResponse, UNARY),
    "/auth/authenticate": (_AUTH + "Authenticate", pb.AuthenticateRequest,
                           pb.AuthenticateResponse, UNARY),
    "/auth/user/add": (_AUTH + "UserAdd", pb.AuthUserAddRequest, pb.AuthUserAddResponse,
                       UNARY),
    "/auth/user/get": (_AUTH + "UserGet", pb.AuthUserGetRequest, pb.AuthUserGetResponse,
                       UNARY),
    "/auth/user/list": (_AUTH + "UserList", pb.AuthUserListRequest, pb.AuthUserListResponse,
                        UNARY),
    "/auth/user/delete": (_AUTH + "UserDelete", pb.AuthUserDeleteRequest,
                          pb.AuthUserDeleteResponse, UNARY),
    "/auth/user/changepw": (_AUTH + "UserChangePassword", pb.AuthUserChangePasswordRequest,
                            pb.AuthUserChangePasswordResponse, UNARY),
    "/auth/user/grant": (_AUTH + "UserGrantRole", pb.AuthUserGrantRoleRequest,
                         pb.AuthUserGrantRoleResponse, UNARY),
    "/auth/user/revoke": (_AUTH + "UserRevokeRole", pb.AuthUserRevokeRoleRequest,
                          pb.AuthUserRevokeRoleResponse, UNARY),
    "/auth/role/add": (_AUTH + "RoleAdd", pb.AuthRoleAddRequest, pb.AuthRoleAddResponse,
                       UNARY),
    "/auth/role/get": (_AUTH + "RoleGet", pb.AuthRoleGetRequest, pb.AuthRoleGetResponse,
                       UNARY),
    "/auth/role/list": (_AUTH + "RoleList", pb.AuthRoleListRequest, pb.AuthRoleListResponse,
                        UNARY),
    "/auth/role/delete": (_AUTH + "RoleDelete", pb.AuthRoleDeleteRequest,
                          pb.AuthRoleDeleteResponse, UNARY),
    "/auth/role/grant": (_AUTH + "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest,
                         pb.AuthRoleGrantPermissionResponse, UNARY),
    "/auth/role/revoke": (_AUTH + "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest,
                          pb.AuthRoleRevokePermissionResponse, UNARY),
    "/lock/lock": ("/v3lockpb.Lock/Lock", lpb.LockRequest, lpb.LockResponse, UNARY),
    "/lock/unlock": ("/v3lockpb.Lock/Unlock", lpb.UnlockRequest, lpb.UnlockResponse, UNARY),
    "/election/campaign": ("/v3electionpb.Election/Campaign", epb.CampaignRequest,
                           epb.CampaignResponse, UNARY),
    "/election/proclaim": ("/v3electionpb.Election/Proclaim", epb.ProclaimRequest,
                           epb.ProclaimResponse, UNARY),
    "/election/leader": ("/v3electionpb.Election/Leader", epb.LeaderRequest,
                         epb.LeaderResponse, UNARY),
    "/election/observe": ("/v3electionpb.Election/Observe", epb.LeaderRequest,
                          epb.LeaderResponse, SERVER_STREAM),
    "/election/resign": ("/v3electionpb.Election/Resign", epb.ResignRequest,
                         epb.ResignResponse, UNARY),
}

# grpc-gateway v1.16's HTTPStatusFromCode (etcd 3.5; 3.4's v1.9 answered 412 for
# FAILED_PRECONDITION), by gRPC status number
_CODE = grpc.StatusCode
HTTP_STATUS = {code.value[0]: status for code, status in {
    _CODE.OK: HTTPStatus.OK,
    _CODE.CANCELLED: HTTPStatus.REQUEST_TIMEOUT,
    _CODE.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    _CODE.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    _CODE.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    _CODE.NOT_FOUND: HTTPStatus.NOT_FOUND,
    _CODE.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    _CODE.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    _CODE.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    _CODE.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    _CODE.ABORTED: HTTPStatus.CONFLICT,
    _CODE.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    _CODE.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    _CODE.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    _CODE.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    _CODE.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    _CODE.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}.items()}

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# what etcd's gateway adds to every answer (its CORS wrapper), and to answers that
# came from the gRPC server
CORS_HEADERS = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
]
GRPC_HEADERS = [("Grpc-Metadata-Content-Type", "application/grpc")]


def to_json(msg) -> bytes:
    """grpc-gateway's JSONPb{OrigName: true}: proto names, int64 as strings, no defaults."""
    return json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True),
                      separators=(",", ":")).encode()


def error_body(code: int, message: str) -> bytes:
    """grpc-gateway v1.16's error object (etcd 3.5; 3.4 put "message" before "code")."""
    return json.dumps({"error": message, "code": code, "message": message},
                      separators=(",", ":")).encode()


def _error(code: int, message: str):
    status = HTTP_STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return status, JSON, error_body(code, message), CORS_HEADERS


def stream_error(code: int, message: str) -> bytes:
    """grpc-gateway's error object inside a stream (after the response has begun): its
    last chunk, written without the newline that follows each result."""
    status = HTTP_STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return json.dumps({"error": {"grpc_code": code, "http_code": status, "message": message,
                                 "http_status": REASONS.get(status, "")}},
                      separators=(",", ":")).encode()


# What etcd 3.5's gateway writes to every open stream when the member stops (SIGTERM):
# its gRPC client to the member's own port reads EOF. Measured against etcd 3.5.1.
SHUTDOWN_CODE = 14  # Unavailable
SHUTDOWN_MESSAGE = "error reading from server: EOF"
# Seconds a stopping member waits for its open gateway streams to write that last chunk
# and the chunked terminator before the connections are closed anyway (a client that
# reads nothing cannot hold the shutdown up).
SHUTDOWN_FLUSH = 1.0


def metadata(headers: dict) -> list[tuple[str, str]]:
    """gRPC metadata from HTTP headers: the Authorization header carries the token."""
    md = []
    token = headers.get("authorization")
    if token:
        md.append(("token", token))
    return md


class Gateway:
    """Answers gateway requests through a gRPC channel to this server."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._streams: set = set()  # the gRPC calls behind open streamed answers
        self._closing = False
        self._drained = asyncio.Event()

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ])
        return self._channel

    async def end_streams(self) -> None:
        """A stopping member ends every open stream as etcd's does: the error object
        (Unavailable, "error reading from server: EOF"), then the chunked terminator;
        waits (at most SHUTDOWN_FLUSH) for them to be written."""
        self._closing = True
        if not self._streams:
            return
        self._drained.clear()
        for call in list(self._streams):
            call.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained.wait(), SHUTDOWN_FLUSH)

    async def close(self) -> None:
        await self.end_streams()
        if self._channel is not None:
            await self._channel.close()

    async def handle(self, method: str, path: str, headers: dict, body: bytes):
        """(status, content type, body bytes or an async iterator of chunks, headers),
        or None for a path outside the gateway."""
        prefix = next((p for p in PREFIXES if path == p or path.startswith(p + "/")), None)
        if prefix is None:
            return None
        if path == prefix:  # Go's ServeMux: the subtree's canonical path
            return HTTPStatus.MOVED_PERMANENTLY, None, b"", CORS_HEADERS + [
                ("Location", prefix + "/")]
        if method == "OPTIONS":  # a CORS preflight
            return HTTPStatus.OK, None, b"", CORS_HEADERS
        found = ROUTES.get(path[len(prefix):])
        if found is None:
            return HTTPStatus.NOT_FOUND, TEXT, b"Not Found\n", CORS_HEADERS + [
                ("X-Content-Type-Options", "nosniff")]
        grpc_path, req_cls, resp_cls, kind = found
        if method != "POST":
            return HTTPStatus.METHOD_NOT_ALLOWED, TEXT, b"Method Not Allowed\n", CORS_HEADERS + [
                ("X-Content-Type-Options", "nosniff")]
        unreadable = getattr(body, "error", None)  # rpc.http1.MalformedBody: Go's read error
        if unreadable:
            return _error(3, unreadable)
        try:
            requests = decode_stream(body, req_cls, None if kind == BIDI else 1)
        except JSONError as exc:
            return _error(3, str(exc))
        md = metadata(headers)
        ser, de = req_cls.SerializeToString, resp_cls.FromString
        if kind == UNARY:
            call = self.channel.unary_unary(grpc_path, request_serializer=ser,
                                            response_deserializer=de)
            try:
                resp = await call(requests[0], metadata=md)
            except grpc.aio.AioRpcError as exc:
                return _error(exc.code().value[0], exc.details() or "")
            return HTTPStatus.OK, JSON, to_json(resp), CORS_HEADERS + GRPC_HEADERS
        if kind == SERVER_STREAM:
            call = self.channel.unary_stream(grpc_path, request_serializer=ser,
                                             response_deserializer=de)(requests[0], metadata=md)
        else:
            call = self.channel.stream_stream(grpc_path, request_serializer=ser,
                                              response_deserializer=de)(iter(requests),
                                                                        metadata=md)
        if self._closing:
            call.cancel()
            return _error(SHUTDOWN_CODE, SHUTDOWN_MESSAGE)
        return await self._stream_start(call)

    def _stopped_call(self, call) -> bool:
        """Whether `call` ended because the member is stopping (not because our own task,
        the client's connection, was cancelled)."""
        task = asyncio.current_task()
        return self._closing and call.cancelled() and not (task and task.cancelling())

    def _forget(self, call) -> None:
        self._streams.discard(call)
        if not self._streams:
            self._drained.set()

    async def _stream_start(self, call):
        """Wait for the stream's first message (so that an immediate error is a plain
        error response), then stream `{"result": ...}` lines."""
        self._streams.add(call)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._forget(call)
            return _error(exc.code().value[0], exc.details() or "")
        except asyncio.CancelledError:
            self._forget(call)
            if self._stopped_call(call):
                return _error(SHUTDOWN_CODE, SHUTDOWN_MESSAGE)
            raise
        if first is grpc.aio.EOF:
            self._forget(call)
            return HTTPStatus.OK, JSON, b"", CORS_HEADERS + GRPC_HEADERS

        async def lines() -> AsyncIterator[bytes]:
            try:
                msg = first
                while msg is not grpc.aio.EOF:
                    yield b'{"result":' + to_json(msg) + b"}\n"
                    msg = await call.read()
            except grpc.aio.AioRpcError as exc:
                if self._closing and exc.code() == grpc.StatusCode.CANCELLED:
                    yield stream_error(SHUTDOWN_CODE, SHUTDOWN_MESSAGE)
                else:
                    yield stream_error(exc.code().value[0], exc.details() or "")
            except asyncio.CancelledError:
                if not self._stopped_call(call):
                    raise
                yield stream_error(SHUTDOWN_CODE, SHUTDOWN_MESSAGE)
            finally:
                call.cancel()
                self._forget(call)

        return HTTPStatus.OK, JSON, lines(), CORS_HEADERS + GRPC_HEADERS
