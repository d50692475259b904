"""`kubekv gateway start`: etcd's L4 gateway, a TCP proxy in front of client endpoints.

Each accepted connection is piped to one endpoint, tried in turn from where the last
connection went; an endpoint that refuses is skipped until `--retry-delay` has passed
(etcd's tcpproxy). The proxy does not parse what it forwards.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

log = logging.getLogger("kubekv.gateway")

USAGE = """Usage:
  kubekv gateway start [flags]

Flags:
      --endpoints strings        comma separated etcd cluster endpoints (default [127.0.0.1:2379])
      --listen-addr string       listen address (default "127.0.0.1:23790")
      --retry-delay duration     duration of delay before retrying failed endpoints (default 1m0s)
"""

DEFAULTS = {"endpoints": "127.0.0.1:2379", "listen-addr": "127.0.0.1:23790",
            "retry-delay": "1m0s", "discovery-srv": "", "discovery-srv-name": "",
            "insecure-discovery": "false", "trusted-ca-file": ""}


class GatewayFlagError(Exception):
    pass


@dataclass
class GatewayConfig:
    endpoints: list[str]
    listen_addr: str
    retry_delay: float
    extra: dict = field(default_factory=dict)


def parse_gateway_args(argv: list[str]) -> GatewayConfig:
    """etcd's `gateway [flags] start [flags]` (cobra: flags on either side of `start`)."""
    from kubekv_server.config.flags import (
        parse_duration,  # the same Go duration syntax as the server
    )

    values = dict(DEFAULTS)
    rest = [a for a in argv if a != "start"]
    if "start" not in argv:
        raise GatewayFlagError("missing subcommand: kubekv gateway start")
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("-"):
            raise GatewayFlagError(f"unknown command {arg!r} for \"kubekv gateway\"")
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in values:
            raise GatewayFlagError(f"unknown flag: --{name}")
        if not eq:
            if name == "insecure-discovery":
                value = "true"
            else:
                i += 1
                if i >= len(rest):
                    raise GatewayFlagError(f"flag needs an argument: --{name}")
                value = rest[i]
        values[name] = value
        i += 1
    endpoints = [e.strip() for e in values["endpoints"].split(",") if e.strip()]
    endpoints = [e.split("://", 1)[-1] for e in endpoints]
    if not endpoints:
        raise GatewayFlagError("no endpoints found")
    try:
        delay = parse_duration(values["retry-delay"])
    except ValueError as exc:
        raise GatewayFlagError(str(exc)) from None
    return GatewayConfig(endpoints, values["listen-addr"], delay, values)


class TCPProxy:
    """Round-robin over endpoints; a failed one rests for `retry_delay` seconds."""

    def __init__(self, endpoints: list[str], retry_delay: float) -> None:
        self.endpoints = endpoints
        self.retry_delay = retry_delay
        self._down_until = [0.0] * len(endpoints)
        self._next = 0

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        n = len(self.endpoints)
        for _ in range(n):
            i = self._next
            self._next = (self._next + 1) % n
            if self._down_until[i] > time.monotonic():
                continue
            host, _, port = self.endpoints[i].rpartition(":")
            try:
                return await asyncio.open_connection(host.strip("[]"), int(port))
            except (OSError, ValueError) as exc:
                log.warning("event=gateway_endpoint_failed endpoint=%s error=%r",
                            self.endpoints[i], exc)
                self._down_until[i] = time.monotonic() + self.retry_delay
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._dial()
        if upstream is None:
            log.warning("event=gateway_no_endpoint_available")
            writer.close()
            return
        ur, uw = upstream
        await asyncio.gather(_pipe(reader, uw), _pipe(ur, writer))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


async def serve(cfg: GatewayConfig) -> None:
    host, _, port = cfg.listen_addr.rpartition(":")
    proxy = TCPProxy(cfg.endpoints, cfg.retry_delay)
    server = await asyncio.start_server(proxy.handle, host or "127.0.0.1", int(port),
                                        reuse_address=True)
    log.info("ready to proxy client requests endpoints=%s listen=%s",
             ",".join(cfg.endpoints), cfg.listen_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
