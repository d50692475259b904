"""Watch through real clients (etcdctl, aetcd), a Kubernetes-style reflector, and a
guarantee checker under concurrent writes, compactions and a slow consumer."""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time

import aetcd
import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import etcd_binary, kubekv_process
from tests.watch.client import WatchStream


class LineReader:
    """Collect a subprocess's stdout lines in a thread; wait for conditions on them."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, pred, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; got {self.lines}"
                self._cond.wait(left)
            return list(self.lines)


def etcdctl_popen(endpoint: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [etcd_binary("etcdctl"), f"--endpoints={endpoint}", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )


def test_etcdctl_watch_prefix_prev_kv_and_rev(shared_kubekv):
    ep = shared_kubekv.endpoint
    kv = shared_kubekv.kv
    first = kv.Put(pb.PutRequest(key=b"ctl/a", value=b"1")).header.revision
    kv.Put(pb.PutRequest(key=b"ctl/a", value=b"2"))
    proc = etcdctl_popen(ep, "watch", "--prefix", "--prev-kv", f"--rev={first}", "ctl/")
    try:
        out = LineReader(proc)
        out.wait(lambda ls: len(ls) >= 5)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"ctl/a"))
        lines = out.wait(lambda ls: len(ls) >= 13)
    finally:
        proc.kill()
        proc.wait()
    # with --prev-kv etcdctl prints the previous pair before the new one
    assert lines == ["PUT", "ctl/a", "1", "PUT", "ctl/a", "1", "ctl/a", "2",
                     "DELETE", "ctl/a", "2", "ctl/a", ""]


def test_etcdctl_watch_interactive(shared_kubekv):
    proc = etcdctl_popen(shared_kubekv.endpoint, "watch", "-i")
    try:
        out = LineReader(proc)
        proc.stdin.write("watch ictl/x\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while len(out.lines) < 3 and time.monotonic() < deadline:
            # the watch may not be registered yet: put until an event shows up
            shared_kubekv.kv.Put(pb.PutRequest(key=b"ictl/x", value=b"v"))
            try:
                out.wait(lambda ls: len(ls) >= 3, timeout=0.5)
            except AssertionError:
                pass
        assert out.lines[:3] == ["PUT", "ictl/x", "v"]
    finally:
        proc.kill()
        proc.wait()


def test_aetcd_watch(shared_kubekv):
    host, port = shared_kubekv.endpoint.split(":")

    async def main():
        async with aetcd.Client(host=host, port=int(port)) as client:
            base = (await client.put(b"ae/0", b"zero")).header.revision
            watch = await client.watch_prefix(b"ae/", start_revision=base, prev_kv=True)
            await client.put(b"ae/1", b"one")
            await client.put(b"ae/0", b"again")
            await client.delete(b"ae/1")
            got = []
            async for ev in watch:
                got.append((str(getattr(ev.kind, "name", ev.kind)), ev.kv.key, ev.kv.value,
                            ev.prev_kv.value if ev.prev_kv and ev.prev_kv.key else None))
                if len(got) == 4:
                    break
            await watch.cancel()
            return got

    got = asyncio.run(asyncio.wait_for(main(), 20))
    assert got == [
        ("PUT", b"ae/0", b"zero", None),
        ("PUT", b"ae/1", b"one", None),
        ("PUT", b"ae/0", b"again", b"zero"),
        ("DELETE", b"ae/1", b"", b"one"),
    ]


# ------------------------------------------------------------ Kubernetes-style reflector


@pytest.fixture(scope="module")
def progress_kubekv(tmp_path_factory):
    proc = kubekv_process(tmp_path_factory.mktemp("progress"),
                          "--experimental-watch-progress-notify-interval", "200ms")
    proc.start()
    yield proc
    proc.stop()


def test_list_then_watch_with_progress_notifications(progress_kubekv):
    """kube-apiserver's reflector: list at R, watch from R+1 with progress_notify; at every
    response the cache must equal a fresh list at the response's revision."""
    kv = progress_kubekv.kv
    pfx, end = b"/registry/pods/", b"/registry/pods0"
    for i in range(20):
        kv.Put(pb.PutRequest(key=pfx + b"p%02d" % i, value=b"init"))
    listing = kv.Range(pb.RangeRequest(key=pfx, range_end=end))
    cache = {x.key: x.value for x in listing.kvs}
    rev = listing.header.revision

    stop = threading.Event()

    def writer():
        rnd = random.Random(7)
        n = 0
        while not stop.is_set() and n < 300:
            k = pfx + b"p%02d" % rnd.randrange(25)
            if rnd.random() < 0.3:
                kv.DeleteRange(pb.DeleteRangeRequest(key=k))
            else:
                kv.Put(pb.PutRequest(key=k, value=b"v%d" % n))
            kv.Put(pb.PutRequest(key=b"/registry/other", value=b"%d" % n))  # not watched
            n += 1

    ws = WatchStream(progress_kubekv.channel)
    t = threading.Thread(target=writer)
    try:
        ws.create(pfx, range_end=end, start_revision=rev + 1, progress_notify=True)
        t.start()
        checked = progress_seen = 0
        seen = 0
        deadline = time.monotonic() + 60
        while progress_seen < 2 and time.monotonic() < deadline:
            rs = ws.wait(lambda rs, n=seen: len(rs) > n)
            for r in rs[seen:]:
                if r.created:
                    continue
                for e in r.events:
                    assert e.kv.mod_revision > rev
                    rev = e.kv.mod_revision
                    if e.type == e.PUT:
                        cache[e.kv.key] = e.kv.value
                    else:
                        cache.pop(e.kv.key, None)
                if not r.events:
                    progress_seen += 1 if not t.is_alive() else 0
                at = r.header.revision
                fresh = kv.Range(pb.RangeRequest(key=pfx, range_end=end, revision=at))
                assert cache == {x.key: x.value for x in fresh.kvs}, f"cache differs at {at}"
                checked += 1
            seen = len(rs)
        assert progress_seen >= 2
        assert checked > 50
    finally:
        stop.set()
        t.join()
        ws.close()


