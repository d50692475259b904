"""One fake asyncio transport for driving the HTTP/1 and HTTP/2 protocol objects without
sockets: what they wrote, whether they closed or aborted, whether they paused reading,
and a write buffer that can be made to look full."""

from __future__ import annotations

import asyncio


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 4242)) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.buffer_size = 0  # what get_write_buffer_size() says: >0 is a socket not draining
        self.closed_event = asyncio.Event()
        self._peer = peer

    @property
    def reading(self) -> bool:
        return not self.paused

    def get_extra_info(self, name, default=None):
        return {"peername": self._peer}.get(name, default)

    def write(self, data) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def take(self) -> bytes:
        """What was written since the last take()."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def close(self) -> None:
        self.closed = True
        self.closed_event.set()

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return self.buffer_size
