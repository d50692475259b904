"""A data dir whose state db was written when the live table held KeyValues: the
member upgrades it at start and serves every key, revision and history as before, or
refuses to start if its tables contradict each other."""

from __future__ import annotations

import subprocess

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.backend.state_db import Backend
from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.live_layout import LAYOUT_KEY


def _state(kv) -> tuple:
    now = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    old = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=3))
    return (now.header.revision, [(x.key, x.value, x.version, x.mod_revision) for x in now.kvs],
            [(x.key, x.value) for x in old.kvs])


def _downgrade(state_dir: str, corrupt: bytes | None = None) -> int:
    """Write the live table as the older layout had it (with `corrupt`: that key's row
    not what its history holds); returns the rows rewritten."""
    backend = Backend(state_dir)
    dbs = MVCCStore(backend.env)._dbs
    with backend.env.begin(write=True) as txn:
        rows = [(sk, txn.get(rb, db=dbs.key)) for sk, rb in txn.cursor(db=dbs.live)]
        for sk, kv in rows:
            txn.put(sk, b"\n\x01?not its history" if sk == corrupt else kv, db=dbs.live)
        txn.delete(LAYOUT_KEY, db=dbs.meta)
    backend.close()
    return len(rows)


def test_a_member_upgrades_an_older_state_db_and_reads_the_same(kubekv):
    kv = kubekv.kv
    for i in range(20):
        kv.Put(pb.PutRequest(key=b"k%02d" % i, value=b"v%d" % i))
    kv.Put(pb.PutRequest(key=b"k00", value=b"newer"))
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"k01"))
    before = _state(kv)
    kubekv.stop()
    assert _downgrade(str(kubekv.data_dir / "member" / "state")) == 19

    kubekv.start()
    kv = kubekv.kv
    assert _state(kv) == before
    assert "event=mvcc_layout_upgraded live_rows=19" in kubekv.log_path.read_text()
    kv.Put(pb.PutRequest(key=b"k02", value=b"after"))
    r = kv.Range(pb.RangeRequest(key=b"k02"))
    assert (r.kvs[0].value, r.kvs[0].version) == (b"after", 2)


def test_a_state_db_whose_tables_contradict_each_other_refuses_the_start(kubekv):
    kubekv.kv.Put(pb.PutRequest(key=b"a", value=b"1"))
    kubekv.stop()
    _downgrade(str(kubekv.data_dir / "member" / "state"), corrupt=b"a")
    done = subprocess.run(kubekv.argv, env=kubekv.env, cwd=str(kubekv.data_dir.parent),
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 1
    assert 'msg="failed to start" error="state db: a live key (1 bytes) differs from its ' \
        'newest history row"' in out
    assert "Traceback" not in out
