"""A member whose disk fails stops, as etcd does, instead of serving on without Raft.

etcd exits when its WAL cannot save a Ready (`lg.Fatal("failed to save Raft hard state
and entries")`) and panics on a broken Raft invariant ("tocommit(N) is out of range
[lastIndex(M)]. Was the raft log corrupted, truncated, or lost?"). Before, kubekv's Raft
loop ended there while the process went on: reads were answered, writes hung until
their timeout, and nothing told a supervisor. Here the log's fdatasync fails with EIO
(a `sitecustomize` on the server's path, switched on by a file): the member logs one
critical line and exits with status 1; what it acknowledged before is there after a
restart on a good disk.
"""

from __future__ import annotations

import os

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_testing.polling import wait_for
from tests.harness import kubekv_process

FAILING_FSYNC = '''
import os

_real = os.fdatasync
_marker = os.environ["KUBEKV_TEST_DISK_FAILED"]


def fdatasync(fd):
    if os.path.exists(_marker):
        raise OSError(5, "Input/output error")
    return _real(fd)


os.fdatasync = fdatasync
'''


def test_a_member_whose_log_cannot_sync_exits_and_keeps_what_it_acknowledged(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAILING_FSYNC)
    failed = tmp_path / "disk-failed"
    proc = kubekv_process(tmp_path)
    good_env = dict(proc.env)
    proc.env = {**good_env, "KUBEKV_TEST_DISK_FAILED": str(failed),
                "PYTHONPATH": os.pathsep.join(p for p in (str(site), good_env.get("PYTHONPATH"))
                                              if p)}
    proc.start()
    try:
        for i in range(20):
            proc.kv.Put(pb.PutRequest(key=b"kept%d" % i, value=b"v"), timeout=10)
        failed.touch()
        with pytest.raises(grpc.RpcError):
            proc.kv.Put(pb.PutRequest(key=b"never", value=b"v"), timeout=10)
        assert proc.proc.wait(10) == 1, proc.log_tail()
        fatal = [line for line in proc.log_tail(200).splitlines() if "level=CRITICAL" in line]
        assert len(fatal) == 1 and 'msg="raft stopped: the member exits"' in fatal[0] \
            and "Input/output error" in fatal[0] and "exit_status=1" in fatal[0], fatal

        proc.env = good_env  # a good disk again
        proc.start()
        got = proc.kv.Range(pb.RangeRequest(key=b"kept", range_end=b"kepu"), timeout=10)
        assert sorted(kv.key for kv in got.kvs) == sorted(b"kept%d" % i for i in range(20))
    finally:
        proc.stop()


def test_a_follower_whose_log_lost_acknowledged_entries_exits_with_etcds_words(tmp_path):
    """A follower comes back with a log shorter than what it acknowledged (a disk that
    lost synced data: its state db, committed rarely here, is behind the cut, so start-up
    has nothing to refuse). The leader's first heartbeat tells it to commit past its last
    index: etcd panics there, and this member exits with status 1 and etcd's words
    instead of staying up with its Raft stopped."""
    from kubekv_raft.driver.wal_storage import WALStorage
    from kubekv_testing.cluster import Cluster

    with Cluster(tmp_path, 3) as c:
        c.start()
        f = c.followers()[0]
        f.stop()
        f.flags += ["--backend-batch-interval=1h", "--backend-batch-limit=1000000"]
        f.start()
        leader = c.wait_leader()
        for i in range(60):
            leader.kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v" * 100), timeout=10)
        rev = leader.kv.Range(pb.RangeRequest(key=b"k0"), timeout=10).header.revision
        wait_for(lambda: f.kv.Range(pb.RangeRequest(key=b"k0", serializable=True),
                                    timeout=10).header.revision >= rev,
                 10, "the follower applying (and acknowledging) every put")
        f.kill()  # its state db keeps what it committed at start
        log_dir = f.data_dir / "member" / "log"
        s = WALStorage(str(log_dir))
        last, cut_at = s.last_index(), s._offs[-20] - 1  # inside the record of a late entry
        s.close()
        wal = sorted(log_dir.glob("*.wal"))[-1]
        os.truncate(wal, cut_at)
        s = WALStorage(str(log_dir))
        assert s.last_index() <= last - 20
        s.close()
        f.launch()
        assert f.proc.wait(20) == 1, f.log_tail()
        fatal = [line for line in f.log_tail(400).splitlines() if "level=CRITICAL" in line]
        assert len(fatal) == 1 and "is out of range [lastIndex(" in fatal[0] and \
            "Was the raft log corrupted, truncated, or lost?" in fatal[0], fatal
