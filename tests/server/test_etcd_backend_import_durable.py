"""An imported etcd backend is durable before its file is renamed to `db.imported`:
otherwise a power cut could keep the rename and undo the import (the state db's
commits do not sync LMDB's meta page), and the member would start empty, the backup's
file already set aside."""

from __future__ import annotations

import os

from kubekv_server.member import bootstrap


class _Backend:
    fsync = True
    env = None

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def sync(self) -> None:
        self.events.append("sync")


class _MVCC:
    def revisions(self) -> tuple[int, int]:
        return (1, 0)


def test_the_import_is_synced_before_its_file_is_renamed(tmp_path, monkeypatch):
    snap = tmp_path / "member" / "snap"
    snap.mkdir(parents=True)
    (snap / "db").write_bytes(b"an etcd backend")
    events: list[str] = []
    monkeypatch.setattr(bootstrap.bbolt_import, "load",
                        lambda *a: events.append("load") or 7)
    real_replace = os.replace
    monkeypatch.setattr(bootstrap.os, "replace",
                        lambda a, b: events.append("rename") or real_replace(a, b))
    monkeypatch.setattr(bootstrap, "fsync_dir", lambda d: events.append(f"fsync {d}"))
    backend = _Backend(events)
    assert bootstrap.import_etcd_backend(str(tmp_path), backend, _MVCC(), None)
    assert events == ["load", "sync", "rename", f"fsync {snap}"]
    assert (snap / "db.imported").exists() and not (snap / "db").exists()
