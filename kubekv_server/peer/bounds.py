"""Bounds on what anything reaching the peer port can make a member hold.

The limits the receiver and the peer server apply (each with its reason), the grpc.aio
options that carry them to a grpc.aio peer server (tests stand one up as an older
member would), and the rate-limited log every breach is told in: a hostile
peer can break a bound thousands of times a second, so each peer address and
violation gets one line per interval, never a traceback.
"""

from __future__ import annotations

import logging

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_server.log_limit import RateLimitedLog

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_SNAPSHOT_BYTES",
    "PEER_MAX_CONCURRENT_RPCS",
    "peer_server_options",
    "violations",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # gRPC's hard limit, both directions; bigger is dropped
# Messages in one MessageBatch: a sender's queue never holds more (max_queue_messages),
# and it is etcd's receive buffer (rafthttp recvBufSize); more is a hostile batch.
MAX_BATCH_MESSAGES = 4096
# Bytes of one received snapshot file: twice etcd's largest suggested backend (8 GiB);
# etcd's own 1 TB (rafthttp snapshotLimitByte) bounds no disk. Members pass 2x a bigger quota.
MAX_SNAPSHOT_BYTES = 16 << 30
# Longest wait for the next snapshot chunk: a sender writes each within write_timeout
# (5 s), so 30 s of silence means a dead or hostile sender holding a slot.
SNAPSHOT_CHUNK_TIMEOUT = 30.0
# Longest whole snapshot receive: etcd's peer http.Server ReadTimeout (5 minutes), which
# covers a snapshot POST body, so a trickling sender cannot hold a slot for ever.
SNAPSHOT_RECEIVE_TIMEOUT = 300.0
# Snapshots received at once: one from the leader, one from a deposed leader's transfer
# still in flight; every further one would only fill the disk.
MAX_SNAPSHOT_RECEIVES = 2
# Calls in flight on the whole peer server (more get RESOURCE_EXHAUSTED before they
# start): each member holds ~2 streams, plus forwarded lease calls and hash checks; this
# also bounds the lease executor's queue.
PEER_MAX_CONCURRENT_RPCS = 1024
# HTTP/2 streams per peer connection: Go x/net/http2's default, which etcd's peer
# server (net/http) uses.
PEER_MAX_STREAMS_PER_CONNECTION = 250
# Longest text of a peer's value echoed into a log line.
MAX_LOGGED_CHARS = 64
# The message types a peer sends on a stream: local ones (MsgHup, MsgBeat, MsgUnreachable,
# MsgSnapStatus, MsgCheckQuorum) never cross the network, and MsgSnap only comes through
# SendSnapshot, whose receiver alone decides where its file is (Snapshot.data names a path).
PEER_MESSAGE_TYPES = frozenset({
    pb.MsgProp, pb.MsgApp, pb.MsgAppResp, pb.MsgVote, pb.MsgVoteResp, pb.MsgHeartbeat,
    pb.MsgHeartbeatResp, pb.MsgTransferLeader, pb.MsgTimeoutNow, pb.MsgReadIndex,
    pb.MsgReadIndexResp, pb.MsgPreVote, pb.MsgPreVoteResp,
})

# One line per peer address and violation per minute (a hostile peer can make thousands).
# Read as `bounds.violations` at each use, so a test can swap in a fresh one.
violations = RateLimitedLog(log)


def peer_server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple]:
    """grpc.aio options for a peer server (kubekv's own is rpc/peer_server.py): message
    limits matching the transport's, no port sharing.

    SO_REUSEPORT is off so that a second process on the same peer port fails to bind
    instead of silently taking half of the connections.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", PEER_MAX_STREAMS_PER_CONNECTION),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
    ]
