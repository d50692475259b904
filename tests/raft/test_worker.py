"""ThreadWorker: calls run in order on one thread and answer on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kubekv_raft.driver.worker import NOT_RUN, ThreadWorker


def test_calls_run_in_order_on_one_thread_and_answer_on_the_loop():
    async def main() -> None:
        w = ThreadWorker("t-worker")
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, str]] = []

        def job(i: int) -> int:
            seen.append((i, threading.current_thread().name))
            return i * 2

        futs = [w.call(loop, job, i) for i in range(50)]
        assert await asyncio.gather(*futs) == [i * 2 for i in range(50)]
        assert [i for i, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"t-worker"}
        with pytest.raises(ZeroDivisionError):
            await w.call(loop, lambda: 1 / 0)
        gate = threading.Event()
        blocked = w.call(loop, gate.wait, 5)
        gave_up = w.call(loop, job, 99)
        gave_up.cancel()  # the caller stopped waiting: the answer must not raise
        gate.set()
        assert await blocked is True
        assert await loop.run_in_executor(w, job, 7) == 14  # an Executor still
        w.shutdown(wait=True)
        with pytest.raises(RuntimeError):
            w.call(loop, job, 1)
        with pytest.raises(RuntimeError):
            w.submit(job, 1)

    asyncio.run(main())


def test_run_if_idle_runs_in_the_callers_thread_only_when_nothing_is_queued_or_running():
    w = ThreadWorker("t-idle")
    try:
        me = threading.current_thread().name
        assert w.run_if_idle(lambda x: (x, threading.current_thread().name), 3) == (3, me)
        gate, running = threading.Event(), threading.Event()

        def hold() -> None:
            running.set()
            gate.wait(5)

        w.post(hold)
        assert running.wait(5)
        assert w.run_if_idle(lambda: "ran") is NOT_RUN  # a call is running
        queued = w.submit(lambda: "queued")
        gate.set()
        assert queued.result(5) == "queued"
        # a call posted while the caller runs one waits for it, then runs on the worker
        order: list[str] = []

        def inline() -> str:
            posted = w.submit(lambda: order.append(threading.current_thread().name))
            assert not posted.done()
            threading.Event().wait(0.05)
            assert not posted.done()  # held behind the caller's call
            order.append("caller")
            return "done"

        assert w.run_if_idle(inline) == "done"
        w.submit(lambda: None).result(5)
        assert order == ["caller", "t-idle"]
        w.shutdown(wait=True)
        assert w.run_if_idle(lambda: "late") is NOT_RUN
    finally:
        w.shutdown(wait=True)
