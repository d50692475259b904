"""Replay or sweep randomized simulation seeds: python -m kubekv_raft.sim --seed N."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from kubekv_raft.sim.cluster import SimulationError
from kubekv_raft.sim.soak import random_run


def main(argv: list[str] | None = None) -> int:
    """Run one seed (--seed) or a range (--first/--count); exit 1 on the first failure."""
    p = argparse.ArgumentParser(prog="python -m kubekv_raft.sim")
    p.add_argument("--seed", type=int)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--duration", type=int, default=4000, help="virtual ms of faults")
    p.add_argument("-v", "--verbose", action="store_true", help="log every Raft decision")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING)
    seeds = [a.seed] if a.seed is not None else range(a.first, a.first + a.count)
    t0 = time.perf_counter()
    for s in seeds:
        try:
            c = random_run(s, a.duration)
        except SimulationError as e:
            print(f"FAIL seed={s}: {e}", file=sys.stderr)
            return 1
        if a.seed is not None:
            print(f"seed={s} ok: {c.events} events, trace={c.trace:08x}")
    print(f"{len(seeds)} seeds ok in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
