"""Thread CPU per kube update Txn of the parts of `kv.txn.apply_txn`, in-process on a
real MVCC store (/dev/shm), each compare holding: what a Txn's apply costs beyond a Put's.

    python3 bench/txn_apply_parts.py [TREE]

taken  MVCCStore.write + taken_branch (the compare's read, the taken ops read once)
check  taken + kv.txn.check_txn (the pre-write checks)
full   MVCCStore.write + apply_txn (TxnResponse included) + WriteTxn.end
put    MVCCStore.write + apply_put of the Txn's own PutRequest + WriteTxn.end

Requests are parsed afresh from their log entries for each round (warm upb wrappers
measure less); each part is the best of 9 rounds of 2,000 Txns in one LMDB write txn,
aborted after. Alternate trees (A, B, A, B...) to compare them.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile
import time

TREE = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                    pathlib.Path(__file__).resolve().parent.parent).resolve()
sys.path.insert(0, str(TREE))

from bench.kube_txn import update_request  # noqa: E402
from etcdproto.kubekvpb import internal_pb2  # noqa: E402
from kubekv_server.backend.state_db import Backend  # noqa: E402
from kubekv_server.kv import txn as kt  # noqa: E402
from kubekv_server.member.proposals import encode_internal  # noqa: E402
from kubekv_server.mvcc import MVCCStore  # noqa: E402

VALUE = b"v" * 256
N = 2000


def _no_lease(lease_id: int) -> bool:
    return False


def main() -> None:
    shm = pathlib.Path("/dev/shm")
    tmp = tempfile.mkdtemp(dir=shm if shm.is_dir() else None)
    try:
        backend = Backend(tmp + "/db")
        store = MVCCStore(backend.env)
        keys = [b"bench/key/%05d" % i for i in range(N)]
        with backend.env.begin(write=True) as t:
            w = store.write(t)
            for k in keys:
                w.put(k, VALUE)
            w.end()
        with store.read() as r:
            revs = {k: r.range(k, None).kvs[0].mod_revision for k in keys}
        entries = [encode_internal(7, "txn", update_request(k, VALUE, revs[k])
                                   .SerializeToString(), ("", 0)) for k in keys]

        def one_round(part: str) -> float:
            reqs = [internal_pb2.InternalRequest.FromString(e) for e in entries]
            t = backend.env.begin(write=True)
            try:
                start = time.thread_time()
                for q in reqs:
                    w = store.write(t)
                    if part == "taken":
                        kt.taken_branch(w, q.txn)
                    elif part == "check":
                        kt.check_txn(w, kt.taken_branch(w, q.txn), _no_lease)
                    elif part == "full":
                        assert kt.apply_txn(w, q.txn, _no_lease).succeeded
                    else:
                        kt.apply_put(w, q.txn.success[0].request_put, _no_lease)
                    w.end()
                return (time.thread_time() - start) / N
            finally:
                t.abort()

        for part in ("taken", "check", "full", "put"):
            us = min(one_round(part) for _ in range(9)) * 1e6
            print(f"{part}: {us:.2f} us thread CPU per Txn")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
