#!/usr/bin/env python
"""Median stage times of the writes `run.py` stamped: one table per client role (the
client on a follower, the client on the leader), times in ms since the client sent.

    python bench/latency_trace/analyze.py DIR
"""

# ruff: noqa: B023 - the milestone lambdas run at once, inside their loop turn

from __future__ import annotations

import bisect
import pathlib
import statistics
import sys


def load(d: pathlib.Path):
    """Every stamp, in time order, and each member's client port (from its file's start
    line: `net_rx` on any other port is peer traffic)."""
    ev = []
    client_ports = {}
    for p in d.glob("trace.*"):
        port = member = None
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            if parts[2] == "start":
                port = kv(parts[3:]).get("client")
            elif member is None and parts[1] not in ("0", "client"):
                member = parts[1]
            ev.append((int(parts[0]), parts[1], parts[2], parts[3:]))
        if member is not None and port:
            client_ports[member] = port
    ev.sort(key=lambda e: e[0])
    return ev, client_ports


def kv(fields):
    out = {}
    for f in fields:
        if "=" in f:
            k, _, v = f.partition("=")
            out[k] = v
    return out


def rng(s: str) -> tuple[int, int]:
    a, _, b = s.partition("-")
    return int(a), int(b)


def main() -> None:  # noqa: C901 - one milestone after another
    d = pathlib.Path(sys.argv[1])
    ev, clients = load(d)  # clients: member -> its client port
    times = [e[0] for e in ev]
    sends = [(e[0], e[3][0]) for e in ev if e[1] == "client" and e[2] == "send"]
    recvs = [e[0] for e in ev if e[1] == "client" and e[2] == "recv"]
    stats: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, dict[str, list[int]]] = {}
    for (t0, role), t1 in zip(sends, recvs, strict=True):
        i0 = bisect.bisect_left(times, t0)
        i1 = bisect.bisect_right(times, t1 + 3_000_000)  # tails after the answer
        w = ev[i0:i1]
        ms = {}

        def first(pred, after=t0, _w=w):
            for e in _w:
                if e[0] >= after and pred(e):
                    return e
            return None

        def peer_rx(member, step, _w=w):
            """When `member`'s peer port read the bytes it stepped at `step` (the last
            read on a port other than its client port before it)."""
            if step is None:
                return None
            rx = None
            for e in _w:
                if e[0] > step[0]:
                    break
                if e[1] == member and e[2] == "net_rx" and e[3][0] != clients.get(member):
                    rx = e
            return rx and rx[0]

        prop = first(lambda e: e[2] == "propose")
        if prop is None:
            continue
        origin = prop[1]
        ms["origin propose"] = prop[0]
        lr = first(lambda e: e[2] == "ready" and kv(e[3])["ents"] != "0-0"
                   and e[3][-1].startswith("msgs=MsgApp"))
        if lr is None:
            continue
        leader = lr[1]
        idx = rng(kv(lr[3])["ents"])[1]
        if origin != leader:
            x = first(lambda e: e[1] == origin and e[2] == "wire", prop[0])
            ms["origin MsgProp written"] = x and x[0]
            x = first(lambda e: e[1] == leader and e[2] == "recv" and e[3][0] == "MsgProp")
            ms["leader peer port reads MsgProp"] = peer_rx(leader, x)
            ms["leader steps MsgProp"] = x and x[0]
        ms["leader Ready (entry)"] = lr[0]
        x = first(lambda e: e[1] == leader and e[2] == "wire", lr[0])
        ms["leader MsgApp written"] = x and x[0]
        lp = first(lambda e: e[1] == leader and e[2] == "persist", lr[0])
        ms["leader fsync starts"] = lp and lp[0]
        lpd = first(lambda e: e[1] == leader and e[2] == "persist_done", lr[0])
        ms["leader fsync done"] = lpd and lpd[0]
        x = lpd and first(lambda e: e[1] == leader and e[2] == "ready_done", lpd[0])
        ms["leader Ready done (advance)"] = x and x[0]
        fa = first(lambda e: e[1] != leader and e[2] == "recv" and e[3][0] == "MsgApp"
                   and int(kv(e[3])["last"]) >= idx)
        ms["1st follower peer port reads MsgApp"] = fa and peer_rx(fa[1], fa)
        ms["1st follower steps MsgApp"] = fa and fa[0]
        x = first(lambda e: e[1] != leader and e[2] == "persist", lr[0])
        ms["1st follower fsync starts"] = x and x[0]
        x = first(lambda e: e[1] != leader and e[2] == "persist_done", lr[0])
        ms["1st follower fsync done"] = x and x[0]
        x = first(lambda e: e[1] != leader and e[2] == "send" and e[3][0] == "MsgAppResp"
                  and int(kv(e[3])["idx"]) >= idx)
        ms["1st follower ack queued"] = x and x[0]
        x = first(lambda e: e[1] == leader and e[2] == "recv" and e[3][0] == "MsgAppResp"
                  and int(kv(e[3])["idx"]) >= idx)
        ms["leader peer port reads 1st ack"] = peer_rx(leader, x)
        ms["leader steps 1st ack"] = x and x[0]

        def has_commit(e):
            c = kv(e[3]).get("committed", "0-0")
            a, b = rng(c)
            return a <= idx <= b

        lc = first(lambda e: e[1] == leader and e[2] == "ready" and has_commit(e))
        ms["leader Ready (commit)"] = lc and lc[0]
        x = lc and first(lambda e: e[1] == leader and e[2] == "wire", lc[0])
        ms["leader commit MsgApp written"] = x and x[0]
        x = lc and first(lambda e: e[1] == leader and e[2] == "apply", lc[0])
        ms["leader apply starts"] = x and x[0]
        if origin != leader:
            x = first(lambda e: e[1] == origin and e[2] == "recv" and e[3][0] == "MsgApp"
                      and int(kv(e[3])["commit"]) >= idx)
            ms["origin peer port reads commit"] = peer_rx(origin, x)
            ms["origin steps commit"] = x and x[0]
            oc = first(lambda e: e[1] == origin and e[2] == "ready" and has_commit(e))
            ms["origin Ready (commit)"] = oc and oc[0]
        oc = first(lambda e: e[1] == origin and e[2] == "ready" and has_commit(e))
        oa = oc and first(lambda e: e[1] == origin and e[2] == "apply", oc[0])
        ms["origin apply starts"] = oa and oa[0]
        oad = oa and first(lambda e: e[1] == origin and e[2] == "apply_done", oa[0])
        ms["origin apply done"] = oad and oad[0]
        x = oad and first(lambda e: e[1] == origin and e[2] == "applied", oad[0])
        ms["origin applied (answers)"] = x and x[0]
        x = x and first(lambda e: e[1] == origin and e[2] == "net_tx"
                        and e[3][0] == clients[origin], x[0])
        ms["origin response written"] = x and x[0]
        ms["client has answer"] = t1
        st = stats.setdefault(role, {})
        for k, v in ms.items():
            if v:
                st.setdefault(k, []).append((v - t0) / 1e6)
        # per write on each member: Ready cycles and peer writes between send and answer
        c = counts.setdefault(role, {})
        for who, name in (("leader", leader), ("origin", origin)):
            if who == "origin" and origin == leader:
                continue
            n_ready = sum(1 for e in w if e[1] == name and e[2] == "ready" and e[0] <= t1)
            n_wire = sum(1 for e in w if e[1] == name and e[2] == "wire" and e[0] <= t1)
            n_feed = sum(1 for e in w if e[1] == name and e[2] == "feed" and e[0] <= t1)
            c.setdefault(f"{who} Readys", []).append(n_ready)
            c.setdefault(f"{who} peer writes", []).append(n_wire)
            c.setdefault(f"{who} loop feeds", []).append(n_feed)
        others = [m for m in {e[1] for e in w if e[1] not in ("client", "0")}
                  if m not in (leader, origin)]
        for name in others:
            n_ready = sum(1 for e in w if e[1] == name and e[2] == "ready" and e[0] <= t1)
            n_wire = sum(1 for e in w if e[1] == name and e[2] == "wire" and e[0] <= t1)
            c.setdefault("other follower Readys", []).append(n_ready)
            c.setdefault("other follower peer writes", []).append(n_wire)
    for role, st in stats.items():
        n = len(st.get("client has answer", []))
        print(f"\n## client on the {role} ({n} writes): median ms since the client sent")
        print("| stage | median ms | p90 ms |")
        print("|---|---|---|")
        for k, v in sorted(st.items(), key=lambda kv_: statistics.median(kv_[1])):
            v = sorted(v)
            print(f"| {k} | {statistics.median(v):.3f} | {v[int(len(v) * 0.9)]:.3f} |")
        print("\n| per write | median |")
        print("|---|---|")
        for k, v in counts.get(role, {}).items():
            print(f"| {k} | {statistics.median(v)} |")


if __name__ == "__main__":
    main()
