"""A watch client that stops reading (a stalled watcher), and /proc memory readings.

Used by tests/watch/test_stalled_watcher_memory.py and bench/watch_memory.py. The
client is a raw HTTP/2 connection (the `h2` library over a plain socket) so that it
controls exactly what the server sees: after the watch is created it neither reads
its socket nor sends WINDOW_UPDATE until `resume`.
"""

from __future__ import annotations

import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

from etcdproto.etcdserverpb import rpc_pb2 as pb

WATCH_PATH = b"/etcdserverpb.Watch/Watch"
# Every wait of the client is bounded: a server that stops answering fails the run.
CREATE_TIMEOUT = 10.0
RESUME_TIMEOUT = 30.0
# Memory is read once VmRSS changes by less than SETTLE_DELTA over SETTLE_STEP
# seconds, or after SETTLE_MAX seconds.
SETTLE_MAX = 10.0
SETTLE_STEP = 0.5
SETTLE_DELTA = 1 << 20
# h2's largest window: the client never throttles the server by flow control, so
# the only brake on the server is the TCP socket filling up (a client that stopped
# reading altogether). A window of 65535 gives the other stall: the server's
# stream window runs out after 64 KiB.
MAX_WINDOW = 2**31 - 1
_LEN = struct.Struct(">I")

# ------------------------------------------------------------------ /proc


def memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def settled(pid: int) -> dict[str, int]:
    """Memory once VmRSS stops moving (bounded: SETTLE_MAX seconds)."""
    last = memory(pid)
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        time.sleep(SETTLE_STEP)
        cur = memory(pid)
        if abs(cur["VmRSS"] - last["VmRSS"]) < SETTLE_DELTA:
            return cur
        last = cur
    return last


# ------------------------------------------------------------------ the stalled watcher


class StalledWatcher:
    """A raw HTTP/2 gRPC client with one Watch stream; reads only when told to."""

    def __init__(self, endpoint: str, window: int) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=CREATE_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.initiate_connection()
        if window > 65535:
            self.conn.increment_flow_control_window(MAX_WINDOW - 65535)
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", WATCH_PATH),
            (b":authority", endpoint.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
        self._buf = b""
        self.responses: list[pb.WatchResponse] = []
        self.ended = False

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def create(self, key: bytes, end: bytes, start_rev: int) -> int:
        """Send the create request and read until its response; the watch id."""
        req = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key, range_end=end, start_revision=start_rev)).SerializeToString()
        self.conn.send_data(self.sid, b"\x00" + _LEN.pack(len(req)) + req)
        self._flush()
        deadline = time.monotonic() + CREATE_TIMEOUT
        while not self.responses:
            self._read_once(deadline)
        resp = self.responses.pop(0)
        if not resp.created or resp.canceled:
            raise RuntimeError(f"watch not created: {resp}")
        return resp.watch_id

    def _read_once(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("watch stream: no data before the deadline")
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        if not data:
            raise ConnectionError("server closed the connection")
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id == self.sid:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                self._messages(ev.data)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                self.ended = True
        self._flush()

    def _messages(self, data: bytes) -> None:
        buf = self._buf + data
        while len(buf) >= 5:
            n = _LEN.unpack_from(buf, 1)[0]
            if len(buf) < 5 + n:
                break
            self.responses.append(pb.WatchResponse.FromString(buf[5:5 + n]))
            buf = buf[5 + n:]
        self._buf = buf

    def resume(self, first_rev: int, count: int) -> dict:
        """Read until `count` events arrived; check they are revisions first_rev.. in order."""
        deadline = time.monotonic() + RESUME_TIMEOUT
        t0 = time.monotonic()
        expect = first_rev
        got = 0
        responses = 0
        problems: list[str] = []
        while got < count and not self.ended:
            try:
                self._read_once(deadline)
            except TimeoutError:
                problems.append(f"timed out after {got} of {count} events")
                break
            for resp in self.responses:
                responses += 1
                if resp.canceled:
                    problems.append(f"canceled: {resp.cancel_reason!r} "
                                    f"compact_revision={resp.compact_revision}")
                for ev in resp.events:
                    if ev.kv.mod_revision != expect and len(problems) < 10:
                        problems.append(f"event rev {ev.kv.mod_revision}, expected {expect}")
                    expect = ev.kv.mod_revision + 1
                    got += 1
            self.responses.clear()
        return {"events": got, "responses": responses, "in_order": not problems,
                "problems": problems, "seconds": round(time.monotonic() - t0, 3)}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
