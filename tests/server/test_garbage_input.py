"""Garbage on the client port (random bytes, broken HTTP/2 frames, corrupt protobuf)
never crashes the server or loses a write: it answers with a protocol error or a gRPC
status and keeps serving everyone else."""

from __future__ import annotations

import random
import socket

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_testing import hostile


def _send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(data)
            s.settimeout(0.2)
            s.recv(65536)
        except OSError:
            pass


def test_random_bytes_and_broken_frames_leave_the_server_serving(kubekv):
    kubekv.kv.Put(pb.PutRequest(key=b"before", value=b"1"))
    rng = random.Random(7)
    for i in range(150):
        junk = rng.randbytes(rng.randint(1, 3000))
        if i % 3 == 0:
            data = junk  # not even HTTP
        elif i % 3 == 1:
            data = hostile.PREFACE + junk  # HTTP/2 preface, then garbage frames
        else:  # a SETTINGS frame, then a HEADERS frame with a random header block
            block = rng.randbytes(rng.randint(0, 300))
            data = hostile.PREFACE + hostile.settings() + hostile.frame(
                hostile.HEADERS, hostile.END_HEADERS | hostile.END_STREAM, 1, block)
        _send(kubekv.port, data)
    raw = kubekv.channel.unary_unary("/etcdserverpb.KV/Range")
    try:
        raw(b"\xff\xff\xff", timeout=5)
        raise AssertionError("a corrupt message was accepted")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INTERNAL
        assert exc.details().startswith("grpc: error unmarshalling request")
    kubekv.kv.Put(pb.PutRequest(key=b"after", value=b"2"))
    got = kubekv.kv.Range(pb.RangeRequest(key=b"a", range_end=b"c"))
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"after", b"2"), (b"before", b"1")]
    assert "Traceback" not in kubekv.log_path.read_text()
