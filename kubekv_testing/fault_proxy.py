"""A controllable TCP proxy for the peer links of a cluster on 127.0.0.1.

One `Link` per directed pair of members (src → dst): a port on 127.0.0.1 that src
dials instead of dst's peer port, forwarding to dst's real port. A link carries the
TCP connections src opens to dst, so its controls act on what src sends dst (with
a transport where each member opens its own streams to its peers, as etcd's and ours
do, that is src's Raft messages to dst); what dst sends src travels on the link
dst → src.

Controls, callable from any thread (each returns once it is in force):

- `cut(mode="reset")`: existing connections are reset (both sockets closed with RST)
  and new ones are accepted and reset at once, as a refused connection looks to a
  client that retries. `cut(mode="blackhole")` instead stalls: bytes stop flowing
  both ways on existing connections (senders block once the kernel buffers fill,
  as under a real partition) and new connections are held without being forwarded.
- `heal()`: forwarding resumes; connections held by a blackhole deliver what they
  had buffered (as TCP would after retransmission), and new connections go through.
- `delay(seconds)`: every byte src sends is delivered that much later (latency, not
  a throughput limit: chunks are pipelined). The reply direction is not delayed.
- `drop_probability(p)`: TCP cannot lose bytes without breaking the stream, so a
  lossy link is modelled as connections that die: each chunk forwarded (either way)
  resets its connection with probability p, and so is each new connection.

`FaultNetwork` holds the links of a cluster and has the partition helpers:
`isolate(m)`, `split([a, b], [c])`, `asymmetric(a, b)` (a's messages reach b, b's do
not reach a), `bridge([a], b, [c])` (a and c each reach only b), `heal_all()`.

The proxy runs an asyncio loop in a daemon thread; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Hashable, Iterable, Mapping
from typing import Any

HOST = "127.0.0.1"
_CHUNK = 65536
_CONTROL_TIMEOUT = 10.0


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection at once with an RST, dropping anything unsent."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Connection:
    """One proxied connection: the client's socket, the upstream one, their pumps."""

    def __init__(self, link: Link, client: asyncio.StreamWriter) -> None:
        self.link = link
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        _abort(self.client)
        _abort(self.upstream)
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        self.link._conns.discard(self)


