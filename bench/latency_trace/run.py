#!/usr/bin/env python
"""One write at a time on a 3-member kubekv cluster, stamped in every process: N Puts
through a follower's client port, then N through the leader's, with the client's own
send/receive stamps in DIR/trace.client. Analyse with analyze.py.

    python bench/latency_trace/run.py DIR [--ops 300] [--op put|txn] [--code TREE]

--code: the source tree the members run (default: this one), e.g. /work/main for an A/B.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--op", default="put", choices=["put", "txn"])
    ap.add_argument("--code", default=str(HERE.parent.parent))
    a = ap.parse_args()
    sys.path.insert(0, a.code)  # cluster_bench runs the members from its own tree
    from bench import cluster_bench
    from etcdproto.etcdserverpb import rpc_pb2 as pb

    assert pathlib.Path(cluster_bench.__file__).is_relative_to(a.code), cluster_bench.__file__
    out = pathlib.Path(a.dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["KUBEKV_TRACE"] = str(out)
    os.environ["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")
    args = argparse.Namespace(heartbeat_interval=100, election_timeout=1000,
                              kubekv_flags="", etcd_flags="")
    with tempfile.TemporaryDirectory() as tmp:
        c = cluster_bench.Cluster("kubekv", pathlib.Path(tmp), args)
        c.start()
        try:
            leader = c.wait_stable()
            follower = next(n for n in c.members if n != leader)
            lines = []
            for role, name in (("follower", follower), ("leader", leader)):
                kv = c.members[name].kv
                for i in range(a.ops):
                    key = f"k{i % 100}".encode()
                    if a.op == "put":
                        req = pb.PutRequest(key=key, value=b"v" * 256)
                        call = kv.Put
                    else:
                        req = pb.TxnRequest(
                            compare=[pb.Compare(key=key, target=pb.Compare.MOD,
                                                result=pb.Compare.GREATER,
                                                mod_revision=-1)],
                            success=[pb.RequestOp(request_put=pb.PutRequest(
                                key=key, value=b"v" * 256))])
                        call = kv.Txn
                    t0 = time.perf_counter_ns()
                    call(req, timeout=5)
                    t1 = time.perf_counter_ns()
                    lines.append(f"{t0} client send {role}")
                    lines.append(f"{t1} client recv {role}")
                    time.sleep(0.003)  # apart from the previous write's tail
            (out / "trace.client").write_text("\n".join(lines) + "\n")
        finally:
            c.stop()


if __name__ == "__main__":
    main()
