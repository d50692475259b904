"""Errors raised by Raft storage and the Raft core, in one place."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error kubekv_raft raises on purpose."""


class CompactedError(RaftError):
    """The requested index is at or below the compaction point."""


class UnavailableError(RaftError):
    """The requested index is past the end of the log."""


class SnapshotOutOfDateError(RaftError):
    """A snapshot older than the one already held was offered."""


class SnapshotTemporarilyUnavailableError(RaftError):
    """The application cannot produce a snapshot right now; the leader retries later."""


class ProposalDroppedError(RaftError):
    """The proposal was not accepted: no leader known, a transfer in progress, or a full log."""


class StepLocalMsgError(RaftError):
    """A message of a local-only type arrived from the network."""


class StepPeerNotFoundError(RaftError):
    """A response arrived from a peer that is not in the configuration."""
