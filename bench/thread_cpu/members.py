"""Start and stop kubekv members of any source tree for measuring (not product code).

    python3 bench/thread_cpu/members.py start --tree T --dir D --base 2479 --members 3 \
        [--cprof] [--flags="..."] [--n1-leader]
    python3 bench/thread_cpu/members.py stop --dir D

Member i (1-based) serves clients on base+10*(i-1) and peers on base+10*(i-1)+1, all on
127.0.0.1; data dirs, pids (D/n{i}.pid) and logs (D/n{i}.log) go under D. `start`
returns once n1 answers a Put through a leader. With --cprof each server profiles its
loop thread (cprof_site/sitecustomize.py): `kill -USR1 PID` dumps D/prof/prof.PID.N.
EXTRA_PYTHONPATH in the environment is appended to the servers' PYTHONPATH (e.g. a
sitecustomize for an experiment). `stop` sends SIGTERM; wait for the ports to free
before the next `start` on the same base.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def start(a: argparse.Namespace, d: pathlib.Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.kubekv"):
        shutil.rmtree(old)
    (d / "prof").mkdir(exist_ok=True)
    peer = {i: a.base + 10 * (i - 1) + 1 for i in range(1, a.members + 1)}
    cluster = ",".join(f"n{i}=http://127.0.0.1:{p}" for i, p in peer.items())
    env = dict(os.environ)
    path = [a.tree]
    if a.cprof:
        path.append(str(HERE / "cprof_site"))
        env["KUBEKV_CPROF"] = str(d / "prof")
    if os.environ.get("EXTRA_PYTHONPATH"):
        path.append(os.environ["EXTRA_PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    for i in range(1, a.members + 1):
        client = a.base + 10 * (i - 1)
        cmd = [sys.executable, "-m", "kubekv_server", "--name", f"n{i}",
               "--data-dir", str(d / f"n{i}.kubekv"),
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
               "--initial-cluster", cluster, *a.flags.split()]
        with open(d / f"n{i}.log", "w") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=d, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        (d / f"n{i}.pid").write_text(str(proc.pid))
    sys.path.insert(0, a.tree)
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{a.base}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(),
                                                                  timeout=1)
            if status.leader:
                rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"ready", value=b"1"),
                                                 timeout=5)
                if a.n1_leader and status.leader != status.header.member_id:
                    status = n1_made_leader(a, status.header.member_id, status.leader)
                print(f"ready; leader {status.leader:x}, n1 is {status.header.member_id:x}")
                return 0
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    print(f"not ready in 30 s; logs in {d}")
    return 1


def n1_made_leader(a: argparse.Namespace, n1: int, leader: int) -> object:
    """Move leadership to n1 (Maintenance.MoveLeader on the leader), as cluster_bench.py
    does before each cell; returns n1's Status once it leads."""
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    for i in range(a.members):
        ch = grpc.insecure_channel(f"127.0.0.1:{a.base + 10 * i}")
        m = rpc_pb2_grpc.MaintenanceStub(ch)
        if m.Status(rpc_pb2.StatusRequest(), timeout=2).header.member_id == leader:
            m.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=n1), timeout=10)
            break
    n1_status = rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(f"127.0.0.1:{a.base}"))
    deadline = time.monotonic() + 10
    while True:
        status = n1_status.Status(rpc_pb2.StatusRequest(), timeout=2)
        if status.leader == n1 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def stop(d: pathlib.Path) -> int:
    for pid_file in sorted(d.glob("n*.pid")):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["start", "stop"])
    ap.add_argument("--tree", default=str(HERE.parent.parent), help="source tree to run")
    ap.add_argument("--dir", required=True, help="where data dirs, pids and logs go")
    ap.add_argument("--base", type=int, default=2479, help="n1's client port")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--cprof", action="store_true", help="cProfile each loop thread")
    ap.add_argument("--flags", default="", help="extra server flags, one string")
    ap.add_argument("--n1-leader", action="store_true",
                    help="move leadership to n1 once ready (where load.py sends at 1 in flight)")
    a = ap.parse_args()
    d = pathlib.Path(a.dir).resolve()
    return start(a, d) if a.cmd == "start" else stop(d)


if __name__ == "__main__":
    sys.exit(main())
