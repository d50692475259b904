"""Turning kubekv's errors into gRPC statuses with etcd's codes and messages."""

from __future__ import annotations

import functools
import logging

import grpc

from .. import errors
from ..errors import EtcdError

log = logging.getLogger("kubekv.api")


def etcd_errors(handler):
    """Wrap a unary grpc.aio handler: EtcdError → its status; anything else → Unknown, logged."""

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except EtcdError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("event=handler_failed method=%s", handler.__name__)
            await context.abort(grpc.StatusCode.UNKNOWN, f"etcdserver: {exc}")

    return wrapper


__all__ = ["etcd_errors", "errors"]
