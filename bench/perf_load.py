"""A server under Go-client load, with a perf recording taken inside the load's window.

What bench/sched_delay.py and bench/cpu_by_code.py share: start kubekv or etcd 3.5.1
(one member, or three with n1 the leader) on fresh data dirs, preload the bench's keys,
run one cell of closed-loop Go clients (`bench/goload`), and call a recorder once the
load is warm, so the recording sees nothing but that cell.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Callable
from typing import TypeVar

from bench.cluster_bench import Cluster
from bench.cluster_bench import parse_args as cluster_bench_args
from bench.goload import GoClients
from bench.loadgen import NUM_KEYS, PRELOAD_INFLIGHT, one_member

# How long the load runs beyond the recorded seconds: perf's start-up before it records
# and its write-out after (~1.4 s seen here), with room to spare.
PERF_SLACK_S = 4.0

T = TypeVar("T")


@contextlib.contextmanager
def servers(system: str, members: int, tmp: pathlib.Path):
    """(endpoints, pids) of a started one- or three-member `system`, stopped afterwards.
    Three members: n1 made the leader (a 1-in-flight cell's client talks to n1 alone)."""
    if members == 1:
        with one_member(system) as sp:
            yield [sp.endpoint], [sp.proc.pid]
        return
    cluster = Cluster(system, tmp, cluster_bench_args([]))  # cluster_bench's defaults
    try:
        cluster.start()
        cluster.lead_from("n1")
        yield cluster.endpoints, cluster.pids()
    finally:
        cluster.stop()


def under_load(system: str, a, tmp: pathlib.Path, n_clients: int, channels: int,
               record: Callable[[list[int]], T]) -> tuple[float, list[int], T]:
    """Start `system` (`a.members` members, data under `tmp`), run `a.op` at `a.inflight`
    in flight from Go clients, and call `record(pids)` once the load is warm, inside its
    window. Returns the clients' steady writes/s over the window, the servers' pids and
    what `record` returned; the servers are stopped by then."""
    with servers(system, a.members, tmp) as (endpoints, pids):
        clients = GoClients(endpoints, n_clients, channels)
        try:
            clients.preload(NUM_KEYS, PRELOAD_INFLIGHT)
            # perf records inside the clients' window [t_start, t_end] (its start-up and
            # write-out take ~1.4 s beyond what it records)
            t_start = time.monotonic() + 0.5 + a.warmup
            t_end = t_start + a.seconds + PERF_SLACK_S
            active = clients.start_cell(a.op, a.inflight, t_start, t_end, 1)
            time.sleep(max(0.0, t_start - time.monotonic()))
            got = record(pids)
            if time.monotonic() > t_end:
                raise RuntimeError("perf took longer than the load's window")
            results = clients.finish_cell(active, t_end)
        finally:
            clients.close()
    rate = sum(len(r["lat"]) // 8 for r in results) / (t_end - t_start)
    if rate <= 0:
        raise RuntimeError(f"{system}: no write answered in the window")
    return rate, pids, got
