"""ReadRounds: read-index rounds against a scripted Raft (no sockets; short retry times)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from kubekv_server import errors
from kubekv_server.replication.read_rounds import ReadRounds

RETRY = 0.01


def on_a_loop(test):
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(test)
    def run():
        asyncio.run(test())
    return run


class ScriptedRaft:
    """Raft's read_index: each ask() is a future the test answers (or never does)."""

    def __init__(self) -> None:
        self.asked: list[asyncio.Future] = []

    def ask(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.asked.append(fut)
        return fut


def rounds(raft: ScriptedRaft, timeout: float = 1.0) -> ReadRounds:
    return ReadRounds(asyncio.get_running_loop(), raft.ask, retry=RETRY, timeout=timeout)


def reads(n: int) -> list[asyncio.Future]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


@on_a_loop
async def test_reads_arriving_during_a_round_share_the_next():
    raft = ScriptedRaft()
    r = rounds(raft)
    first, second = reads(2), reads(3)
    r.add(first)
    r.add(second)
    assert len(raft.asked) == 1  # one round in flight
    raft.asked[0].set_result(7)
    await asyncio.sleep(0)
    assert [f.result() for f in first] == [7, 7]
    assert len(raft.asked) == 2 and not any(f.done() for f in second)
    raft.asked[1].set_result(9)
    await asyncio.sleep(0)
    assert [f.result() for f in second] == [9, 9, 9]


@on_a_loop
async def test_a_lost_round_is_asked_again_and_late_answers_still_count():
    raft = ScriptedRaft()
    r = rounds(raft)
    waiting = reads(1)
    r.add(waiting)
    await asyncio.sleep(RETRY * 3)
    assert len(raft.asked) >= 2 and r.slow >= 1  # asked again, counted as slow
    raft.asked[0].set_result(4)  # the first round's answer arrives late: still valid
    await asyncio.sleep(0)
    assert waiting[0].result() == 4


@on_a_loop
async def test_reads_time_out_with_etcds_error():
    raft = ScriptedRaft()
    r = rounds(raft, timeout=RETRY * 3)
    waiting = reads(1)
    r.add(waiting)
    with pytest.raises(errors.EtcdError) as exc:
        await asyncio.wait_for(waiting[0], 1)
    assert exc.value is errors.TIMEOUT


@on_a_loop
async def test_a_failed_round_fails_its_reads_with_no_leader():
    raft = ScriptedRaft()
    r = rounds(raft)
    waiting = reads(1)
    r.add(waiting)
    raft.asked[0].set_exception(RuntimeError("dropped"))
    await asyncio.sleep(0)
    assert waiting[0].exception() is errors.NO_LEADER and r.failed == 1


@on_a_loop
async def test_a_round_whose_reads_were_all_given_up_does_not_block_later_reads():
    """A client that gives up cancels its read; Raft may never answer that round (it went
    to a leader that died). The reads queued behind it must still get a round: before
    this was fixed, every linearizable read on the member waited forever."""
    raft = ScriptedRaft()
    r = rounds(raft)
    abandoned = reads(1)
    r.add(abandoned)
    abandoned[0].cancel()
    later = reads(1)
    r.add(later)  # queued behind the round in flight
    await asyncio.sleep(RETRY * 3)
    assert len(raft.asked) >= 2
    raft.asked[-1].set_result(5)
    await asyncio.sleep(0)
    assert later[0].result() == 5
