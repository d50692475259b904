"""The `kubekv` command: parse etcd's flags, start a member, serve until signalled."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from kubekv_server import EXIT_WITH_PARENT_ENV, event_loop
from kubekv_server.config.flags import USAGE, FlagError, parse_args
from kubekv_server.member.versions import SERVER_VERSION

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}


def setup_logging(level: str) -> None:
    """One event per line on stderr, key=value, flushed per line (tools wait for some lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS.get(level, logging.INFO))


def exit_with_parent() -> None:
    """kubekv.embed's members die with the process that started them: PR_SET_PDEATHSIG,
    set here after exec rather than in the parent between fork and exec (Python code
    there aborts now and then in a parent with many threads)."""
    parent = os.environ.pop(EXIT_WITH_PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the request took effect
        os._exit(1)


def gateway_main(argv: list[str]) -> int:
    """`kubekv gateway start`: etcd's TCP gateway (tcp_gateway.py)."""
    from kubekv_server.tcp_gateway import USAGE as GATEWAY_USAGE
    from kubekv_server.tcp_gateway import GatewayFlagError, parse_gateway_args, serve

    if any(a in ("-h", "--help") for a in argv):
        print(GATEWAY_USAGE)
        return 0
    try:
        cfg = parse_gateway_args(argv)
    except GatewayFlagError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print(GATEWAY_USAGE, file=sys.stderr)
        return 2
    setup_logging("info")
    event_loop.run(serve(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    exit_with_parent()
    if argv and argv[0] == "gateway":
        return gateway_main(argv[1:])
    try:
        cfg = parse_args(argv)
    except FlagError as exc:
        print(exc, file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    if cfg.show_help:
        print(USAGE)
        return 0
    if cfg.show_version:
        print(f"kubekv Version: {SERVER_VERSION} (etcd API compatible)")
        return 0
    setup_logging(cfg.log_level)
    if cfg.openssl_ciphers:  # gRPC's peer TLS reads its TLS 1.2 cipher list from here, once
        os.environ["GRPC_SSL_CIPHER_SUITES"] = cfg.openssl_ciphers
    for level, line in cfg.notes:
        logging.getLogger("kubekv.config").log(level, line)
    # Until the server installs its own handlers, a stop signal ends start-up cleanly.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    try:
        from kubekv_server.server import ClientServer  # imported late: --help/--version stay fast

        event_loop.run(ClientServer(cfg).serve_until_signalled())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
