"""kill -9 in the middle of concurrent writes, many times, on one data dir.

Each round starts writers, SIGKILLs the server at a random moment, restarts it
on the same data dir and checks the store against what the clients saw (see
`workload.History.verify`): acknowledged writes survive at their revision,
unacknowledged ones are whole or absent, revisions have no gaps, and the next
write continues right after the recovered revision. Some rounds also leave a
compaction running in the background when the kill comes.

A failure names its seed; rerun it with KUBEKV_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import kubekv_process

from .rounds import kill_rounds, seed_from_env
from .workload import RPC_TIMEOUT, History


def crash_rounds(tmp_path, rounds: int, seed: int, writers: int = 6,
                 max_run: float = 0.8, budget: float = 60.0) -> History:
    """Write, SIGKILL, restart, verify (tests/crash/rounds.py)."""
    return kill_rounds(kubekv_process(tmp_path), History(writers), seed, rounds,
                       max_run=max_run, budget=budget, compact_chance=0.5,
                       label=b"after round")


def test_kill9_during_concurrent_writes(tmp_path):
    history = crash_rounds(tmp_path, rounds=9, seed=seed_from_env(), budget=50)
    assert len(history.rounds) >= 5, history.rounds
    assert sum(r["acked"] for r in history.rounds) > 100, history.rounds
    assert any(r["unknown"] for r in history.rounds), "no round killed a request in flight"


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_kill9_soak(tmp_path):
    history = crash_rounds(tmp_path, rounds=150, seed=seed_from_env(), writers=12,
                           max_run=2.0, budget=1500)
    assert len(history.rounds) == 150


def spawn_unready(proc) -> None:
    """Start the server process without waiting for it to serve (to kill it while starting)."""
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(proc.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=proc.env,
                                     cwd=str(proc.data_dir.parent))


def test_kill9_while_bootstrapping_and_recovering(tmp_path):
    """Kills during the very first start (bootstrap) and during later restarts (recovery)."""
    seed = seed_from_env()
    rng = random.Random(seed)
    proc = kubekv_process(tmp_path)
    history = History(writers=4)
    try:
        for _ in range(3):  # the first start writes the identity and bootstrap entries
            spawn_unready(proc)
            time.sleep(rng.uniform(0.1, 0.7))
            proc.kill()
        proc.start()
        member = proc.cluster.MemberList(pb.MemberListRequest()).members
        stop = threading.Event()
        ws = history.start_writers(proc.endpoint, rng.randrange(1 << 30), stop)
        time.sleep(0.5)
        proc.kill()
        stop.set()
        for w in ws:
            w.join(RPC_TIMEOUT + 5)
        for _ in range(3):  # recovery replays the log tail and opens a new term
            spawn_unready(proc)
            time.sleep(rng.uniform(0.1, 0.7))
            proc.kill()
        proc.start()
        history.verify(proc.kv, ws, proc.maintenance)
        history.probe(proc.kv, b"after startup kills")
        assert proc.cluster.MemberList(pb.MemberListRequest()).members == member
    except Exception as exc:
        raise AssertionError(f"seed={seed}: {exc}\n--- server log tail ---\n"
                             f"{proc.log_tail(30)}") from exc
    finally:
        proc.stop()
