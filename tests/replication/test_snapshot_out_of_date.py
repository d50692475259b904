"""A snapshot overtaken by one from the leader is skipped quietly, as etcd does."""

from __future__ import annotations

import asyncio
import logging
import types

from kubekv_raft.core.errors import SnapshotOutOfDateError
from kubekv_server.replication.raft_node import RaftNode


def _node(exc: BaseException) -> types.SimpleNamespace:
    async def snapshot(compact_all: bool) -> None:
        raise exc

    return types.SimpleNamespace(snapshot_due=lambda: True, _snapshotting=False,
                                 _snapshot=snapshot)


def test_an_out_of_date_snapshot_is_an_info_line_not_a_traceback(caplog):
    """etcd's snapshot() returns on raft.ErrSnapOutOfDate: a received snapshot was
    installed while ours was being copied. Any other failure stays an error."""
    caplog.set_level(logging.INFO, logger="kubekv.raft")
    node = _node(SnapshotOutOfDateError("snapshot 6301 not newer"))
    asyncio.run(RaftNode.maybe_snapshot(node))
    assert not node._snapshotting
    assert [(r.levelno, r.exc_info is None) for r in caplog.records] == [(logging.INFO, True)]
    assert "event=snapshot_skipped" in caplog.records[0].getMessage()
    caplog.clear()
    asyncio.run(RaftNode.maybe_snapshot(_node(OSError("disk full"))))
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert caplog.records[0].exc_info is not None
