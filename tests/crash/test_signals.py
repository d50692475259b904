"""Clean shutdown: SIGTERM and SIGINT stop kubekv promptly with exit 0 and lose nothing.

Unlike a kill, a signal lets the server finish: the process must exit 0 within
a few seconds (idle or under load), and after a restart on the same data dir
every acknowledged write is there, requests cut off by the shutdown are whole
or absent, and revisions continue where they stopped.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import kubekv_process

from .workload import RPC_TIMEOUT, History

PROMPT_EXIT_SECONDS = 5.0
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def stop_with(proc, sig: int) -> float:
    """Send sig, wait for the exit; return the seconds it took (asserting exit status 0)."""
    start = time.monotonic()
    code = proc.stop(sig, timeout=PROMPT_EXIT_SECONDS * 3)
    took = time.monotonic() - start
    assert code == 0, f"exit status {code} after {signal.Signals(sig).name}:\n{proc.log_tail()}"
    assert took < PROMPT_EXIT_SECONDS, f"took {took:.1f}s to stop on {signal.Signals(sig).name}"
    return took


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_when_idle_keeps_data(tmp_path, sig):
    proc = kubekv_process(tmp_path)
    try:
        proc.start()
        kv = proc.kv
        for i in range(20):
            kv.Put(pb.PutRequest(key=b"idle/%02d" % i, value=b"v%d" % i))
        kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"idle/a", value=b"pair")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"idle/b", value=b"pair")),
        ]))
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"idle/00"))
        before = kv.Range(pb.RangeRequest(key=b"idle/", range_end=b"idle0"))
        stop_with(proc, sig)
        assert "event=stopped" in proc.log_tail()

        proc.start()
        kv = proc.kv
        after = kv.Range(pb.RangeRequest(key=b"idle/", range_end=b"idle0"))
        assert after.header.revision == before.header.revision
        assert list(after.kvs) == list(before.kvs)
        assert len(after.kvs) == 21
        put = kv.Put(pb.PutRequest(key=b"idle/next", value=b"x"))
        assert put.header.revision == before.header.revision + 1
        old = kv.Range(pb.RangeRequest(key=b"idle/00", revision=2))
        assert [x.value for x in old.kvs] == [b"v0"], "history survives a clean restart"
        stop_with(proc, sig)
    finally:
        proc.stop()


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_under_load_exits_promptly_and_keeps_acknowledged_writes(tmp_path, sig):
    rng = random.Random()
    proc = kubekv_process(tmp_path)
    history = History(writers=6)
    try:
        proc.start()
        for rnd in range(2):
            stop = threading.Event()
            ws = history.start_writers(proc.endpoint, rng.randrange(1 << 30), stop)
            time.sleep(rng.uniform(0.2, 0.6))
            if rnd == 1:  # leave a compaction's physical part running into the shutdown
                proc.kv.Compact(pb.CompactionRequest(revision=history.revision),
                                timeout=RPC_TIMEOUT)
            stop_with(proc, sig)
            stop.set()
            for w in ws:
                w.join(RPC_TIMEOUT + 5)
                assert not w.is_alive(), f"writer {w.writer} hung after the shutdown"
            assert sum(len(w.acked) for w in ws) > 0
            proc.start()
            history.verify(proc.kv, ws, proc.maintenance)
            history.probe(proc.kv, b"after shutdown %d" % rnd)
    finally:
        proc.stop()
