"""A stalled watcher's catch-up costs at most ~2.5x its pending events (issue 9, item 5).

A real kubekv process; a raw HTTP/2 watch client that stops reading once its watch is
created (tests/watch/stalled.py); ~20 MB of events written under the watched prefix;
then the client resumes and must receive every event, in revision order. The server's
memory growth over the whole scenario (writes, stall, catch-up) is bounded:

* heap (RssAnon, the peak of samples taken while the scenario runs) by
  STALL_FACTOR x the events' size + BASELINE_ALLOWANCE;
* all of RSS (VmHWM, the kernel's exact peak, reset when the writes start) by the same
  plus the growth of the data file, whose pages the server maps (LMDB) and which are
  there whether or not anyone watches.

Before the fix a resuming watcher was handed its whole backlog at once and the heap
grew ~5-6x the backlog.
"""

from __future__ import annotations

import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb import kv_pb2
from tests.watch.stalled import MAX_WINDOW, StalledWatcher, memory

PREFIX = b"stall/"
PREFIX_END = b"stall0"
PUTS = 2000
VALUE_SIZE = 10_000
WRITERS = 4
# The bound under test: growth of at most this many times the pending events' size...
STALL_FACTOR = 2.5
# ... plus this much for what any write load costs regardless of watchers (allocator
# slack, the key index of PUTS new keys, request buffers, thread stacks).
BASELINE_ALLOWANCE = 16 << 20
SAMPLE_INTERVAL = 0.02


def _events_size(first_rev: int, keys: list[bytes]) -> int:
    value = b"v" * VALUE_SIZE
    return sum(kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(
        key=k, value=value, create_revision=first_rev + i, mod_revision=first_rev + i,
        version=1)).ByteSize() for i, k in enumerate(keys))


def _allocated(path: pathlib.Path) -> int:
    """Bytes of disk actually allocated under a directory (LMDB's file may be sparse)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs 5); False if denied."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def test_stalled_watcher_memory_and_resume(kubekv):
    pid = kubekv.proc.pid
    kv = kubekv.kv
    watcher = StalledWatcher(kubekv.endpoint, MAX_WINDOW)
    try:
        rev = kv.Range(pb.RangeRequest(key=b"x")).header.revision
        watcher.create(PREFIX, PREFIX_END, rev + 1)
        disk_before = _allocated(kubekv.data_dir)
        before = memory(pid)
        hwm_reset = _reset_hwm(pid)

        peak_anon = [before["RssAnon"]]
        done = threading.Event()

        def sample() -> None:  # a measurement, not a synchronisation
            while not done.wait(SAMPLE_INTERVAL):
                peak_anon[0] = max(peak_anon[0], memory(pid)["RssAnon"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        keys = [PREFIX + b"k%05d" % i for i in range(PUTS)]
        value = b"v" * VALUE_SIZE
        first = kv.Put(pb.PutRequest(key=keys[0], value=value)).header.revision

        def write(part: list[bytes]) -> None:
            for k in part:
                kv.Put(pb.PutRequest(key=k, value=value), timeout=10)

        with ThreadPoolExecutor(WRITERS) as ex:
            list(ex.map(write, [keys[1 + i::WRITERS] for i in range(WRITERS)]))

        resumed = watcher.resume(first, PUTS)
        done.set()
        sampler.join()
        after = memory(pid)
    finally:
        watcher.close()

    assert resumed["problems"] == []
    assert resumed["events"] == PUTS  # every event, in revision order (checked by resume)

    pending = _events_size(first, keys)
    bound = STALL_FACTOR * pending + BASELINE_ALLOWANCE
    anon_growth = max(peak_anon[0], after["RssAnon"]) - before["RssAnon"]
    assert anon_growth <= bound, (
        f"heap grew {anon_growth >> 20} MiB for {pending >> 20} MiB of pending events "
        f"(bound {int(bound) >> 20} MiB)")
    if hwm_reset:
        disk_growth = _allocated(kubekv.data_dir) - disk_before
        rss_growth = after["VmHWM"] - before["VmRSS"]
        assert rss_growth <= bound + disk_growth, (
            f"RSS peaked {rss_growth >> 20} MiB above its start for {pending >> 20} MiB of "
            f"pending events (bound {int(bound + disk_growth) >> 20} MiB incl. "
            f"{disk_growth >> 20} MiB of data file)")

