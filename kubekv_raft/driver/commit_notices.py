"""Commit notices a leader holds back: the empty MsgApps that only tell an up-to-date
follower that the commit index moved.

Raft (etcd's `bcastAppend` after `maybeCommit`) sends one to every follower each time the
commit index moves, and each costs the follower a Ready cycle (read, step, apply, ack)
and the leader the ack's. At one write in flight on three members that is a third of the
followers' work, and it runs just when the leader applies and answers and its client
wakes, on the same two cores. So a leader holds a notice instead: the next message to that
follower carries the commit index anyway (every MsgApp does; a heartbeat does up to the
follower's match; any other message goes right behind the notice, so none overtakes it),
and a notice still held after `delay` is sent, so a follower learns every commit within
`delay` even when writes stop. Sent at once: the notices to a follower that forwarded a
proposal not yet known to it as committed (its client waits for them), to a follower
being probed, and those of a membership change (`filter`'s `hold`).

Holding, dropping or delaying a message is what a network may do to any Raft message, so
safety does not rest on this; it moves only when followers apply (and answer
serializable reads and watches from) a commit, by at most `delay`. Nothing held is
dropped unsent except for a later message that carries its commit, whatever becomes of
the leadership. Pure: time is passed in, and the Runner and the simulator arm the timer.
"""

from __future__ import annotations

from collections.abc import Mapping

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.progress import Progress, ProgressState

__all__ = ["CommitNotices", "NOTICE_DELAY"]

# How long a follower may learn of a commit late when no other message carries it: a
# fraction of etcd's 100 ms heartbeat, well under a watcher's or a reader's notice, and
# longer than one write at a time takes on three members (~1.3 ms here), so a steady
# writer's notices ride on the next append.
NOTICE_DELAY = 0.005

_MSGAPP = pb.MsgApp
_MSGHEARTBEAT = pb.MsgHeartbeat
_REPLICATE = ProgressState.REPLICATE


class CommitNotices:
    """A leader's held commit notices, at most one per follower (the newest)."""

    __slots__ = ("delay", "_held", "_sent_commit", "_proposed")

    def __init__(self, delay: float = NOTICE_DELAY) -> None:
        self.delay = delay
        # follower -> (the newest notice held, when its first unsent commit was held)
        self._held: dict[int, tuple[pb.Message, float]] = {}
        self._sent_commit: dict[int, int] = {}  # the highest commit index sent to each
        self._proposed: dict[int, int] = {}  # the log's end after each one's last proposal

    def __bool__(self) -> bool:
        return bool(self._held)

    def proposed(self, follower: int, last_index: int) -> None:
        """`follower` forwarded proposals, now in the leader's log up to `last_index`."""
        self._proposed[follower] = last_index

    def filter(self, messages: list[pb.Message], progress: Mapping[int, Progress],
               now: float, hold: bool = True) -> list[pb.Message]:
        """The leader's messages to send now: `messages` without the notices it holds.
        `hold` False: none held (a membership change commits: the followers must apply
        it before a leadership hand-off, which may follow at once)."""
        held = self._held
        sent = self._sent_commit
        out = []
        for m in messages:
            t = m.type
            if t == _MSGAPP:
                to = m.to
                if hold and not m.entries:
                    pr = progress.get(to)
                    if pr is not None and pr.state == _REPLICATE \
                            and self._proposed.get(to, 0) <= sent.get(to, 0):
                        h = held.get(to)
                        held[to] = (m, now if h is None else h[1])
                        continue
                held.pop(to, None)  # a MsgApp carries the leader's whole commit index
                if m.commit > sent.get(to, 0):
                    sent[to] = m.commit
            elif t == _MSGHEARTBEAT:
                to = m.to
                h = held.get(to)
                if h is not None and m.commit >= h[0].commit:
                    del held[to]
                if m.commit > sent.get(to, 0):
                    sent[to] = m.commit
            elif held:
                # anything else (a MsgTimeoutNow, a read index's answer) may rely on the
                # commit the notice carries: the notice goes first, in order
                h = held.pop(m.to, None)
                if h is not None:
                    out.append(h[0])
                    if h[0].commit > sent.get(m.to, 0):
                        sent[m.to] = h[0].commit
            out.append(m)
        return out

    def due(self, now: float) -> list[pb.Message]:
        """The held notices that have waited `delay` by `now`, no longer held."""
        held = self._held
        out = [m for m, since in held.values() if since + self.delay <= now]
        for m in out:
            del held[m.to]
            if m.commit > self._sent_commit.get(m.to, 0):
                self._sent_commit[m.to] = m.commit
        return out

    def next_due(self) -> float | None:
        """When the oldest held notice is due, or None if none is held."""
        if not self._held:
            return None
        return min(since for _, since in self._held.values()) + self.delay

    def take_all(self) -> list[pb.Message]:
        """Forget everything (a new term begins); the notices held until now, to send at
        once: they are Raft's messages still, and a leader that stepped down (one that
        removed itself, say) sends nothing later that would carry their commit."""
        out = [m for m, _ in self._held.values()]
        self._held.clear()
        self._sent_commit.clear()
        self._proposed.clear()
        return out
