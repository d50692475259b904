"""LazyFS's name journal without FUSE: the changes it records on a plain directory tree
are undone, newest first, by the next `recover` (the daemon that mounts after a cut),
except those of directories synced since; removed and replaced names come back."""

from __future__ import annotations

import os
import shutil

from kubekv_testing.lazyfs_names import NameJournal


def _tree(root) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for top, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(top, d), root) + "/"] = None
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                out[os.path.relpath(os.path.join(top, f), root)] = fh.read()
    return out


def _journal(tmp_path) -> tuple[str, NameJournal]:
    root = str(tmp_path / "backing")
    os.makedirs(root, exist_ok=True)
    names = NameJournal(root, str(tmp_path / "backing.names"))
    names.recover()
    return root, names


def test_unsynced_changes_are_undone_newest_first(tmp_path):
    root, names = _journal(tmp_path)
    os.mkdir(os.path.join(root, "d"))
    names.created("/d")
    for n in ("a", "b"):
        with open(os.path.join(root, "d", n), "wb") as f:
            f.write(n.encode())
        names.created(f"/d/{n}")
    names.synced("/")
    names.synced("/d")
    before = _tree(root)
    # after the syncs: a new file renamed over "a", "b" removed, a new directory
    with open(os.path.join(root, "d", "a.tmp"), "wb") as f:
        f.write(b"new a")
    names.created("/d/a.tmp")
    stash = names.stash("/d/a")
    os.rename(os.path.join(root, "d", "a.tmp"), os.path.join(root, "d", "a"))
    names.renamed("/d/a.tmp", "/d/a", stash, True)
    stash = names.stash("/d/b")
    os.unlink(os.path.join(root, "d", "b"))
    names.removed("/d/b", stash)
    os.mkdir(os.path.join(root, "e"))
    names.created("/e")
    with open(os.path.join(root, "e", "f"), "wb") as f:
        f.write(b"f")
    names.created("/e/f")
    names.synced("/e")  # its entry in / is still unsynced

    again = NameJournal(root, str(tmp_path / "backing.names"))  # the next mount
    assert again.recover() == 4  # /e/f was synced into /e
    assert _tree(root) == before
    assert os.listdir(again.stash_dir) == []


def test_a_synced_directory_keeps_its_changes_and_drops_their_stash(tmp_path):
    root, names = _journal(tmp_path)
    for n in ("old", "gone"):
        with open(os.path.join(root, n), "wb") as f:
            f.write(n.encode())
        names.created(f"/{n}")
    names.synced("/")
    with open(os.path.join(root, "new.tmp"), "wb") as f:
        f.write(b"new")
    names.created("/new.tmp")
    stash = names.stash("/old")
    os.rename(os.path.join(root, "new.tmp"), os.path.join(root, "old"))
    names.renamed("/new.tmp", "/old", stash, True)
    stash = names.stash("/gone")
    os.unlink(os.path.join(root, "gone"))
    names.removed("/gone", stash)
    assert len(os.listdir(names.stash_dir)) == 2
    names.synced("/")
    assert os.listdir(names.stash_dir) == []
    again = NameJournal(root, str(tmp_path / "backing.names"))
    assert again.recover() == 0
    assert _tree(root) == {"old": b"new"}


def test_undo_into_a_copy_leaves_the_tree_alone(tmp_path):
    root, names = _journal(tmp_path)
    with open(os.path.join(root, "kept"), "wb") as f:
        f.write(b"k")
    names.created("/kept")
    names.synced("/")
    stash = names.stash("/kept")
    os.unlink(os.path.join(root, "kept"))
    names.removed("/kept", stash)
    with open(os.path.join(root, "new"), "wb") as f:
        f.write(b"n")
    names.created("/new")
    copy, stash_copy = str(tmp_path / "copy"), str(tmp_path / "stash-copy")
    shutil.copytree(root, copy)
    shutil.copytree(names.stash_dir, stash_copy)
    names.undo_into(copy, stash_copy)
    assert _tree(copy) == {"kept": b"k"}
    assert _tree(root) == {"new": b"n"}
