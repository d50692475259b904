"""Start-up refuses a data dir whose Raft log and state db cannot be reconciled (issue 12).

The decision (member/reconcile.py) from a few facts, then real servers on data dirs
crafted to be damaged: a log older than the state (it lost its tail), a state older
than the log's compaction point (recovered from the snapshot file while it exists). The
power-cut case (--unsafe-no-fsync) is in tests/crash/test_power_loss.py. Fresh data
dirs, a first start that ended before the identity was committed, and data dirs from
before the marker existed still start.
"""

from __future__ import annotations

import shutil

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_server.backend.state_db import Backend
from kubekv_server.member.reconcile import REMEDY, DataDirFacts, unreconcilable
from tests.harness import kubekv_process

# ------------------------------------------------------------ the decision


def facts(marker=True, identity=True, applied=10, first=1, last=10) -> DataDirFacts:
    return DataDirFacts(marker=marker, identity=identity, applied_index=applied,
                        log_first_index=first, log_last_index=last)


@pytest.mark.parametrize("f", [
    facts(marker=False, identity=False, applied=0, first=1, last=0),  # a new data dir
    facts(marker=False, identity=False, applied=0, first=1, last=1),  # first start cut short
    facts(marker=False, identity=True),  # a data dir from before the marker
    facts(applied=10, last=10),  # everything applied
    facts(applied=4, last=10),  # entries to replay
    facts(applied=7, first=8, last=7),  # compacted right up to the applied index
    facts(applied=9, first=6, last=12),
    facts(applied=0, first=1, last=0),  # joined an existing cluster, nothing replicated yet
])
def test_reconcilable_data_dirs_start(f):
    assert unreconcilable("/d", f) is None


def test_a_member_whose_data_is_gone_is_refused():
    why = unreconcilable("/d", facts(identity=False, applied=0, first=1, last=0))
    assert why.startswith("wal: member data lost in /d: ")
    assert "--unsafe-no-fsync" in why and why.endswith(REMEDY)


def test_a_log_that_lost_its_tail_is_refused():
    why = unreconcilable("/d", facts(applied=25, first=1, last=12))
    assert why == ("wal: log in /d ends at index 12 but the state db is applied up to "
                   f"index 25 (the log lost its tail); {REMEDY}")


def test_a_log_compacted_past_the_state_is_refused():
    why = unreconcilable("/d", facts(applied=5, first=31, last=40))
    assert why == ("failed to recover v3 backend from snapshot: the log in /d is compacted "
                   "up to index 30 but the state db is applied only up to index 5 (the "
                   f"entries in between are gone); {REMEDY}")


# ------------------------------------------------------------ real servers


def put(proc, n: int, prefix: bytes) -> None:
    for i in range(n):
        proc.kv.Put(pb.PutRequest(key=prefix + b"%d" % i, value=b"v"), timeout=10)


def refused(proc, expected: str) -> str:
    with pytest.raises(RuntimeError, match="server exited with 1"):
        proc.start()
    tail = proc.log_tail(5)
    assert 'msg="failed to start"' in tail and expected in tail, tail
    assert str(proc.data_dir) in tail and REMEDY in tail, tail
    return tail


def test_server_refuses_a_log_older_than_its_state(tmp_path):
    proc = kubekv_process(tmp_path)
    member = proc.data_dir / "member"
    try:
        proc.start()
        put(proc, 5, b"a")
        proc.stop()
        shutil.copytree(member / "log", tmp_path / "old-log")
        proc.start()
        put(proc, 10, b"b")
        proc.stop()
        shutil.rmtree(member / "log")
        shutil.copytree(tmp_path / "old-log", member / "log")
        refused(proc, "(the log lost its tail)")
    finally:
        proc.stop()


def test_a_state_older_than_the_log_compaction(tmp_path):
    """Recovered from the log's snapshot file while it exists (etcd: "recovering v3
    backend from snapshot"), refused once it is gone."""
    proc = kubekv_process(tmp_path, "--snapshot-count", "5")  # compacts the log often
    member = proc.data_dir / "member"
    try:
        proc.start()
        proc.stop()
        shutil.copytree(member / "state", tmp_path / "old-state")
        proc.start()
        put(proc, 40, b"c")
        proc.stop()
        shutil.rmtree(member / "state")
        shutil.copytree(tmp_path / "old-state", member / "state")
        proc.start()
        assert 'msg="recovering v3 backend from snapshot"' in proc.log_tail(100)
        assert proc.kv.Range(pb.RangeRequest(key=b"c", range_end=b"d")).count == 40
        proc.stop()
        shutil.rmtree(member / "state")
        shutil.copytree(tmp_path / "old-state", member / "state")
        shutil.rmtree(member / "snap")
        refused(proc, "failed to recover v3 backend from snapshot: ")
    finally:
        proc.stop()


def test_first_start_cut_short_and_old_data_dirs_still_start(tmp_path):
    proc = kubekv_process(tmp_path)
    member = proc.data_dir / "member"
    # a first start that ended after opening both databases, before the identity
    Backend(str(member / "state")).close()
    LMDBStorage(str(member / "log")).close()
    try:
        proc.start()
        put(proc, 3, b"d")
        marker = member / "identity"
        assert marker.read_text().startswith("member_id=")
        proc.stop()
        marker.unlink()  # a data dir from before the marker: restarts, and gets one
        proc.start()
        assert proc.kv.Range(pb.RangeRequest(key=b"d0")).count == 1
        assert marker.exists()
    finally:
        proc.stop()


def test_server_refuses_a_state_db_lmdb_cannot_read(tmp_path):
    """A power cut under --unsafe-no-fsync can leave some pages of a file written."""
    proc = kubekv_process(tmp_path)
    try:
        proc.start()
        put(proc, 3, b"e")
        proc.stop()
        with open(proc.data_dir / "member" / "state" / "data.mdb", "r+b") as f:
            f.write(b"\xff" * 8192)  # both meta pages
        refused(proc, "failed to open the state db of ")
    finally:
        proc.stop()
