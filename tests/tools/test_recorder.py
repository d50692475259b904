"""The history recorder, and the workload driver against a real kubekv server."""

from __future__ import annotations

import dataclasses
import threading

import grpc
import pytest

from kubekv_testing.linearizability import Get, GetResult, Put, PutResult, check_kv
from kubekv_testing.polling import wait_for
from kubekv_testing.recorder import Recorder, Workload, run_workload


class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "fake"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_ok_unknown_failed_and_pending():
    rec = Recorder(clock=Clock())
    assert rec.record(1, Put("a", "x"), lambda: 5, PutResult) == PutResult(5)

    def timeout():
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)

    def refused():
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)

    def broken():
        raise ConnectionResetError("gone")

    assert rec.record(2, Put("a", "y"), timeout) is None
    assert rec.record(3, Put("a", "z"), refused) is None
    assert rec.record(4, Put("a", "w"), broken) is None
    pending = rec.begin(5, Get("a"))
    h = rec.history()
    assert rec.counts == {"ok": 1, "unknown": 2, "failed": 1}
    assert [(o.client_id, o.call, o.ret) for o in h] == [
        (1, 1.0, 2.0), (2, 3.0, None), (4, 5.0, None), (5, 6.0, None)]
    assert h[0].output == PutResult(5)
    assert any("DEADLINE_EXCEEDED" in e for e in rec.errors)
    pending.ok(GetResult("x", 5, 5))
    with pytest.raises(RuntimeError):
        pending.ok(GetResult("x", 5, 5))
    assert rec.history()[-1].ret == 7.0
    assert check_kv(rec.history()).ok


def test_thread_safe():
    rec = Recorder()

    def worker(c):
        for i in range(500):
            rec.record(c, Put(f"k{c}", i), lambda i=i: i + 1, PutResult)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = rec.history()
    assert len(h) == 4000 and rec.counts["ok"] == 4000
    for o in h:
        assert o.call <= o.ret


def test_workload_against_kubekv_is_linearizable(kubekv):
    history, rec = run_workload([kubekv.endpoint], clients=4, max_ops=400, duration=20,
                                keys=5, seed=3)
    assert len(history) == 400, rec.errors
    assert rec.counts["unknown"] == 0, rec.errors
    kinds = {type(o.input).__name__ for o in history}
    assert kinds == {"Get", "Put", "Delete", "Cas"}
    assert any(o.output.succeeded for o in history if type(o.input).__name__ == "Cas")
    res = check_kv(history, timeout=20)
    assert res.ok, res.explain()
    # and the checker does judge it: one read of a value that was never written fails it
    i = next(i for i, o in enumerate(history)
             if isinstance(o.output, GetResult) and o.output.value is not None)
    bad = list(history)
    bad[i] = dataclasses.replace(history[i], output=dataclasses.replace(
        history[i].output, value=b"never written"))
    assert not check_kv(bad).ok


def test_workload_across_a_restart_is_linearizable(kubekv):
    """Requests in flight while the server restarts have unknown outcomes; acknowledged
    writes must survive, and the whole history must still check."""
    w = Workload([kubekv.endpoint], clients=4, max_ops=100_000, duration=30, keys=4,
                 seed=5, rpc_timeout=1.0, prefix=b"/restart/")
    w.start()

    def wait_ok(n):
        wait_for(lambda: w.recorder.counts["ok"] >= n, 20,
                 f"{n} acknowledged operations (errors: {w.recorder.errors})")

    try:
        wait_ok(100)
        kubekv.kill()
        kubekv.start()
        wait_ok(w.recorder.counts["ok"] + 100)
    finally:
        w.stop()
    history = w.join(10)
    assert w.recorder.counts["unknown"] > 0, "the kill should leave some outcomes unknown"
    res = check_kv(history, timeout=20)
    assert res.ok, res.explain()
