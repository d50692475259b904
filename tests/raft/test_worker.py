"""ThreadWorker: calls run in order on one thread and answer on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kubekv_raft.driver.worker import ThreadWorker


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
