"""Where Puts wait in the commit pipeline at many in flight: per Ready and per stage.

bench/put_timeline.py follows one Put at 1 in flight; with many in flight the stages
of different Puts overlap, so this stamps the pipeline itself instead: each log write
(entries, duration, proposals queued at its start and end, the log thread's idle gap
before it), each feed of inputs into Raft, each apply batch, each Ready cycle on the
loop, and the delay from a write's end to the loop taking its answer.

    python3 bench/commit_stages.py [--tree DIR] [kv_bench flags: --ops put --inflight 64]

It runs bench/kv_bench.py of this tree (or of --tree DIR, another checkout; kubekv
only) with a `sitecustomize` on the server's PYTHONPATH that wraps the Runner's
methods before the server starts and writes its stamps at exit: nothing in the
server's code is stamped, so this costs nothing when not run. The first quarter of
the stamps (start-up, warm-up) is dropped.
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Imported by every Python process started with the hook dir on PYTHONPATH; acts only
# in the process that imports the Runner (the server).
_HOOK = r'''
import atexit, importlib.abc, importlib.machinery, json, os, sys, time
ns = time.perf_counter_ns
EV = []

def _patch(mod):
    R, RN = mod.Runner, mod.RawNode
    persist, feed, apply_batch, handle = R._persist, R._feed, R._apply_batch, R._handle
    answer, resolve, advance = R._answer, mod._resolve, RN.advance
    sent = {}
    def _persist(self, snap, ents, hs):
        t, q = ns(), len(self._proposals)
        try:
            return persist(self, snap, ents, hs)
        finally:
            EV.append(("write", t, ns(), len(ents), q, len(self._proposals)))
    def _feed(self):
        t, n = ns(), len(self._proposals)
        feed(self)
        EV.append(("feed", t, ns(), n))
    def _apply_batch(self):
        t, n = ns(), len(self._handoff)
        apply_batch(self)
        if n:
            EV.append(("apply", t, ns(), n))
    async def _handle(self, rd):
        t = ns()
        try:
            return await handle(self, rd)
        finally:
            EV.append(("ready", t, ns(), len(rd.entries)))
    def _answer(self, fut, exc):
        sent[id(fut)] = ns()
        return answer(self, fut, exc)
    def _resolve(fut, exc):
        t = sent.pop(id(fut), None)
        if t is not None:
            EV.append(("answer", t, ns()))
        return resolve(fut, exc)
    def _advance(self, *a):
        t = ns()
        r = advance(self, *a)
        EV.append(("advance", t, ns()))
        return r
    R._persist, R._feed, R._apply_batch, R._handle = _persist, _feed, _apply_batch, _handle
    R._answer, mod._resolve, RN.advance = _answer, _resolve, _advance
    # a tree whose Runner answers writes with a DirectFuture (branch tp64, not merged)
    direct = getattr(mod, "DirectFuture", None)  # the answer resumes the cycle inside it
    if direct is not None:
        answer_now = direct.answer_now
        def _answer_now(fut, exc):
            t = sent.pop(id(fut), None)
            if t is not None:
                EV.append(("answer", t, ns()))
            return answer_now(fut, exc)
        direct.answer_now = _answer_now
    def dump():
        with open(os.path.join(os.environ["KUBEKV_STAGES_DIR"], f"ev-{os.getpid()}.json"),
                  "w") as f:
            json.dump(EV, f)
    atexit.register(dump)

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "kubekv_raft.driver.runner":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(m):
            run(m)
            _patch(m)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Finder())
'''


def _q(xs: list[float]) -> str:
    if not xs:
        return "–"
    xs = sorted(xs)
    n = len(xs)
    return (f"{statistics.mean(xs):.2f} | {xs[n // 2]:.2f} | {xs[int(n * 0.9)]:.2f} | "
            f"{xs[-1]:.2f}")


def _after(starts: list[int], t: int) -> int | None:
    i = bisect.bisect_left(starts, t)
    return starts[i] if i < len(starts) else None


def report(events: list[list]) -> str:
    """The stamps as a markdown table: mean, p50, p90, max per measure."""
    writes = [e for e in events if e[0] == "write"]
    cut = writes[0][1] + (writes[-1][2] - writes[0][1]) // 4
    by: dict[str, list[list]] = {}
    for e in events:
        if e[1] > cut:
            by.setdefault(e[0], []).append(e)
    w, feeds, applies = by["write"], by.get("feed", []), by.get("apply", [])
    readys, answers = by.get("ready", []), by.get("answer", [])
    span = (w[-1][2] - w[0][1]) / 1e9
    ms = 1e6
    idle = [(w[i + 1][1] - w[i][2]) / ms for i in range(len(w) - 1)]
    feed_starts = [f[1] for f in feeds]
    to_feed = [(t - x[2]) / ms for x in w if (t := _after(feed_starts, x[2])) is not None]
    ready_ends = sorted(r[2] for r in readys)
    wake = [(t - a[2]) / ms for a in answers if (t := _after(ready_ends, a[2])) is not None]
    ready_starts = [r[1] for r in readys]
    pre = []
    for x in w:
        i = bisect.bisect_right(ready_starts, x[1]) - 1
        if i >= 0:
            pre.append((x[1] - ready_starts[i]) / ms)
    entries = sum(x[3] for x in w)
    rows = [
        f"{span:.2f} s measured: {len(w)} log writes ({len(w) / span:.0f}/s), "
        f"{entries / span:.0f} entries/s; log thread idle "
        f"{100 * sum(idle) / 1e3 / span:.0f} % of the time; "
        f"{len(answers)} writes answered the loop at once, "
        f"{len(w) - len(answers)} left it to the apply stage (no input waiting)",
        "",
        "| measure | mean | p50 | p90 | max |",
        "|---|---:|---:|---:|---:|",
        f"| entries per log write | {_q([x[3] for x in w])} |",
        f"| proposals queued at a write's start | {_q([x[4] for x in w])} |",
        f"| proposals queued at a write's end | {_q([x[5] for x in w])} |",
        f"| proposals per feed (non-empty) | {_q([f[3] for f in feeds if f[3]])} |",
        f"| entries per apply batch | {_q([a[3] for a in applies])} |",
        f"| Ready start (loop) -> its write starts, ms | {_q(pre)} |",
        f"| log write (append + fdatasync), ms | {_q([(x[2] - x[1]) / ms for x in w])} |",
        f"| write answered -> loop runs the answer, ms | "
        f"{_q([(a[2] - a[1]) / ms for a in answers])} |",
        f"| loop ran the answer -> Ready cycle resumes and ends, ms | {_q(wake)} |",
        f"| advance, ms | {_q([(a[2] - a[1]) / ms for a in by.get('advance', [])])} |",
        f"| write end -> next feed, ms | {_q(to_feed)} |",
        f"| log thread idle between writes, ms | {_q(idle)} |",
        f"| Ready cycle on the loop (incl. write), ms | "
        f"{_q([(r[2] - r[1]) / ms for r in readys])} |",
        f"| apply batch (apply thread), ms | {_q([(a[2] - a[1]) / ms for a in applies])} |",
    ]
    return "\n".join(rows)


def main() -> None:
    args = sys.argv[1:]
    tree = ROOT
    if args[:1] == ["--tree"]:
        tree, args = pathlib.Path(args[1]).resolve(), args[2:]
    with tempfile.TemporaryDirectory(prefix="commit-stages-") as hook:
        pathlib.Path(hook, "sitecustomize.py").write_text(_HOOK)
        env = dict(os.environ, KUBEKV_STAGES_DIR=hook,
                   PYTHONPATH=os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH"))
                                              if p))
        argv = [sys.executable, str(tree / "bench" / "kv_bench.py"), "--server", "kubekv",
                *args]
        subprocess.run(argv, env=env, check=True)
        dumps = glob.glob(os.path.join(hook, "ev-*.json"))
        if not dumps:
            sys.exit("no stamps: the server did not exit cleanly")
        for path in dumps:
            with open(path) as f:
                print("\n" + report(json.load(f)))


if __name__ == "__main__":
    main()
