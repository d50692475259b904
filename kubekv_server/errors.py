"""etcd's client-visible errors: each a gRPC status code with etcd's exact message.

Clients (clientv3, etcdctl, python-etcd3) recognise errors by their message
text, so these strings are part of the API. This is kubekv's counterpart of
etcd's rpctypes package: every error a client can see is defined here, once.
"""

from __future__ import annotations

import grpc


class EtcdError(Exception):
    """An error returned to a client as a gRPC status with etcd's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


EMPTY_KEY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"
)
DUPLICATE_KEY = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
)
COMPACTED = EtcdError(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
)
FUTURE_REV = EtcdError(
    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
)
NO_SPACE = EtcdError(
    grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"
)
LEASE_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = EtcdError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
WATCH_CANCELED = EtcdError(grpc.StatusCode.CANCELLED, "etcdserver: watch canceled")
MEMBER_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXISTS = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"
)
MEMBER_NOT_ENOUGH_STARTED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
MEMBER_BAD_URLS = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"
)
MEMBER_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"
)
LEARNER_NOT_READY = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
TOO_MANY_LEARNERS = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"
)
REQUEST_TOO_LARGE = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
REQUEST_TOO_MANY_REQUESTS = EtcdError(
    grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"
)
ROOT_USER_NOT_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist"
)
ROOT_ROLE_NOT_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not have root role"
)
USER_ALREADY_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name already exists"
)
USER_EMPTY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name already exists"
)
ROLE_NOT_FOUND = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT,
    "etcdserver: authentication failed, invalid user ID or password",
)
PERMISSION_DENIED = EtcdError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"
)
PERMISSION_NOT_GRANTED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
AUTH_NOT_ENABLED = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"
)
INVALID_AUTH_TOKEN = EtcdError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management"
)
AUTH_OLD_REVISION = EtcdError(
    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"
)
NO_LEADER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
LEADER_CHANGED = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
NOT_CAPABLE = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: not capable")
STOPPED = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL = EtcdError(
    grpc.StatusCode.UNAVAILABLE,
    "etcdserver: request timed out, possibly due to previous leader failure",
)
TIMEOUT_DUE_TO_CONNECTION_LOST = EtcdError(
    grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"
)
TIMEOUT_WAIT_APPLIED_INDEX = EtcdError(
    grpc.StatusCode.UNAVAILABLE,
    "etcdserver: request timed out, waiting for the applied index took too long",
)
UNHEALTHY = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: unhealthy cluster")
CORRUPT = EtcdError(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
BAD_LEADER_TRANSFEREE = EtcdError(
    grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee"
)
# Not in etcd's rpctypes table, but returned by etcd 3.5 servers all the same.
NOT_SUPPORTED_FOR_LEARNER = EtcdError(
    grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner"
)
CLUSTER_VERSION_UNAVAILABLE = EtcdError(
    grpc.StatusCode.UNAVAILABLE, "etcdserver: cluster version not found during downgrade"
)
# clientv3/concurrency and v3election errors: plain Go errors, so gRPC code Unknown.
ELECTION_NOT_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: not leader")
ELECTION_NO_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: no leader")
MISSING_LEADER_KEY = EtcdError(grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
TIMEOUT_LEADER_TRANSFER = EtcdError(
    grpc.StatusCode.UNKNOWN, "etcdserver: request timed out, leader transfer took too long"
)
