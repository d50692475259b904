"""Compact and request size limits, differentially."""

from __future__ import annotations

import grpc

from tests.differential.framework import (
    Failure,
    call,
    compact,
    delete,
    get,
    prefix_end,
    put,
    txn,
)

MiB = 1 << 20


def test_compact_revisions(differ):
    d, p = differ, differ.prefix
    end = prefix_end(p)
    for i in range(6):
        d.send(put(p + b"k", b"%d" % i))
        d.send(put(p + b"o%d" % i, b"x"))
    d.send(delete(p + b"o1"))
    d.send(compact(d.rev + 1))  # future
    d.send(compact(d.rev + 1000, physical=True))
    d.send(compact(0))  # 0 and negative: at or below the (never set) compact revision
    d.send(compact(-3))
    low = d.rev - 8
    d.send(compact(low))
    d.send(compact(low))  # again: already compacted
    d.send(compact(low - 1, physical=True))
    for rev in (low - 1, low, low + 1):
        d.send(get(p, end, revision=rev))
        d.send(get(p + b"k", revision=rev))
        d.send(txn([], [get(p + b"k", revision=rev)]))
        d.send(txn([], [put(p + b"w", b"1"), get(p + b"k", revision=rev)]))
    d.send(compact(low + 3, physical=True))
    d.send(get(p, end, revision=low + 3))
    d.send(get(p + b"o1", revision=low + 3))
    d.send(compact(d.rev))  # the current revision
    d.send(get(p, end, revision=d.rev))
    d.send(get(p, end))
    d.send(compact(d.rev, physical=True))
    d.send(put(p + b"k", b"after"))
    d.send(get(p + b"k", revision=d.rev - 1))
    d.send(compact(d.rev, physical=True))
    d.send(get(p, end))


def test_oversized_put_under_grpc_limit(differ):
    """1.6 MiB: past --max-request-bytes (1.5 MiB), within gRPC's limit (+512 KiB framing)."""
    d, p = differ, differ.prefix
    big = b"v" * (MiB + MiB * 6 // 10)
    d.send(put(p + b"big", big))
    d.send(txn([], [put(p + b"big", big)]))
    d.send(txn([], [], [put(p + b"big", big)]))  # not taken, still proposed, still too large
    d.send(put(p + b"fits", b"v" * (MiB + MiB // 4)))
    d.send(get(p + b"fits", keys_only=True))
    d.send(txn([], [get(p + b"big")] * 8, [put(p + b"x", big[:MiB])]))


def test_oversized_message_over_grpc_limit(server_pair):
    """2.5 MiB passes neither server's gRPC receive limit (max-request-bytes + 512 KiB):
    both refuse with RESOURCE_EXHAUSTED and the same text, read from the message's
    length prefix before the message itself is buffered."""
    pair, req = server_pair, put(b"test_oversized_message_over_grpc_limit/k", b"v" * (5 * MiB // 2))
    theirs, ours = call(pair.etcd, req), call(pair.kubekv, req)
    assert isinstance(theirs, Failure) and isinstance(ours, Failure), (theirs, ours)
    assert theirs.code == ours.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    size = req.ByteSize()
    limit = 3 * MiB // 2 + MiB // 2
    assert theirs.details == f"grpc: received message larger than max ({size} vs. {limit})"
    assert ours.details == theirs.details
