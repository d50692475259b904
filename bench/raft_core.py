"""Committed entries per second through a 3-member cluster: core only, no I/O.

Three RawNodes over MemoryStorage exchange messages in-process; the client proposes
batches of entries at the leader and every member applies them. Run:

    python bench/raft_core.py [--entries 200000] [--batch 256] [--size 64]

Prints entries per second of wall time and per second of CPU (process_time): on a
shared machine the second is the steadier one.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

# Run from a checkout: prefer this tree's packages over any installed copy.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from etcdproto.raftpb import raft_pb2 as pb  # noqa: E402
from kubekv_raft.core.raft import Config  # noqa: E402
from kubekv_raft.core.raw_node import RawNode  # noqa: E402
from kubekv_raft.core.storage import MemoryStorage  # noqa: E402


def build(n: int = 3) -> dict[int, tuple[RawNode, MemoryStorage]]:
    """n nodes with one bootstrap membership and large flow-control windows."""
    out = {}
    for i in range(1, n + 1):
        st = MemoryStorage()
        st.set_conf_state(pb.ConfState(voters=list(range(1, n + 1))))
        cfg = Config(id=i, storage=st, max_size_per_msg=None, max_inflight_msgs=1024)
        out[i] = (RawNode(cfg), st)
    return out


def pump(nodes: dict[int, tuple[RawNode, MemoryStorage]], applied: dict[int, int]) -> None:
    """Handle Readys and deliver messages until the cluster is quiet."""
    busy = True
    while busy:
        busy = False
        outbox: list[pb.Message] = []
        for i, (rn, st) in nodes.items():
            if rn.has_ready():
                busy = True
                rd = rn.ready()
                if rd.entries or rd.hard_state is not None:
                    st.append(rd.entries, rd.hard_state)
                outbox += rd.messages
                if rd.committed_entries:
                    applied[i] = rd.committed_entries[-1].index
                rn.advance()
        for m in outbox:
            nodes[m.to][0].step(m)


def run(entries: int, batch: int, size: int) -> tuple[float, float]:
    """Committed (and applied on all members) entries per second of wall time and per
    second of this process's CPU (steadier on a shared machine)."""
    nodes = build()
    applied = dict.fromkeys(nodes, 0)
    nodes[1][0].campaign()
    pump(nodes, applied)
    payload = [b"x" * size] * batch
    leader = nodes[1][0]
    start_index = applied[1]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(entries // batch):
        leader.propose_batch(payload)
        pump(nodes, applied)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    done = min(applied.values()) - start_index
    assert done == (entries // batch) * batch, (done, applied)
    return done / dt, done / dc


def main() -> None:
    """Print the throughput for the given load."""
    p = argparse.ArgumentParser()
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    rate, cpu_rate = run(a.entries, a.batch, a.size)
    print(
        f"raft_core: {rate:,.0f} committed entries/s, {cpu_rate:,.0f} per CPU second "
        f"(3 members, batch {a.batch}, {a.size}-byte entries, {a.entries} entries)"
    )


if __name__ == "__main__":
    main()
