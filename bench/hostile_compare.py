"""Every hostile-input attack against kubekv and then real etcd 3.5.1, side by side (issue 9).

    python bench/hostile_compare.py [--only NAME[,NAME...]] [--servers kubekv,etcd]

For each attack in kubekv_testing.hostile.ATTACKS and each server: the probe's slowest
answer and answer count during the attack, the server's RSS before / peak / after, the
attacker's answer (GOAWAY code, RST_STREAM, HTTP status, close, blocked, nothing) and the
tracebacks the attack left in the server log. A table on stdout, JSON in bench/results/.
A server that stops answering after an attack (or one marked `wedges`) is killed and
restarted before the next attack, so one hang does not spoil the rest of the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubekv_testing import hostile  # noqa: E402
from tests import harness  # noqa: E402


def _fmt_mb(n: int) -> str:
    return f"{n / (1 << 20):.0f}"


def _fmt_lat(m: hostile.Measurement) -> str:
    if m.probe_max is None:
        return "-"
    if m.probe_max == float("inf"):
        failed = sum(1 for x in m.probe_latencies if x is None)
        return f"FAIL x{failed}"
    return f"{m.probe_max * 1000:.0f}ms"


def row(m: hostile.Measurement, attack: hostile.Attack) -> list[str]:
    expect = attack.expect
    ok = "" if expect is None else ("ok" if expect.met(m.result) else "WRONG")
    over = " OVER" if m.rss_growth_mb > attack.rss_bound_mb else ""
    return [
        _fmt_lat(m), str(m.probe_answers),
        f"{_fmt_mb(m.rss_before)}/{_fmt_mb(m.rss_peak)}/{_fmt_mb(m.rss_after)}"
        f" (anon +{_fmt_mb(max(0, m.anon_peak - m.anon_before))}){over}",
        (m.result.answer()[:48] + (f" [{ok}]" if ok else "")),
        str(m.tracebacks), "yes" if m.answers_after else "NO",
        "pass" if not hostile.problems(attack, m) else "FAIL",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--servers", default="kubekv,etcd")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    attacks = [a for a in hostile.ATTACKS if not only or a.name in only]
    servers = [s for s in args.servers.split(",") if s]
    results: dict[str, dict[str, dict]] = {a.name: {} for a in attacks}
    table: dict[str, dict[str, hostile.Measurement]] = {a.name: {} for a in attacks}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        for kind in servers:
            make = harness.kubekv_process if kind == "kubekv" else harness.etcd_process
            proc = make(pathlib.Path(tmp), name=kind)
            proc.start()
            try:
                for attack in attacks:
                    if hostile.revive(proc):
                        print(f"# {kind}: was not answering before {attack.name}: restarted",
                              flush=True)
                    t0 = time.monotonic()
                    m = hostile.measure(attack, "127.0.0.1", proc.port, proc.proc.pid,
                                        proc.log_path)
                    table[attack.name][kind] = m
                    results[attack.name][kind] = {
                        **m.to_json(), "expected": attack.expect.describe() if attack.expect
                        else None,
                        "answer_ok": attack.expect.met(m.result) if attack.expect else None,
                        "problems": hostile.problems(attack, m),
                        "wall_s": round(time.monotonic() - t0, 2)}
                    print(f"# {kind:6} {attack.name:32} " + " | ".join(row(m, attack)),
                          flush=True)
                    if attack.wedges or not m.answers_after:
                        proc.stop(timeout=3)
                        proc.start()
            finally:
                proc.stop(timeout=5)

    columns = ("probe max", "answers", "RSS MB b/p/a", "answer", "tb", "up", "bar")
    head = ["attack"] + [f"{s} {c}" for s in servers for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for attack in attacks:
        cells = [attack.name]
        for kind in servers:
            m = table[attack.name].get(kind)
            cells += row(m, attack) if m else ["-"] * 7
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    out = pathlib.Path(args.out) if args.out else ROOT / "bench" / "results" / (
        f"{datetime.date.today().isoformat()}-hostile.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "servers": servers, "rss_bound_mb": hostile.RSS_BOUND_MB,
        "expected": {a.name: a.expect.describe() if a.expect else None for a in attacks},
        "results": results}, indent=1))
    print(f"# wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
