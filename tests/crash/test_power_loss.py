"""Power loss under concurrent writes: what was not fsynced is gone when the server restarts.

The data dirs live on LazyFS mounts (kubekv_testing/lazyfs.py): a FUSE filesystem that
keeps written data in memory until the file is fsynced and drops it on a power cut. Each
round starts writers (tests/crash/workload.py), SIGKILLs the server at a random moment,
cuts the power of its filesystem, restarts it on the same data dir and checks the store
against what the clients saw: acknowledged writes survive at their revision, a Txn is
whole or absent, revisions have no gaps and continue right after the recovered one. Some
cuts let a random part of the unsynced pages reach the disk first (kernel write-back).
The single member's log is compacted often (--snapshot-count), so recovery rests on the
synced state db. The 3-member variant cuts one member at a time and checks that HashKV
agrees across members once it has caught up (from the log; by snapshot too in the soak
variant). kill -9 alone (test_kill9.py) cannot catch a missing fsync: the kernel keeps
what a killed process wrote; here it is lost. The cuts found three bugs: a cut right after
Defragment lost the state db (fixed: the copy is synced before the pointer moves),
--unsafe-no-fsync came back as a fresh cluster (fixed: the member refuses to start on a
data dir whose log and state cannot be reconciled, member/reconcile.py), and a cut right
after the log's file was rewritten lost the records appended meanwhile (fixed: the file
is written through its descriptor, so the fdatasync covers every byte). Since LazyFS
also undoes names whose directory was not synced, a cut took a fresh member's whole data
dir (fixed: kubekv_raft/driver/durable_dirs.py syncs each new directory into its parent).
Half of the cuts first commit the names, as ext4's journal does within seconds.

A failure names its seed; rerun it with KUBEKV_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import threading
import time
from collections.abc import Callable

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_raft.driver.durable_dirs import fsync_dir
from kubekv_testing.cluster import Cluster, ClusterMember
from kubekv_testing.lazyfs import LazyFS, names_dir
from kubekv_testing.polling import wait_for
from tests.harness import kubekv_process

from .rounds import join_writers, kill_rounds, seed_from_env
from .workload import PREFIX, RPC_TIMEOUT, History

# ------------------------------------------------------------ the filesystem itself


def test_lazyfs_drops_unsynced_data_and_keeps_synced_data(lazy_mounts):
    """Otherwise the power-loss tests below could not fail."""
    fs = lazy_mounts("disk")
    mnt = fs.mountpoint
    (mnt / "dir").mkdir()
    with open(mnt / "dir" / "unsynced", "wb") as f:
        f.write(b"gone")
    with open(mnt / "synced", "wb") as f:
        f.write(b"kept" * 2000)
        f.flush()
        os.fdatasync(f.fileno())
        f.seek(4)
        f.write(b"LOST")  # overwrites part of a synced page, then grows the file
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    fd = os.open(mnt / "dsync", os.O_WRONLY | os.O_CREAT | os.O_DSYNC)
    os.write(fd, b"each write is synced")
    os.close(fd)
    with open(mnt / "renamed.tmp", "wb") as f:
        f.write(b"moved")
        f.flush()
        os.fsync(f.fileno())
    os.rename(mnt / "renamed.tmp", mnt / "renamed")
    with open(mnt / "truncated", "wb") as f:
        f.write(b"old")
        f.flush()
        os.fsync(f.fileno())
    with open(mnt / "truncated", "wb") as f:  # O_TRUNC is durable at once, "new" is not
        f.write(b"new")
    fsync_dir(str(mnt))  # the names so far are durable
    fsync_dir(str(mnt / "dir"))
    # name changes after the directories' last sync, each with its data synced
    write_synced(mnt / "new-name", b"gone with its name")
    (mnt / "dir" / "new-dir").mkdir()
    write_synced(mnt / "dir" / "new-dir" / "f", b"gone with its directory")
    fsync_dir(str(mnt / "dir" / "new-dir"))  # its entry in "dir" is still unsynced
    write_synced(mnt / "over.tmp", b"new content")
    os.rename(mnt / "over.tmp", mnt / "renamed")  # over a durable name: the old comes back
    os.unlink(mnt / "dsync")  # a durable name removed: comes back
    assert (mnt / "synced").read_bytes()[:12] == b"keptLOSTkept"  # unsynced data is readable
    assert (mnt / "dir" / "unsynced").read_bytes() == b"gone"
    assert fs.pending() == (3, 4 * 4096)  # "unsynced", "truncated", two pages of "synced"
    copy = fs.backing.with_name("durable-copy")
    fs.durable_copy(copy)  # what the cut below will leave, taken without cutting

    fs.power_cut()

    for p in sorted(mnt.rglob("*")):
        q = copy / p.relative_to(mnt)
        assert q.is_dir() if p.is_dir() else q.read_bytes() == p.read_bytes(), p
    assert sorted(q.relative_to(copy) for q in copy.rglob("*")) == \
        sorted(p.relative_to(mnt) for p in mnt.rglob("*"))

    assert (mnt / "dir" / "unsynced").read_bytes() == b"", "unsynced data survived a cut"
    assert (mnt / "synced").read_bytes() == b"kept" * 2000, "synced data changed at a cut"
    assert (mnt / "dsync").read_bytes() == b"each write is synced"
    assert (mnt / "renamed").read_bytes() == b"moved"
    assert not (mnt / "renamed.tmp").exists()
    assert (mnt / "truncated").read_bytes() == b""
    assert not (mnt / "new-name").exists(), "a name survived without its directory's sync"
    assert not (mnt / "dir" / "new-dir").exists()
    assert not (mnt / "over.tmp").exists()
    assert (fs.lost_files, fs.lost_bytes) == (3, 4 * 4096)


def write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_lazyfs_names_need_their_directory_synced(lazy_mounts):
    """A name created, removed or renamed is undone by a cut until its directory is
    synced; once it is, the name survives, and the copy a cut would leave agrees."""
    fs = lazy_mounts("disk")
    mnt = fs.mountpoint
    (mnt / "d").mkdir()
    write_synced(mnt / "d" / "a", b"a")
    write_synced(mnt / "d" / "b", b"b")
    fsync_dir(str(mnt))
    fsync_dir(str(mnt / "d"))
    write_synced(mnt / "d" / "c.tmp", b"c")
    os.rename(mnt / "d" / "c.tmp", mnt / "d" / "c")
    os.rename(mnt / "d" / "a", mnt / "d" / "a2")
    os.unlink(mnt / "d" / "b")
    copy = fs.backing.with_name("copy-unsynced")
    fs.durable_copy(copy)
    assert sorted(p.name for p in (copy / "d").iterdir()) == ["a", "b"]
    fs.power_cut()
    assert sorted(p.name for p in (mnt / "d").iterdir()) == ["a", "b"]
    assert (mnt / "d" / "b").read_bytes() == b"b"
    write_synced(mnt / "d" / "c.tmp", b"c")
    os.rename(mnt / "d" / "c.tmp", mnt / "d" / "c")
    os.unlink(mnt / "d" / "b")
    fsync_dir(str(mnt / "d"))
    fs.power_cut()
    assert sorted(p.name for p in (mnt / "d").iterdir()) == ["a", "c"]
    assert (mnt / "d" / "c").read_bytes() == b"c"
    assert not list(pathlib.Path(names_dir(fs.backing), "stash").iterdir())


def test_lazyfs_writeback_before_a_cut(lazy_mounts):
    """power_cut(writeback=f) persists a random fraction f of the unsynced pages first."""
    fs = lazy_mounts("disk")
    pages = [bytes([i]) * 4096 for i in range(1, 65)]
    for name in ("all", "some"):
        with open(fs.mountpoint / name, "wb") as f:
            f.write(b"".join(pages))
    fsync_dir(str(fs.mountpoint))  # their names
    fs.power_cut(writeback=1.0)
    assert (fs.mountpoint / "all").read_bytes() == b"".join(pages)
    with open(fs.mountpoint / "some", "r+b") as f:
        f.write(b"\xff" * 4096 * 64)
    dirty = fs.pending()
    copy = fs.backing.with_name("durable-copy")
    fs.durable_copy(copy, writeback=0.5, seed=7)  # the same pages as the cut below
    assert fs.pending() == dirty  # the mount keeps them dirty
    fs.power_cut(writeback=0.5, seed=7)
    got = (fs.mountpoint / "some").read_bytes()
    assert (copy / "some").read_bytes() == got
    kept = [got[i * 4096:(i + 1) * 4096] for i in range(64)]
    assert all(page in (b"\xff" * 4096, old) for page, old in zip(kept, pages, strict=True))
    assert 8 < sum(page == b"\xff" * 4096 for page in kept) < 56


def test_lazyfs_under_lmdb(lazy_mounts):
    """LMDB maps its files through the page cache of the mount; its commits survive a cut
    as its sync flags promise (kubekv's state db: metasync off, so the last commit may go)."""
    import lmdb

    fs = lazy_mounts("disk")
    envs = {"log": dict(sync=True, metasync=True), "state": dict(sync=True, metasync=False),
            "nosync": dict(sync=False, metasync=False)}
    for name, flags in envs.items():
        env = lmdb.open(str(fs.mountpoint / name), map_size=1 << 30, writemap=False, **flags)
        fsync_dir(str(fs.mountpoint))  # the names LMDB created (kubekv: durable_dirs.py)
        fsync_dir(str(fs.mountpoint / name))
        for i in range(100):
            with env.begin(write=True) as txn:
                txn.put(b"k%03d" % i, b"v" * (i * 100))
        with env.begin() as txn:
            assert txn.get(b"k099") == b"v" * 9900
        env.close()
    fs.power_cut()
    counts = {}
    for name in envs:
        env = lmdb.open(str(fs.mountpoint / name), map_size=1 << 30)
        with env.begin() as txn:
            counts[name] = txn.stat()["entries"]
        env.close()
    assert counts["log"] == 100
    assert counts["state"] in (99, 100)
    assert counts["nosync"] == 0


# ------------------------------------------------------------ one member


def power_loss_rounds(tmp_path: pathlib.Path, fs: LazyFS, rounds: int, seed: int,
                      flags: tuple[str, ...] = (), writers: int = 6, max_run: float = 0.8,
                      budget: float = 45.0) -> History:
    """Write, SIGKILL, cut the power, restart, verify (tests/crash/rounds.py)."""
    proc = kubekv_process(fs.mountpoint, *flags)
    proc.log_path = tmp_path / "kubekv.log"  # not on the mount: a cut would eat it

    def cut(rng: random.Random) -> None:
        # mostly lose everything unsynced; sometimes part of it reached the disk already,
        # and the names created meanwhile, half of the time (a journal commit)
        if rng.random() < 0.5:
            fs.commit_names()
        fs.power_cut(writeback=rng.choice([0.0, 0.0, rng.random()]),
                     seed=rng.randrange(1 << 30))

    return kill_rounds(proc, History(writers), seed, rounds, max_run=max_run, budget=budget,
                       compact_chance=0.3, label=b"after power cut", after_kill=cut,
                       context=lambda: f" cuts={fs.cuts}")


def test_power_loss_during_concurrent_writes(tmp_path, lazy_mounts):
    disk = lazy_mounts("disk")
    # a small --snapshot-count compacts the log, so recovery cannot replay everything
    history = power_loss_rounds(tmp_path, disk, rounds=14, seed=seed_from_env(),
                                flags=("--snapshot-count", "100"))
    assert len(history.rounds) >= 6, history.rounds
    assert sum(r["acked"] for r in history.rounds) > 100, history.rounds
    assert history.hash_checks >= 1, "HashKV of recovered history was never compared"
    assert disk.lost_bytes > 0, "no cut found unsynced data to drop"


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_power_loss_soak(tmp_path, lazy_mounts):
    history = power_loss_rounds(tmp_path, lazy_mounts("disk"), rounds=120,
                                seed=seed_from_env(), flags=("--snapshot-count", "1000"),
                                writers=12, max_run=2.0, budget=1500)
    assert len(history.rounds) == 120


def test_power_loss_with_unsafe_no_fsync_is_detected(tmp_path, lazy_mounts):
    """With --unsafe-no-fsync nothing reaches the disk: after a cut the log and state db
    files are there but empty. Before issue 12 the member came back as a fresh empty
    cluster at revision 1, the acknowledged writes silently gone; now it refuses to start
    (as etcd, which elects no leader there) and says what to do."""
    disk = lazy_mounts("disk")
    proc = kubekv_process(disk.mountpoint, "--unsafe-no-fsync")
    proc.log_path = tmp_path / "kubekv.log"
    try:
        proc.start()
        for i in range(20):
            proc.kv.Put(pb.PutRequest(key=PREFIX + b"%d" % i, value=b"acked"),
                        timeout=RPC_TIMEOUT)
        proc.kill()
        disk.commit_names()  # ext4's journal commits names within seconds, not the data
        disk.power_cut()
        assert (proc.data_dir / "member" / "identity").exists()  # a member's data dir
        with pytest.raises(RuntimeError, match="server exited with 1"):
            proc.start()  # never serves: no Range on an empty store answers
    finally:
        proc.stop()
    tail = proc.log_tail(5)
    assert 'msg="failed to start"' in tail and "wal: member data lost in " in tail, tail
    assert str(proc.data_dir) in tail and "etcdctl snapshot restore" in tail, tail
    assert "etcdctl member remove" in tail, tail


def write_then_cut(tmp_path: pathlib.Path, proc, disks: list[LazyFS],
                   before_kill: Callable[[], object] | None = None) -> History:
    """Four writers for a second, `before_kill()`, SIGKILL, cut every disk, restart, and
    check the store against what the writers were told."""
    proc.log_path = tmp_path / "kubekv.log"  # not on a mount: a cut would eat it
    history = History(writers=4)
    try:
        proc.start()
        stop = threading.Event()
        ws = history.start_writers(proc.endpoint, 1, stop)
        time.sleep(1.0)  # (how long they write, not a wait for something)
        stop.set()
        join_writers(ws)
        if before_kill is not None:
            before_kill()
        proc.kill()
        for disk in disks:
            disk.power_cut()
        proc.start()
        history.verify(proc.kv, ws, proc.maintenance)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- server log tail ---\n{proc.log_tail(5)}") from exc
    finally:
        proc.stop()
    return history


def test_power_loss_with_the_log_on_its_own_disk(tmp_path, lazy_mounts):
    """--wal-dir on a second disk, in directories the member creates: a cut of both disks
    (no journal commit of names) keeps every acknowledged write. Before the member synced
    each new directory into its parent, the cut took the log's directories and the data
    dir's, and the member came back as a new cluster at revision 1."""
    disk, log_disk = lazy_mounts("disk"), lazy_mounts("logdisk")
    proc = kubekv_process(disk.mountpoint, "--wal-dir", str(log_disk.mountpoint / "a" / "wal"))
    history = write_then_cut(tmp_path, proc, [disk, log_disk])
    assert history.revision > 1


def test_power_loss_right_after_defragment(tmp_path, lazy_mounts):
    """Defragment, then a power cut before the next commit. Before the fix the new state
    db's pages were never synced while the pointer to it was, and the log no longer held
    what it lost (the server came back bootstrapping and failed: "state.commit 1 is out
    of range")."""
    disk = lazy_mounts("disk")
    proc = kubekv_process(disk.mountpoint, "--snapshot-count", "20")  # the log is compacted
    write_then_cut(tmp_path, proc, [disk], before_kill=lambda: proc.maintenance.Defragment(
        pb.DefragmentRequest(), timeout=RPC_TIMEOUT))


# ------------------------------------------------------------ three members


def keep_log_as_cut(data_dir: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy a member's raft log directory as a power cut left it, before its restart
    replays (and truncates) it: if the restart then finds less than the member had
    acknowledged, this copy tells a write lost by the disk from one the replay dropped.
    Only the last cut's copy is kept."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(data_dir / "member" / "log", dest)


def cluster_power_loss_rounds(tmp_path: pathlib.Path, lazy_mounts, rounds: int, seed: int,
                              flags: tuple[str, ...] = (), writers: int = 4,
                              max_run: float = 0.8, budget: float = 40.0
                              ) -> tuple[History, int, int]:
    """Each round cuts the power of one member (sometimes the one written to) mid-writes,
    restarts it, and checks the store and that HashKV agrees across the members."""
    rng = random.Random(seed)
    cluster = Cluster(tmp_path / "cluster", 3, flags=flags)
    disks: dict[str, LazyFS] = {}
    for m in cluster.members:  # each member on its own disk, so a cut hits one of them
        disks[m.name] = lazy_mounts(m.name)
        m.data_dir = disks[m.name].mountpoint / f"{m.name}.kubekv"
    history = History(writers)
    deadline = time.monotonic() + budget
    hashes = 0
    rnd = 0
    cut_log = tmp_path / "raft-log-as-the-last-cut-left-it"
    try:
        cluster.start()
        for rnd in range(rounds):
            if time.monotonic() > deadline:
                break
            victim = rng.choice(cluster.members)
            target: ClusterMember = (victim if rng.random() < 0.4 else
                                     rng.choice([m for m in cluster.members if m is not victim]))
            stop = threading.Event()
            ws = history.start_writers(target.endpoint, rng.randrange(1 << 30), stop)
            time.sleep(rng.uniform(0.1, max_run))
            victim.kill()
            if rng.random() < 0.5:  # the names created meanwhile reached the disk
                disks[victim.name].commit_names()
            disks[victim.name].power_cut(writeback=rng.choice([0.0, rng.random()]),
                                         seed=rng.randrange(1 << 30))
            keep_log_as_cut(victim.data_dir, cut_log)
            if target is not victim:  # writes go on while the member is down; long enough,
                time.sleep(rng.uniform(0.0, 1.5))  # it may need a snapshot to catch up
            stop.set()
            join_writers(ws)
            victim.restart()
            cluster.wait_converged(timeout=60)
            history.verify(target.kv, ws, target.maintenance)
            history.probe(target.kv, b"after power cut %d of %s" % (rnd, victim.name.encode()))
            revision = history.revision
            wait_for(lambda r=revision: all(m.status().revision >= r
                                            for m in cluster.members),
                     30, f"every member at revision {revision}")
            got = {m.name: m.hash_kv(revision) for m in cluster.members}
            if len({(h.hash, h.compact_revision) for h in got.values()}) != 1:
                raise AssertionError(f"HashKV at revision {revision} differs after power cut of "
                                     f"{victim.name}: " + ", ".join(
                                         f"{n}={h.hash:#x}/{h.compact_revision}"
                                         for n, h in got.items()))
            hashes += 1
    except Exception as exc:
        tails = "\n".join(f"--- {m.name} log tail ---\n{m.log_tail(15)}" for m in cluster.members)
        raise AssertionError(f"seed={seed} round={rnd}: {exc}\n{tails}\nthe victim's raft log "
                             f"as the cut left it (before its restart replayed it): {cut_log} "
                             f"(pytest keeps its last 3 runs' directories)") from exc
    finally:
        cluster.close()
    return history, hashes, sum(d.lost_bytes for d in disks.values())


def test_power_loss_of_one_member_of_three(tmp_path, lazy_mounts):
    """The member back from a cut catches up from the leader's log (the default
    --snapshot-count keeps it); the soak variant also catches up by snapshot."""
    history, hashes, lost = cluster_power_loss_rounds(tmp_path, lazy_mounts, rounds=6,
                                                      seed=seed_from_env())
    assert hashes >= 3, history.rounds
    assert lost > 0, "no cut found unsynced data to drop"
    assert sum(r["acked"] for r in history.rounds) > 50, history.rounds


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_power_loss_of_one_member_of_three_soak(tmp_path, lazy_mounts):
    """With a small --snapshot-count a member back from a cut often needs a snapshot.
    This found a lagging member that took its own snapshot while a received one waited
    to be installed deleting the received file, then never applying again (fixed:
    prune leaves received snapshots to the peer port's stale-file cleanup)."""
    history, hashes, _ = cluster_power_loss_rounds(tmp_path, lazy_mounts, rounds=80,
                                                   seed=seed_from_env(),
                                                   flags=("--snapshot-count", "100"),
                                                   writers=8, max_run=2.0, budget=1500)
    assert hashes == 80
