"""In-memory pairing of kubekv's HTTP/2 state machine with the `h2` library as the client.

`h2` is the oracle for correct framing: what our machine sends must parse in h2
without errors, and h2's well-formed traffic must parse in ours. Raw frames (from
`kubekv_server.rpc.frames`) stand in for the violations h2 would never produce.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import hpack

from kubekv_server.rpc import frames as f
from kubekv_server.rpc.http2 import ServerConnection

from .fake_transport import FakeTransport

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"),
           (":authority", "localhost"), ("content-type", "application/grpc"),
           ("te", "trailers")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Pair:
    """An h2 client and our server machine, connected by explicit exchanges."""

    def __init__(self, max_streams: int = 1000, h2_settings: dict | None = None) -> None:
        self.clock = Clock()
        self.server = ServerConnection(max_streams, clock=self.clock)
        self.server.initiate()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if h2_settings:
            self.client.update_settings(h2_settings)
        self.server_events: list = []
        self.client_events: list = []
        self.exchange()

    def exchange(self, max_frames: int = 10_000) -> list:
        """Client bytes to the server, server events collected, server bytes to the client.
        Returns the server events of this exchange."""
        self.server.receive_data(self.client.data_to_send())
        events = []
        while True:
            batch = self.server.next_events(max_frames)
            events += batch
            if not batch or not self.server.has_complete_frame():
                break
        self.server_events += events
        self.client_events += self.client.receive_data(self.server.data_to_send())
        return events

    def raw(self, data: bytes) -> tuple[list, list]:
        """Send raw bytes to the server; (server events, frames it answered with)."""
        self.server.receive_data(data)
        events = self.server.next_events(10_000)
        return events, parse_frames(self.server.data_to_send())

    def request(self, end_stream: bool = True, headers=REQUEST) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=end_stream)
        return sid


def open_grpc_call(conn, path: str) -> tuple[FakeTransport, h2.connection.H2Connection, int]:
    """An h2 client over a fake socket to `conn` (an `Http2Connection`), with a gRPC call
    on `path` opened and its headers handed to `conn`: (transport, client, stream id).
    The caller runs the loop's passes and feeds the client what the server wrote."""
    transport = FakeTransport()
    conn.connection_made(transport)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                              (":authority", "x"), ("content-type", "application/grpc")])
    conn.data_received(client.data_to_send())
    return transport, client, sid


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame in `data`."""
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = struct.unpack_from(">I", data, pos + 5)[0] & 0x7FFFFFFF
        out.append((ftype, flags, sid, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


def goaway_code(frames: list) -> int | None:
    for ftype, _, _, payload in frames:
        if ftype == f.GOAWAY:
            return struct.unpack_from(">I", payload, 4)[0]
    return None


def rst_codes(frames: list) -> dict[int, int]:
    return {sid: struct.unpack(">I", payload)[0]
            for ftype, _, sid, payload in frames if ftype == f.RST_STREAM}


def encode_headers(headers, encoder: hpack.Encoder | None = None) -> bytes:
    return (encoder or hpack.Encoder()).encode(headers)


def raw_server() -> tuple[ServerConnection, Clock]:
    """A server machine that has seen a valid preface and an empty SETTINGS."""
    clock = Clock()
    server = ServerConnection(1000, clock=clock)
    server.initiate()
    server.receive_data(f.PREFACE + f.settings({}))
    assert server.next_events() == []
    server.data_to_send()
    server.socket_drained()
    return server, clock
