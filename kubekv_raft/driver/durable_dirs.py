"""Directory entries that survive a power cut: a new name is durable only once the
directory holding it is synced (fsync(2): "Calling fsync() does not necessarily ensure
that the entry in the directory containing the file has also reached disk. For that an
explicit fsync() on a file descriptor for the directory is also needed."). etcd syncs
the parent of the WAL directory it creates (wal.Create: fileutil.Fsync(pdir)); the log
and the state db here sync the parent of every directory they create, and the directory
of every file they create or rename."""

from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger(__name__)

# fsync on a directory the filesystem cannot sync (EINVAL: some FUSE and network
# filesystems) or may not open for reading (EACCES, EPERM: a parent the user may write
# but not list): the entry stays as durable as that filesystem makes it, with a warning.
_UNSYNCABLE = (errno.EINVAL, errno.EACCES, errno.EPERM)


def fsync_dir(path: str) -> None:
    """Make the entries of directory `path` (files created or renamed in it) durable."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str, sync: bool = True) -> list[str]:
    """`os.makedirs(path, exist_ok=True)`; with `sync`, then fsync the parent of every
    directory it created, top down, so the whole path survives a power cut. Returns the
    directories created, top down."""
    created = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        created.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    created.reverse()
    os.makedirs(path, exist_ok=True)
    if sync:
        for d in created:
            parent = os.path.dirname(d)
            try:
                fsync_dir(parent)
            except OSError as exc:
                if exc.errno not in _UNSYNCABLE:
                    raise
                log.warning("could not sync directory %s after creating %s in it: %s",
                            parent, os.path.basename(d), exc.strerror)
    return created
