"""The crash loop both crash suites run: write, SIGKILL, (cut the power), restart, verify.

`kill_rounds` repeats it on one server process; `after_kill` is what happens between the
kill and the restart (nothing for kill -9, a power cut for tests/crash/test_power_loss.py).
After each restart every acknowledged write must be there (History.verify), a compaction
acknowledged earlier must still answer "compacted", and the store must take writes again.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb

from .workload import PREFIX, RPC_TIMEOUT, History, Writer

COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def seed_from_env() -> int:
    """KUBEKV_CRASH_SEED replays a failed run; otherwise a fresh random seed."""
    return int(os.environ.get("KUBEKV_CRASH_SEED") or random.randrange(1 << 32))


def join_writers(ws: list[Writer]) -> None:
    for w in ws:
        w.join(RPC_TIMEOUT + 5)
        assert not w.is_alive(), f"writer {w.writer} hung after the kill"


def kill_rounds(proc, history: History, seed: int, rounds: int, *, max_run: float,
                budget: float, compact_chance: float, label: bytes,
                after_kill: Callable[[random.Random], None] | None = None,
                context: Callable[[], str] = str) -> History:
    """`rounds` crash rounds of `proc` (started here, stopped at the end) or until
    `budget` seconds; a failure names the seed, the round and `context()`."""
    rng = random.Random(seed)
    deadline = time.monotonic() + budget
    compacted = 0
    rnd = 0
    try:
        proc.start()
        for rnd in range(rounds):
            if time.monotonic() > deadline:
                break
            stop = threading.Event()
            ws = history.start_writers(proc.endpoint, rng.randrange(1 << 30), stop)
            # mostly mid-stream; sometimes right after the writers start
            time.sleep(rng.uniform(0.0, 0.05) if rng.random() < 0.2 else
                       rng.uniform(0.1, max_run))
            proc.kill()
            stop.set()
            join_writers(ws)
            if after_kill is not None:
                after_kill(rng)
            proc.start()
            kv = proc.kv
            history.verify(kv, ws, proc.maintenance)
            if compacted:
                with pytest.raises(grpc.RpcError) as err:
                    kv.Range(pb.RangeRequest(key=PREFIX, revision=compacted - 1))
                assert err.value.details() == COMPACTED, "an acknowledged compaction was lost"
            history.probe(kv, label + b" %d" % rnd)
            if rng.random() < compact_chance:  # its physical part runs during the next round
                compacted = history.revision
                kv.Compact(pb.CompactionRequest(revision=compacted), timeout=RPC_TIMEOUT)
    except Exception as exc:  # name the seed whatever failed (a check, a restart, an RPC)
        raise AssertionError(f"seed={seed} round={rnd}{context()}: {exc}\n"
                             f"--- server log tail ---\n{proc.log_tail(30)}") from exc
    finally:
        proc.stop()
    return history
