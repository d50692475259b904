"""LazyFS's directory entries: a name created, removed or renamed since its directory was
last fsynced is undone by a power cut.

fsync(2): "Calling fsync() does not necessarily ensure that the entry in the directory
containing the file has also reached disk. For that an explicit fsync() on a file
descriptor for the directory is also needed." ext4 and xfs usually commit such an entry
with the next journal commit (seconds, or any fsync), so a program that forgets the
directory's fsync rarely loses a name there; this model always does, so a test finds the
missing fsync.

The FUSE daemon records each change (`created`, `removed`, `renamed`) in a journal file
beside the backing tree before a cut can happen, and `synced(dir)` (fsync on a
directory) drops that directory's changes. A cut SIGKILLs the daemon; the next daemon
undoes what the journal still holds, newest first, before it serves (`recover`).
`undo_into` does the same to a copy of the tree (`LazyFS.durable_copy`). A name a change
removed or replaced is kept as a hard link in a stash until its directory is synced, so
the cut can bring it back. A rename belongs to the directory of its new name (within
one directory, as the log and the state db rename). Paths are the mount's ("/a/b").
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable


def _dir(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


class NameJournal:
    """The unsynced directory changes of the tree at `root`, journaled in `meta`."""

    def __init__(self, root: str, meta: str) -> None:
        self.root = root
        self.meta = meta
        self.stash_dir = os.path.join(meta, "stash")
        self.journal_path = os.path.join(meta, "journal")
        self.changes: list[dict] = []
        self._stashed = 0
        self._journal = None

    def _real(self, root: str, path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    # ------------------------------------------------------------ mount

    def recover(self) -> int:
        """At mount: undo the changes the last daemon left unsynced (a power cut), then
        start an empty journal. Returns how many changes were undone."""
        changes = self._read()
        _undo(self.root, changes, self.stash_dir, os.link)
        shutil.rmtree(self.meta, ignore_errors=True)
        os.makedirs(self.stash_dir)
        self._journal = open(self.journal_path, "a")  # noqa: SIM115 (held for the mount)
        return len(changes)

    def _read(self) -> list[dict]:
        try:
            with open(self.journal_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        changes: list[dict] = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:  # (the daemon is killed between operations, not in one)
                break
            if "synced" in rec:
                changes = [c for c in changes if c["dir"] != rec["synced"]]
            else:
                changes.append(rec)
        return changes

    def _log(self, rec: dict) -> None:
        if "synced" not in rec:
            self.changes.append(rec)
        self._journal.write(json.dumps(rec) + "\n")
        self._journal.flush()  # in the host's page cache: outlives the daemon's SIGKILL

    # ------------------------------------------------------------ changes

    def stash(self, path: str) -> str | None:
        """Keep what `path` names now (a file or symlink) for a cut to bring back; None
        for a directory (an empty one, as rmdir and rename require: made anew)."""
        real = self._real(self.root, path)
        if os.path.isdir(real) and not os.path.islink(real):
            return None
        self._stashed += 1
        name = str(self._stashed)
        os.link(real, os.path.join(self.stash_dir, name), follow_symlinks=False)
        return name

    def drop_stash(self, name: str | None) -> None:
        if name is not None:
            os.unlink(os.path.join(self.stash_dir, name))

    def created(self, path: str) -> None:
        self._log({"kind": "created", "dir": _dir(path), "path": path})

    def removed(self, path: str, stash: str | None) -> None:
        self._log({"kind": "removed", "dir": _dir(path), "path": path, "stash": stash})

    def renamed(self, old: str, new: str, stash: str | None, replaced: bool) -> None:
        self._log({"kind": "renamed", "dir": _dir(new), "old": old, "new": new,
                   "stash": stash, "replaced": replaced})

    def synced(self, directory: str) -> None:
        """fsync on `directory`: its changes are durable; their stashes go."""
        directory = directory.rstrip("/") or "/"
        done = [c for c in self.changes if c["dir"] == directory]
        if not done:
            return
        self.changes = [c for c in self.changes if c["dir"] != directory]
        self._log({"synced": directory})
        kept = {c.get("stash") for c in self.changes}
        for c in done:
            if c.get("stash") is not None and c["stash"] not in kept:
                self.drop_stash(c["stash"])

    def synced_all(self) -> None:
        """Every directory synced: what ext4's or xfs's journal commit does for names."""
        for directory in sorted({c["dir"] for c in self.changes}):
            self.synced(directory)

    def undo_into(self, copy: str, stash_copy: str) -> None:
        """Undo the unsynced changes in `copy`, a copy of the tree (with `stash_copy`, a
        copy of the stash): what a cut would leave."""
        _undo(copy, self.changes, stash_copy, shutil.copy2)


def _undo(root: str, changes: list[dict], stash_dir: str,
          restore: Callable[[str, str], object]) -> None:
    """Undo `changes` in the tree at `root`, newest first; `restore(stashed, path)` puts
    a stashed name back (a hard link at a cut, a copy in a copy)."""

    def real(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    def bring_back(path: str, stash: str | None) -> None:
        p = real(path)
        if os.path.lexists(p) or not os.path.isdir(os.path.dirname(p)):
            return
        if stash is None:
            os.mkdir(p)
        else:
            restore(os.path.join(stash_dir, stash), p)

    for c in reversed(changes):
        kind = c["kind"]
        if kind == "created":
            p = real(c["path"])
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
        elif kind == "removed":
            bring_back(c["path"], c["stash"])
        elif kind == "renamed":
            old, new = real(c["old"]), real(c["new"])
            if os.path.lexists(new) and not os.path.lexists(old) \
                    and os.path.isdir(os.path.dirname(old)):
                os.rename(new, old)
            if c["replaced"]:
                bring_back(c["new"], c["stash"])