class Link:
    """The proxy for one directed link src → dst; see the module docstring."""

    def __init__(self, net: FaultNetwork, src: Hashable, dst: Hashable, target_port: int,
                 seed: int | None = None) -> None:
        self.net = net
        self.src = src
        self.dst = dst
        self.target_port = target_port
        self.port = 0
        self._cut: str | None = None
        self._delay = 0.0
        self._drop = 0.0
        self._rng = random.Random(seed)
        self._conns: set[_Connection] = set()
        self._open: asyncio.Event | None = None  # set unless blackholed
        self._server: asyncio.base_events.Server | None = None
        self.accepted = 0
        self.bytes_forwarded = {"up": 0, "down": 0}

    def __repr__(self) -> str:
        state = self._cut or "open"
        return (f"Link({self.src!r}->{self.dst!r} :{self.port}->:{self.target_port}, {state}, "
                f"delay={self._delay}, drop={self._drop})")

    @property
    def address(self) -> str:
        """host:port that src should dial to reach dst through this link."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def connections(self) -> int:
        """Connections currently open through this link."""
        return len(self._conns)

    @property
    def state(self) -> str:
        return self._cut or "open"

    # -- controls (any thread)

    def cut(self, mode: str = "reset") -> Link:
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode must be 'reset' or 'blackhole', not {mode!r}")
        self.net._call(self._do_cut, mode)
        return self

    def heal(self) -> Link:
        self.net._call(self._do_heal)
        return self

    def delay(self, seconds: float) -> Link:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)
        return self

    def drop_probability(self, p: float) -> Link:
        if not 0.0 <= p <= 1.0:
            raise ValueError("drop probability must be in [0, 1]")
        self._drop = float(p)
        return self

    def reset_connections(self) -> Link:
        """Reset every open connection once, leaving the link open."""
        self.net._call(self._reset_all)
        return self

    # -- on the loop

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._handle, HOST, self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()

    def _reset_all(self) -> None:
        for conn in list(self._conns):
            conn.reset()

    def _do_cut(self, mode: str) -> None:
        self._cut = mode
        if mode == "reset":
            self._open.set()  # nothing is held in reset mode: everything is closed
            self._reset_all()
        else:
            self._open.clear()

    def _do_heal(self) -> None:
        self._cut = None
        self._open.set()

    def _dropped(self) -> bool:
        return self._drop > 0 and self._rng.random() < self._drop

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Connection(self, writer)
        conn.tasks.append(asyncio.current_task())
        self._conns.add(conn)
        try:
            if self._cut == "reset" or self._dropped():
                conn.reset()
                return
            await self._open.wait()
            if conn.closed:
                return
            try:
                up_reader, conn.upstream = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                conn.reset()
                return
            if conn.closed:
                _abort(conn.upstream)
                return
            up = asyncio.ensure_future(self._pump(conn, reader, conn.upstream, "up"))
            down = asyncio.ensure_future(self._pump(conn, up_reader, writer, "down"))
            conn.tasks += [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            if not conn.closed:
                conn.closed = True
                self._conns.discard(conn)
                for w in (writer, conn.upstream):
                    if w is not None:
                        w.close()

    async def _pump(self, conn: _Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, direction: str) -> None:
        """Forward one direction: reads go into a queue, a writer delivers them on time."""
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = asyncio.Event()
        eof = False

        async def deliver() -> None:
            while True:
                while not queue:
                    if eof:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    ready.clear()
                    await ready.wait()
                due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._open.wait()
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded[direction] += len(data)

        delivery = asyncio.ensure_future(deliver())
        conn.tasks.append(delivery)
        try:
            while True:
                await self._open.wait()  # blackholed: stop reading, so senders block
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if self._dropped() and data:
                    conn.reset()
                    return
                if not data:
                    eof = True
                    ready.set()
                    break
                delay = self._delay if direction == "up" else 0.0
                queue.append((time.monotonic() + delay, data))
                ready.set()
            await delivery
        except (ConnectionError, OSError):
            conn.reset()


class FaultNetwork:
    """The links of one cluster, their event loop, and the partition helpers."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._links: dict[tuple[Hashable, Hashable], Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    # -- plumbing

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT)

    def _call(self, fn, *args) -> Any:
        if threading.current_thread() is self._thread:
            return fn(*args)
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # hand any error to the caller's thread
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(_CONTROL_TIMEOUT)

    def close(self) -> None:
        """Stop every link and the loop."""
        if self._closed:
            return
        self._closed = True
        for link in self._links.values():
            self._run(link._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- topology

    def add_link(self, src: Hashable, dst: Hashable, target_port: int,
                 listen_port: int = 0) -> Link:
        """A proxy port for src → dst forwarding to 127.0.0.1:target_port."""
        if (src, dst) in self._links:
            raise ValueError(f"link {src!r} -> {dst!r} exists")
        link = Link(self, src, dst, target_port, seed=self._rng.randrange(2**32))
        link.port = listen_port
        self._run(link._start())
        self._links[(src, dst)] = link
        return link

    def add_cluster(self, peer_ports: Mapping[Hashable, int]) -> FaultNetwork:
        """Links for every ordered pair of members, given each member's real peer port."""
        for src in peer_ports:
            for dst, port in peer_ports.items():
                if src != dst:
                    self.add_link(src, dst, port)
        return self

    def link(self, src: Hashable, dst: Hashable) -> Link:
        return self._links[(src, dst)]

    @property
    def links(self) -> list[Link]:
        return list(self._links.values())

    @property
    def members(self) -> set[Hashable]:
        return {m for pair in self._links for m in pair}

    def dial_map(self, src: Hashable) -> dict[Hashable, str]:
        """For member src: each peer → the host:port src must dial to reach it."""
        return {dst: link.address for (s, dst), link in self._links.items() if s == src}

    # -- partitions

    def heal_all(self) -> None:
        for link in self._links.values():
            link.heal()

    def isolate(self, member: Hashable, mode: str = "reset") -> None:
        """Cut every link to and from member."""
        for (src, dst), link in self._links.items():
            if member in (src, dst):
                link.cut(mode)

    def split(self, *groups: Iterable[Hashable], mode: str = "reset") -> None:
        """Members talk within their group only (links inside groups are healed)."""
        group_of: dict[Hashable, int] = {}
        for i, group in enumerate(groups):
            for m in group:
                if m in group_of:
                    raise ValueError(f"{m!r} is in two groups")
                group_of[m] = i
        missing = self.members - set(group_of)
        if missing:
            raise ValueError(f"members in no group: {sorted(map(repr, missing))}")
        for (src, dst), link in self._links.items():
            if group_of[src] == group_of[dst]:
                link.heal()
            else:
                link.cut(mode)

    def asymmetric(self, a: Hashable, b: Hashable, mode: str = "reset") -> None:
        """a's connections to b work; b's to a are cut (a sends to b, never hears back)."""
        self.link(a, b).heal()
        self.link(b, a).cut(mode)

    def bridge(self, left: Iterable[Hashable], middle: Hashable, right: Iterable[Hashable],
               mode: str = "reset") -> None:
        """left and right cannot reach each other; middle reaches both sides."""
        left, right = set(left), set(right)
        for (src, dst), link in self._links.items():
            if (src in left and dst in right) or (src in right and dst in left):
                link.cut(mode)
            else:
                link.heal()
