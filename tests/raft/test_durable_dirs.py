"""A store created in a fresh directory makes every new name durable: the parent of each
directory it creates is synced, and so is the directory of each file it creates
(fsync(2): a new name reaches the disk only with its directory). Recorded by wrapping
os.fsync; tests/crash/test_power_loss.py checks the same on LazyFS, which undoes at a
cut the names whose directory was not synced."""

from __future__ import annotations

import errno
import os

import pytest

from kubekv_raft.driver import durable_dirs
from kubekv_raft.driver.durable_dirs import make_dirs
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.wal_storage import WALStorage
from kubekv_server.backend.state_db import Backend


@pytest.fixture
def synced_dirs(monkeypatch):
    """The directories os.fsync is called on, in order."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            seen.append(path)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_make_dirs_syncs_the_parent_of_each_directory_it_creates(tmp_path, synced_dirs):
    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "b" / "c"
    created = make_dirs(str(target))
    assert created == [str(tmp_path / "a" / "b"), str(target)]
    assert synced_dirs == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert target.is_dir()
    synced_dirs.clear()
    assert make_dirs(str(target)) == []  # nothing new: nothing to sync
    assert synced_dirs == []


def test_make_dirs_without_sync_syncs_nothing(tmp_path, synced_dirs):
    make_dirs(str(tmp_path / "x" / "y"), sync=False)
    assert (tmp_path / "x" / "y").is_dir()
    assert synced_dirs == []


def test_make_dirs_survives_a_parent_it_may_not_sync(tmp_path, monkeypatch, caplog):
    """A parent the user may write but not list (EACCES on opening it), or a filesystem
    that cannot sync directories (EINVAL): the directory is still created, with a
    warning naming the parent; any other failure is raised."""
    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(durable_dirs, "fsync_dir", refuse)
    make_dirs(str(tmp_path / "d"))
    assert (tmp_path / "d").is_dir()
    assert f"could not sync directory {tmp_path} after creating d in it" in caplog.text

    def fail(path):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(durable_dirs, "fsync_dir", fail)
    with pytest.raises(OSError) as exc:
        make_dirs(str(tmp_path / "e"))
    assert exc.value.errno == errno.EIO


def test_a_fresh_log_and_state_db_make_their_names_durable(tmp_path, synced_dirs):
    data = tmp_path / "data"
    member = data / "member"
    wal = WALStorage(str(member / "log"))
    try:
        # the parents of data, member and log, then log itself (its first file's name)
        for d in (tmp_path, data, member, member / "log"):
            assert str(d) in synced_dirs, d
    finally:
        wal.close()
    synced_dirs.clear()
    backend = Backend(str(member / "state"))
    try:
        assert str(member) in synced_dirs  # the new state directory's entry
        assert str(member / "state") in synced_dirs  # data.mdb and lock.mdb
    finally:
        backend.close()
    synced_dirs.clear()
    legacy = LMDBStorage(str(tmp_path / "other" / "raft"))
    try:
        assert str(tmp_path / "other") in synced_dirs
        assert str(tmp_path / "other" / "raft") in synced_dirs
    finally:
        legacy.close()


def test_reopening_syncs_no_directory(tmp_path, synced_dirs):
    member = tmp_path / "member"
    WALStorage(str(member / "log")).close()
    Backend(str(member / "state")).close()
    synced_dirs.clear()
    WALStorage(str(member / "log")).close()
    Backend(str(member / "state")).close()
    assert synced_dirs == []


def test_unsafe_no_fsync_syncs_no_directory(tmp_path, synced_dirs):
    member = tmp_path / "member"
    WALStorage(str(member / "log"), fsync=False).close()
    Backend(str(member / "state"), fsync=False).close()
    assert synced_dirs == []
