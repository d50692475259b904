"""The leader's lease-expiry thread (member/lease_leadership.py) outlives a failing round:
a thread that died on one unexpected error would leave every lease unexpired for good."""

from __future__ import annotations

import logging
import threading
import time

from kubekv_server.member.lease_leadership import LeaseLeadership
from kubekv_testing.polling import wait_for


class Leader:
    term = 1

    def is_leader(self) -> bool:
        return True


class Loop:
    def call_soon_threadsafe(self, fn, *args) -> None:  # the loop's leadership look
        pass


class Lessor:
    """Lease 7 has expired; the first look at it fails."""

    def __init__(self) -> None:
        self.looks = 0

    def expired(self) -> list[int]:
        self.looks += 1
        if self.looks == 1:
            raise RuntimeError("a bug in one round")
        return [7]

    def due_checkpoints(self) -> list:
        return []

    def next_deadline(self) -> float:
        return time.monotonic() + 0.01

    def wait_changed(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))


class Proposer:
    def __init__(self) -> None:
        self.revoked: list[int] = []

    def propose_nowait(self, kind: str, request) -> None:
        assert kind == "lease_revoke"
        self.revoked.append(request.ID)


def test_a_failing_expiry_round_is_logged_once_and_the_next_round_revokes(caplog):
    stopping = threading.Event()
    proposer = Proposer()
    leadership = LeaseLeadership(Loop(), Leader(), Lessor(), proposer, lambda: 0, 1.0,
                                 stopping)
    with caplog.at_level(logging.ERROR, logger="kubekv.member"):
        leadership.start()
        try:
            wait_for(lambda: proposer.revoked, 10, "the revocation of lease 7")
        finally:
            stopping.set()
    assert proposer.revoked[0] == 7
    failed = [r for r in caplog.records if "event=lease_expiry_failed" in r.getMessage()]
    assert len(failed) == 1 and "a bug in one round" in failed[0].getMessage()