# -------------------------------------------------------------- guarantee checker


def test_watch_guarantees_under_writes_compactions_and_a_slow_consumer(tmp_path):
    """No gap, no duplicate, strict order, whole revisions per response, correct prev_kv,
    for a fast and a deliberately slow consumer, while compactions run."""
    proc = kubekv_process(tmp_path)
    proc.env["KUBEKV_WATCH_RECENT_REVISIONS"] = "16"  # the slow consumer falls behind the log early
    proc.start()
    try:
        _check_guarantees(proc)
    finally:
        proc.stop()


def _check_guarantees(proc):
    kv = proc.kv
    pfx, end = b"g/", b"g0"
    start = kv.Range(pb.RangeRequest(key=b"g/")).header.revision + 1
    record: dict[int, list[tuple[int, bytes, bytes]]] = {}
    lock = threading.Lock()
    n_writers, ops_per_writer = 3, 250

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(ops_per_writer):
            k = pfx + b"k%02d" % rnd.randrange(12)
            val = b"w%d-%d-" % (seed, i) + b"x" * 400
            choice = rnd.random()
            if choice < 0.2:
                r = kv.DeleteRange(pb.DeleteRangeRequest(key=k))
                if r.deleted:
                    with lock:
                        record[r.header.revision] = [(1, k, b"")]
            elif choice < 0.35:
                k2 = pfx + b"t%d" % seed
                r = kv.Txn(pb.TxnRequest(success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=k2, value=val)),
                    pb.RequestOp(request_put=pb.PutRequest(key=k2 + b"x", value=val)),
                ]))
                with lock:
                    record[r.header.revision] = [(0, k2, val), (0, k2 + b"x", val)]
            else:
                r = kv.Put(pb.PutRequest(key=k, value=val))
                with lock:
                    record[r.header.revision] = [(0, k, val)]

    fast = WatchStream(proc.channel)
    fast.create(pfx, range_end=end, start_revision=start, prev_kv=True)
    # a small HTTP/2 window without BDP growth, so the stall reaches the server quickly
    slow_channel = grpc.insecure_channel(proc.endpoint, options=[
        ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 8192)])
    slow = WatchStream(slow_channel, delay=0.01)
    slow.create(pfx, range_end=end, start_revision=start, prev_kv=True)

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(n_writers)]
    for t in writers:
        t.start()

    def compactor():
        while any(t.is_alive() for t in writers):
            cur = kv.Range(pb.RangeRequest(key=b"g/")).header.revision
            if cur - 150 > start:
                kv.Compact(pb.CompactionRequest(revision=cur - 150))
            time.sleep(0.05)  # pacing of the workload, not synchronisation

    comp = threading.Thread(target=compactor)
    comp.start()
    for t in writers:
        t.join()
    comp.join()
    last = max(record)
    try:
        fast_rs = fast.wait(lambda rs: any(e.kv.mod_revision == last for r in rs
                                           for e in r.events), timeout=60)
        _verify(fast_rs, record, start, last, allow_compaction=False)
        slow_rs = slow.wait(lambda rs: any(r.canceled for r in rs) or any(
            e.kv.mod_revision == last for r in rs for e in r.events), timeout=90)
        _verify(slow_rs, record, start, last, allow_compaction=True)
        # it fell behind: caught up from history (several revisions in one response)
        # or was canceled by a compaction, as etcd does with a watcher that lags too far
        assert any(r.canceled for r in slow_rs) or any(
            len({e.kv.mod_revision for e in r.events}) > 1 for r in slow_rs)
    finally:
        fast.close()
        slow.close()
        slow_channel.close()


def _verify(responses, record, start, last, allow_compaction):
    model: dict[bytes, bytes] = {}
    # the model before `start` is empty for these keys (fresh server, own prefix)
    expected_revs = sorted(record)
    got_revs = []
    for r in responses:
        if r.created:
            continue
        if r.canceled:
            assert allow_compaction and r.compact_revision > 0
            break
        by_rev: dict[int, list] = {}
        for e in r.events:
            by_rev.setdefault(e.kv.mod_revision, []).append(e)
        for rev, evs in by_rev.items():
            assert len(evs) == len(record[rev]), f"revision {rev} split across responses"
        for e in r.events:
            rev = e.kv.mod_revision
            if not got_revs or got_revs[-1] != rev:
                got_revs.append(rev)
    assert got_revs == sorted(set(got_revs)), "out of order or duplicated"
    if not allow_compaction or not any(r.canceled for r in responses):
        assert got_revs == [r for r in expected_revs if r >= start], "gap"
    else:
        assert got_revs == expected_revs[: len(got_revs)], "gap before the compaction"
    # contents and prev_kv against the writers' own record, replayed in revision order
    events = [e for r in responses if not r.created and not r.canceled for e in r.events]
    i = 0
    for rev in got_revs:
        for typ, key, val in record[rev]:
            e = events[i]
            i += 1
            assert (e.type, e.kv.key, e.kv.value) == (typ, key, val), f"wrong event at {rev}"
            prev = model.get(key)
            if prev is None:
                assert not e.HasField("prev_kv"), f"unexpected prev_kv at {rev}"
            else:
                assert e.prev_kv.value == prev, f"wrong prev_kv at {rev}"
            if typ == 0:
                model[key] = val
            else:
                model.pop(key, None)
