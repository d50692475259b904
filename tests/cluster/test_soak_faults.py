"""Longer randomized fault schedules (soak: excluded from the default run).

    pytest -m soak tests/cluster/test_soak_faults.py            # every seed
    KUBEKV_SOAK_SEEDS=7,8 KUBEKV_SOAK_ROUNDS=20 pytest -m soak tests/cluster/...

Each round picks a fault at random (kill -9 and restart of any member, SIGSTOP/SIGCONT,
leader isolation, a minority/majority split, an asymmetric link, a bridge, link delay,
graceful restart), holds it for a random while under a random KV workload, heals, and
waits for a leader; at the end the history and the members' states are checked as in
the other cluster tests. A failing seed replays the same fault schedule (the timing of
the processes of course differs).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from kubekv_testing.cluster import Cluster

from .checks import run_with_faults, verify, workload

SEEDS = [int(s) for s in os.environ.get("KUBEKV_SOAK_SEEDS", "1,2,3,4").split(",")]
ROUNDS = int(os.environ.get("KUBEKV_SOAK_ROUNDS", "12"))


def one_round(c: Cluster, rng: random.Random, log: list[str]) -> None:
    lead = c.wait_leader(timeout=30)
    members = list(c.members)
    others = [m for m in members if m is not lead]
    victim = rng.choice([lead, *others])
    hold = rng.uniform(0.2, 3.0) * c.election_ms / 1000 * 2
    kind = rng.choice(["kill9", "pause", "isolate", "split", "asymmetric", "bridge", "delay",
                       "restart", "kill9-two"])
    log.append(f"{kind} {victim.name} (leader {lead.name}) for {hold:.2f}s")
    if kind == "kill9":
        victim.kill()
        time.sleep(hold)
        victim.restart()
    elif kind == "kill9-two" and len(members) >= 3:
        pair = rng.sample(members, 2)
        for m in pair:
            m.kill()
        time.sleep(hold)
        for m in pair:
            m.launch()
        c.wait_ready(pair)
    elif kind == "pause":
        victim.pause()
        time.sleep(hold)
        victim.resume()
    elif kind == "isolate":
        c.net.isolate(victim.name, mode=rng.choice(["reset", "blackhole"]))
        time.sleep(hold)
    elif kind == "split":
        shuffled = rng.sample(members, len(members))
        cut = rng.randrange(1, len(members))
        c.net.split([m.name for m in shuffled[:cut]], [m.name for m in shuffled[cut:]],
                    mode=rng.choice(["reset", "blackhole"]))
        time.sleep(hold)
    elif kind == "asymmetric":
        a, b = rng.sample(members, 2)
        c.net.asymmetric(a.name, b.name)
        time.sleep(hold)
    elif kind == "bridge":
        shuffled = rng.sample(members, len(members))
        mid = shuffled[0]
        rest = shuffled[1:]
        half = len(rest) // 2
        c.net.bridge([m.name for m in rest[:half]], mid.name, [m.name for m in rest[half:]])
        time.sleep(hold)
    elif kind == "delay":
        for link in c.net.links:
            if link.src == victim.name or link.dst == victim.name:
                link.delay(rng.uniform(0.01, 0.2))
        time.sleep(hold)
        for link in c.net.links:
            link.delay(0)
    elif kind == "restart":
        victim.restart()
    c.net.heal_all()
    for m in c.members:
        if m.alive and m.paused:
            m.resume()
        if not m.alive:
            m.restart()


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults(make_cluster, seed, size):
    rng = random.Random(seed * 1000 + size)
    c = make_cluster(size, faults=True, seed=seed)
    w = workload(c, clients=4, max_ops=20000, duration=600, seed=seed, keys=8)
    log: list[str] = []

    def faults():
        for _ in range(ROUNDS):
            one_round(c, rng, log)

    history = run_with_faults(w, faults)
    try:
        report = verify(c, history, w.recorder, check_timeout=120)
    except (AssertionError, TimeoutError) as exc:  # a check failed, or one never held
        raise AssertionError(f"seed {seed}, faults: {log}\n{exc}") from None
    print(f"seed {seed} size {size}: {report}; faults: {log}")
