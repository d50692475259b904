"""kubekv_raft: Raft as a pure, deterministic library plus an asyncio driver.

The core (raft.py, raw_node.py, log*.py, tracker/progress, quorum, read_only,
conf_change) does no I/O and reads no clock; the application persists, sends and
applies what `RawNode.ready()` hands it. See docs/raft.md.
"""
