"""Turning kubekv's errors into gRPC statuses with etcd's codes and messages."""

from __future__ import annotations

import functools
import logging

import grpc

from ..errors import EtcdError

log = logging.getLogger("kubekv.api")


def etcd_errors(handler):
    """Wrap a unary handler: EtcdError → its status; anything else → Unknown, logged."""

    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except EtcdError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            if context.code() is not None:  # context.abort() already set the status
                raise
            log.exception("event=handler_failed method=%s", handler.__name__)
            context.abort(grpc.StatusCode.UNKNOWN, f"etcdserver: {exc}")

    return wrapper
