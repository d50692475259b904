"""--auto-compaction-mode / --auto-compaction-retention: etcd's schedules, its flag
parsing, and a running kubekv compacting by itself next to a real etcd."""

from __future__ import annotations

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.config.flags import FlagError, parse_args
from kubekv_server.member.auto_compaction import PeriodicSchedule, RevisionSchedule
from kubekv_testing.polling import wait_for
from tests.harness import etcd_process, kubekv_process, running

MIN = 60.0


def simulate(period: float, until: float, leader=lambda t: True) -> list[tuple[float, int]]:
    """Drive a PeriodicSchedule as etcd's loop does (sample, wait a retry interval, maybe
    compact), with the revision equal to the minute; returns (time, revision) compacted."""
    s = PeriodicSchedule(period, start=0.0)
    t, done = 0.0, []
    while t < until:
        s.sample(int(t / MIN))
        t = round(t + s.retry_interval, 6)
        if not leader(t):
            continue
        rev = s.due(t)
        if rev is not None:
            done.append((t / MIN, rev))
            s.succeeded(t)
    return done


def test_periodic_hourly_keeps_one_period_of_history():
    # etcd: samples every period/10; first compaction one period after start, at the
    # revision of the start; then every period, at the oldest of the last 11 samples.
    assert simulate(60 * MIN, 3 * 60 * MIN + 1) == [(60, 0), (120, 54), (180, 114)]


def test_periodic_longer_than_an_hour_compacts_hourly():
    # 2 h retention: retry 6 min, 21 samples kept, compactions every hour after the first.
    assert simulate(120 * MIN, 4 * 60 * MIN + 1) == [(120, 0), (180, 54), (240, 114)]


def test_periodic_short_period():
    assert simulate(10 * MIN, 30 * MIN + 1) == [(10, 0), (20, 9), (30, 19)]


def test_periodic_only_on_the_leader_and_catches_up_when_it_leads():
    # not leading for the first 90 minutes: nothing; at the first tick as leader, the
    # oldest of the 11 samples kept meanwhile (taken at minute 30), then hourly again
    got = simulate(60 * MIN, 3 * 60 * MIN + 1, leader=lambda t: t > 90 * MIN)
    assert got == [(96, 30), (156, 90)]


def test_revision_schedule():
    s = RevisionSchedule(retention=10)
    assert s.due(5) is None  # nothing to compact yet
    assert s.due(15) == 5
    s.succeeded(5)
    assert s.due(15) is None  # no new writes: not again
    assert s.due(40) == 30


@pytest.mark.parametrize("flags, mode, retention", [
    ([], "periodic", 0.0),
    (["--auto-compaction-retention", "1"], "periodic", 3600.0),
    (["--auto-compaction-retention=30m"], "periodic", 1800.0),
    (["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"],
     "revision", 1000.0),
])
def test_flags(flags, mode, retention):
    cfg = parse_args(flags)
    assert (cfg.auto_compaction_mode, cfg.auto_compaction_retention) == (mode, retention)


@pytest.mark.parametrize("flags, message", [
    (["--auto-compaction-mode", "hourly"], 'unknown auto-compaction-mode "hourly"'),
    (["--auto-compaction-retention", "soon"],
     'error parsing CompactionRetention: time: invalid duration "soon"'),
])
def test_bad_flags(flags, message):
    with pytest.raises(FlagError) as exc:
        parse_args(flags)
    assert str(exc.value) == message


def _compacted_below(proc, rev: int) -> bool:
    try:
        proc.kv.Range(pb.RangeRequest(key=b"k", revision=rev), timeout=5)
        return False
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.OUT_OF_RANGE, exc
        assert exc.details() == "etcdserver: mvcc: required revision has been compacted"
        return True


def _puts(proc, n: int) -> int:
    rev = 0
    for i in range(n):
        rev = proc.kv.Put(pb.PutRequest(key=b"k", value=b"%d" % i), timeout=5).header.revision
    return rev


def test_periodic_compaction_runs_like_etcds(tmp_path):
    """With a one-second retention both servers compact their history by themselves."""
    flags = ("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s")
    with running(kubekv_process(tmp_path, *flags)) as k, \
            running(etcd_process(tmp_path, *flags)) as e:
        for proc in (k, e):
            _puts(proc, 5)
        wait_for(lambda: all(_compacted_below(p, 2) for p in (k, e)), 20,
                 "an automatic compaction on both", interval=0.2)
        assert "completed auto periodic compaction" in k.log_path.read_text()


def test_revision_compaction_keeps_the_last_revisions(tmp_path, monkeypatch):
    """Revision mode keeps `retention` revisions (etcd checks every 5 minutes; the test
    shortens kubekv's interval)."""
    monkeypatch.setenv("KUBEKV_AUTO_COMPACTION_REVISION_INTERVAL", "0.3")
    flags = ("--auto-compaction-mode", "revision", "--auto-compaction-retention", "3")
    with running(kubekv_process(tmp_path, *flags)) as k:
        rev = _puts(k, 8)
        wait_for(lambda: _compacted_below(k, rev - 4), 20, "an automatic compaction",
                 interval=0.1)
        assert not _compacted_below(k, rev - 3)  # exactly `retention` revisions kept
        log = k.log_path.read_text().replace('"', "").replace("msg=", "")
        assert f"completed auto revision compaction revision={rev - 3}" in log
