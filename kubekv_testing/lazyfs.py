"""A FUSE filesystem that loses what was not fsynced when its power is cut (Jepsen's lazyfs idea).

`LazyFS(backing, mountpoint)` mounts a pass-through view of `backing` at `mountpoint`,
served by a separate daemon process (`python -m kubekv_testing.lazyfs BACKING MOUNTPOINT`).
Data written to a file is kept in the daemon's memory, per file, and reaches `backing`
only when that file is synced. `power_cut()` SIGKILLs the daemon (everything unsynced is
gone, as are the kernel's caches of the mount) and mounts `backing` again: the new mount
shows exactly what a machine would find on its disk after losing power. Cut power only
when no process uses the mount any more (kill the server first).

The model:
- Data (exact): bytes written by write(2), pwrite(2) or the write-back of a shared writable
  mmap are kept as dirty 4 KiB pages of that file (keyed by the backing inode, so they follow
  renames) and are readable at once, through read(2) and mmap alike. fsync(2) or fdatasync(2)
  on any descriptor of the file writes all of its dirty pages and its size to `backing`;
  so does every write on a descriptor opened with O_SYNC or O_DSYNC (LMDB opens its meta
  page descriptor that way unless MDB_NOMETASYNC; the kernel also sends FUSE an fsync,
  which has no range, after such a write, so the whole file is synced, not just the
  range). A cut loses, for each file, everything written since its last sync, and its
  size returns to the synced size. LMDB with writemap=False (how kubekv opens both of
  its environments) writes with pwrite and syncs with fdatasync, so this covers it;
  msync(MS_SYNC) of a shared mapping reaches FUSE as page write-back then an fsync, so
  it is covered too. Dirty mmap pages the kernel has not yet written back are lost.
- Names (kubekv_testing/lazyfs_names.py): creating, removing and renaming a file,
  making and removing a directory, are undone by a cut unless the directory holding the
  name was fsynced since (fsync(2): a new name needs its directory's fsync; ext4 and xfs
  usually commit it with the journal within seconds, this model only when a test asks
  for it with `commit_names()`). A file created, written and fsynced, in a directory
  never fsynced, is gone after a cut; one renamed over another comes back as the other.
  A rename counts as a change of the new name's directory. Other metadata (truncate,
  chmod/chown/utimes) goes straight to `backing` and survives a cut. Truncating (also by
  open with O_TRUNC) applies at once to the synced size too (LMDB does not truncate its
  files while running).
- Crash points without a cut: `durable_copy(dest)` copies what a cut would leave now
  (the backing tree, and with `writeback` a random part of the dirty pages as at a cut)
  while the writer goes on, so a test can recover from a copy after every operation and
  compare it with what the writer had been promised.
- Partial loss: by default a cut drops every unsynced write. `power_cut(writeback=f)`
  first writes a random fraction f of the dirty pages to `backing`, as the kernel's
  write-back may have done before the power went (in any order, whole pages). Torn pages
  are not modelled, and a sync is atomic here.
"""

from __future__ import annotations

import errno
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from kubekv_testing.lazyfs_names import NameJournal

PAGE = 4096
PENDING_XATTR = "user.lazyfs.pending"
WRITEBACK_XATTR = "user.lazyfs.writeback"
COPY_XATTR = "user.lazyfs.copy"
NAMES_XATTR = "user.lazyfs.names"
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


def names_dir(backing: str | os.PathLike) -> str:
    """Where the daemon journals the unsynced name changes of `backing` (beside it)."""
    return os.fspath(backing).rstrip("/") + ".names"


def unavailable() -> str | None:
    """Why a LazyFS cannot be mounted here (no /dev/fuse, no libfuse or mfusepy), or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (the kernel's FUSE device) on this machine"
    try:
        import mfusepy  # noqa: F401  (loads libfuse; raises if it is absent)
    except ImportError as exc:
        return f"mfusepy is not installed ({exc}); pip install mfusepy"
    except OSError as exc:
        return f"libfuse is not installed ({exc}); apt-get install fuse3 libfuse3-3"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 (Debian fuse3) is needed to mount FUSE as a normal user"
    return None


class _Pending:
    """The unsynced state of one file: dirty pages and the size it has until the next sync,
    with a descriptor of its own on the backing file (for a write-back after it is closed)."""

    __slots__ = ("fd", "pages", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = os.dup(fd)
        self.pages: dict[int, bytearray] = {}
        self.size = size

    def close(self) -> None:
        os.close(self.fd)


def _operations(backing: str):  # type: ignore[no-untyped-def]
    """The mfusepy Operations of a LazyFS over `backing` (built here so that importing this
    module for the harness does not need libfuse)."""
    import mfusepy
    from mfusepy import FuseOSError

    class LazyOperations(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.root = backing
            self.mutex = threading.RLock()
            self.pending: dict[int, _Pending] = {}  # backing inode -> unsynced state
            self.handles: dict[int, tuple[int, bool]] = {}  # fd -> (inode, writes are synced)
            # names created, removed or renamed since their directory's last fsync; the
            # changes a cut left are undone here, before this mount serves
            self.names = NameJournal(backing, names_dir(backing))
            self.names.recover()

        def _path(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        # ------------------------------------------------------------ data

        def _open_fd(self, path: str, flags: int, mode: int | None) -> int:
            # read-write whatever was asked: a partial page write reads the rest of the page
            real = (flags & ~(os.O_ACCMODE | _SYNC_FLAGS | os.O_APPEND)) | os.O_RDWR
            try:
                fd = os.open(self._path(path), real, mode if mode is not None else 0o666)
            except PermissionError:  # e.g. a read-only file opened for reading
                fd = os.open(self._path(path), flags & ~(_SYNC_FLAGS | os.O_APPEND))
            with self.mutex:
                ino = os.fstat(fd).st_ino
                self.handles[fd] = (ino, bool(flags & _SYNC_FLAGS))
                if flags & os.O_TRUNC and ino in self.pending:  # as truncate(): at once
                    self.pending.pop(ino).close()
            return fd

        def open(self, path: str, flags: int) -> int:
            return self._open_fd(path, flags, None)

        def create(self, path: str, mode: int, flags: int) -> int:
            with self.mutex:
                new = not os.path.lexists(self._path(path))
                fd = self._open_fd(path, flags | os.O_CREAT, mode)
                if new:
                    self.names.created(path)
            return fd

        def _page(self, fd: int, p: _Pending, index: int) -> bytearray:
            page = p.pages.get(index)
            if page is None:
                page = bytearray(os.pread(fd, PAGE, index * PAGE))
                page.extend(bytes(PAGE - len(page)))
                p.pages[index] = page
            return page

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self.mutex:
                p = self.pending.get(self.handles[fh][0])
                if p is None:
                    return os.pread(fh, size, offset)
                end = min(offset + size, p.size)
                out = bytearray()
                pos = offset
                while pos < end:
                    index, start = divmod(pos, PAGE)
                    n = min(PAGE - start, end - pos)
                    page = p.pages.get(index)
                    if page is not None:
                        out += page[start:start + n]
                    else:
                        chunk = os.pread(fh, n, pos)
                        out += chunk + bytes(n - len(chunk))
                    pos += n
                return bytes(out)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self.mutex:
                ino, synced = self.handles[fh]
                p = self.pending.get(ino)
                if p is None:
                    p = self.pending[ino] = _Pending(fh, os.fstat(fh).st_size)
                pos, view = offset, memoryview(data)
                while view:
                    index, start = divmod(pos, PAGE)
                    n = min(PAGE - start, len(view))
                    self._page(fh, p, index)[start:start + n] = view[:n]
                    view, pos = view[n:], pos + n
                p.size = max(p.size, offset + len(data))
                if synced:
                    self._sync(fh, ino)
                return len(data)

        def _sync(self, fd: int, ino: int) -> None:
            """Write the file's dirty pages and size to the backing file (the durable copy)."""
            p = self.pending.pop(ino, None)
            if p is None:
                return
            for index in sorted(p.pages):
                start = index * PAGE
                if start < p.size:
                    os.pwrite(fd, p.pages[index][:p.size - start], start)
            if os.fstat(fd).st_size != p.size:
                os.ftruncate(fd, p.size)
            p.close()

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            with self.mutex:
                self._sync(fh, self.handles[fh][0])
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            with self.mutex:
                self.names.synced(path)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0  # close(2) is not a sync

        def release(self, path: str, fh: int) -> int:
            with self.mutex:
                ino, _ = self.handles.pop(fh)
                if os.fstat(fh).st_nlink == 0:
                    self._forget(ino)
                os.close(fh)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self.mutex:
                if fh is not None:
                    os.ftruncate(fh, length)
                    ino = self.handles[fh][0]
                else:
                    os.truncate(self._path(path), length)
                    ino = os.lstat(self._path(path)).st_ino
                p = self.pending.get(ino)
                if p is not None:
                    p.size = length
                    for index in [i for i in p.pages if i * PAGE >= length]:
                        del p.pages[index]
                    index, start = divmod(length, PAGE)
                    if start and index in p.pages:
                        p.pages[index][start:] = bytes(PAGE - start)
            return 0

        def _forget(self, ino: int) -> None:
            """Drop the unsynced state of a file that no name or descriptor reaches any more."""
            if not any(i == ino for i, _ in self.handles.values()):
                p = self.pending.pop(ino, None)
                if p is not None:
                    p.close()

        # ------------------------------------------------------------ metadata (pass-through)

        def getattr(self, path: str, fh: int | None = None) -> dict:
            st = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
            attrs = {k: getattr(st, k) for k in (
                "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns,
                         st_ctime=st.st_ctime_ns)
            with self.mutex:
                p = self.pending.get(st.st_ino)
                if p is not None:
                    attrs["st_size"] = p.size
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._path(path))]

        def mkdir(self, path: str, mode: int) -> int:
            with self.mutex:
                os.mkdir(self._path(path), mode)
                self.names.created(path)
            return 0

        def rmdir(self, path: str) -> int:
            with self.mutex:
                os.rmdir(self._path(path))
                self.names.removed(path, None)
            return 0

        def unlink(self, path: str) -> int:
            with self.mutex:
                st = os.lstat(self._path(path))
                stash = self.names.stash(path)  # a cut before the directory's sync restores it
                try:
                    os.unlink(self._path(path))
                except OSError:
                    self.names.drop_stash(stash)
                    raise
                self.names.removed(path, stash)
                if st.st_nlink <= 1:
                    self._forget(st.st_ino)
            return 0

        def rename(self, old: str, new: str) -> int:
            with self.mutex:
                try:
                    replaced = os.lstat(self._path(new))
                except FileNotFoundError:
                    replaced = None
                stash = self.names.stash(new) if replaced is not None else None
                try:
                    os.rename(self._path(old), self._path(new))
                except OSError:
                    self.names.drop_stash(stash)
                    raise
                self.names.renamed(old, new, stash, replaced is not None)
                if replaced is not None and replaced.st_nlink <= 1:
                    self._forget(replaced.st_ino)
            return 0

        def link(self, target: str, source: str) -> int:
            with self.mutex:
                os.link(self._path(source), self._path(target))
                self.names.created(target)
            return 0

        def symlink(self, target: str, source: str) -> int:
            with self.mutex:
                os.symlink(source, self._path(target))
                self.names.created(target)
            return 0

        def readlink(self, path: str) -> str:
            return os.readlink(self._path(path))

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._path(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._path(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._path(path), ns=times)
            return 0

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._path(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            """`user.lazyfs.pending` of the root: "<files> <bytes>" not yet synced."""
            if path == "/" and name == PENDING_XATTR:
                with self.mutex:
                    ps = [p for p in self.pending.values() if p.pages]
                    dirty = sum(len(p.pages) for p in ps) * PAGE
                return f"{len(ps)} {dirty}".encode()
            raise FuseOSError(errno.ENODATA)

        def setxattr(self, path: str, name: str, value: bytes, options: int,
                     position: int = 0) -> int:
            """`user.lazyfs.writeback` = b"<seed> <fraction>" on the root: persist that
            fraction of the dirty pages, chosen at random, without syncing anything.
            `user.lazyfs.copy` = b"<directory>": copy what is durable now (the backing
            tree) there, between two operations of the mount. `user.lazyfs.names`: make
            every name change durable (a journal commit)."""
            if path == "/" and name == COPY_XATTR:
                dest, seed, fraction = value.rsplit(b" ", 2)
                dest_dir = os.fsdecode(dest)
                stash_copy = dest_dir + ".lazyfs-stash"
                with self.mutex:
                    shutil.copytree(self.root, dest_dir, symlinks=True)
                    shutil.copytree(self.names.stash_dir, stash_copy, symlinks=True)
                    try:
                        self._write_back(random.Random(int(seed)), float(fraction),
                                         (dest_dir, stash_copy))
                        self.names.undo_into(dest_dir, stash_copy)
                    finally:
                        shutil.rmtree(stash_copy, ignore_errors=True)
                return 0
            if path == "/" and name == NAMES_XATTR:
                with self.mutex:
                    self.names.synced_all()
                return 0
            if path != "/" or name != WRITEBACK_XATTR:
                raise FuseOSError(errno.ENOTSUP)
            seed, fraction = value.split()
            with self.mutex:
                self._write_back(random.Random(int(seed)), float(fraction), None)
            return 0

        def _write_back(self, rng: random.Random, fraction: float,
                        copy: tuple[str, str] | None) -> None:
            """Mutex held: write a random `fraction` of the dirty pages, to the backing
            files, or to the same files in `copy`: (a copy of the backing tree, a copy of
            the names' stash)."""
            where: dict[int, str] = {}
            if copy is not None:
                for src, dst in ((self.root, copy[0]), (self.names.stash_dir, copy[1])):
                    for top, _, names in os.walk(src):
                        for n in names:
                            full = os.path.join(top, n)
                            where[os.lstat(full).st_ino] = os.path.join(
                                dst, os.path.relpath(full, src))
            for ino, p in self.pending.items():
                chosen = [i for i in sorted(p.pages)
                          if i * PAGE < p.size and rng.random() < fraction]
                if copy is None:
                    fd = p.fd
                elif chosen and ino in where:  # (a file no name reaches any more: gone)
                    fd = os.open(where[ino], os.O_WRONLY)
                else:
                    continue
                try:
                    for index in chosen:
                        start = index * PAGE
                        os.pwrite(fd, p.pages[index][:p.size - start], start)
                finally:
                    if fd != p.fd:
                        os.close(fd)

        def statfs(self, path: str) -> dict:
            sv = os.statvfs(self._path(path))
            return {k: getattr(sv, k) for k in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                "f_favail", "f_flag", "f_namemax")}

    return LazyOperations()


class LazyFS:
    """A LazyFS mount served by a daemon process; `power_cut()` loses what was not synced."""

    def __init__(self, backing: pathlib.Path, mountpoint: pathlib.Path,
                 log_path: pathlib.Path | None = None) -> None:
        self.backing = pathlib.Path(backing)
        self.mountpoint = pathlib.Path(mountpoint)
        self.log_path = log_path or self.mountpoint.with_name(self.mountpoint.name + ".fuse.log")
        self.proc: subprocess.Popen | None = None
        self.cuts = 0
        self.lost_files = 0  # summed over the cuts: files that had unsynced data, and its size
        self.lost_bytes = 0

    def mount(self, timeout: float = 20.0) -> LazyFS:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubekv_testing.lazyfs", str(self.backing),
                 str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.mounted():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        return self

    def mounted(self) -> bool:
        """Whether the kernel still has the mount (also when its daemon is dead)."""
        target = os.path.realpath(self.mountpoint).encode()
        with open("/proc/self/mounts", "rb") as mounts:
            return any(line.split()[1].replace(b"\\040", b" ") == target for line in mounts)

    def _unmount(self) -> None:
        if not self.mounted():
            return
        for argv in (["fusermount3", "-u", "-z", str(self.mountpoint)],
                     ["umount", "-l", str(self.mountpoint)]):
            try:
                if subprocess.run(argv, capture_output=True).returncode == 0:
                    return
            except FileNotFoundError:
                continue
        raise RuntimeError(f"could not unmount {self.mountpoint}")

    def pending(self) -> tuple[int, int]:
        """(files, bytes in dirty pages) written and not yet synced: what a cut would lose."""
        files, dirty = os.getxattr(self.mountpoint, PENDING_XATTR).split()
        return int(files), int(dirty)

    def durable_copy(self, dest: pathlib.Path, writeback: float = 0.0, seed: int = 0) -> None:
        """Copy to `dest` (a new directory, outside the mount) the tree a power cut would
        leave at this moment, without cutting: a crash point to recover from while the
        writer goes on. Taken between two operations of the mount, so no sync is half
        done in it (a sync is atomic here). With `writeback`, that fraction of the dirty
        pages (chosen by `seed`) is in the copy too, as at `power_cut`; the mount keeps
        them dirty."""
        os.setxattr(self.mountpoint, COPY_XATTR,
                    os.fsencode(os.path.abspath(dest)) + f" {seed} {writeback}".encode())

    def commit_names(self) -> None:
        """Make every name created, removed or renamed so far durable, as ext4's and xfs's
        journal commits do within seconds (the data written stays as unsynced as it was)."""
        os.setxattr(self.mountpoint, NAMES_XATTR, b"1")

    def power_cut(self, writeback: float = 0.0, seed: int = 0) -> None:
        """Lose the unsynced writes (SIGKILL the daemon, drop the mount) and mount again.

        With `writeback`, that fraction of the dirty pages (chosen by `seed`) reaches the
        disk first, as if the kernel had written them back before the power went."""
        if writeback:
            os.setxattr(self.mountpoint, WRITEBACK_XATTR, f"{seed} {writeback}".encode())
        files, dirty = self.pending()
        self.lost_files += files
        self.lost_bytes += dirty
        self.kill()
        self.cuts += 1
        self.mount()

    def kill(self) -> None:
        """SIGKILL the daemon and remove the mount: the unsynced data is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._unmount()

    def unmount(self) -> None:
        """Stop serving the mount (what was not synced is lost, as at a cut)."""
        self.kill()
        self.proc = None

    def __enter__(self) -> LazyFS:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def main(argv: list[str]) -> None:
    """Serve `backing` at `mountpoint` in the foreground until killed or unmounted."""
    import mfusepy

    backing, mountpoint = argv
    # direct_io stays off: LMDB maps its files, and FUSE maps only through the page cache
    # (the servers run as the user who mounts, so no allow_other, which needs fuse.conf)
    mfusepy.FUSE(_operations(os.path.abspath(backing)), mountpoint, foreground=True)


if __name__ == "__main__":
    main(sys.argv[1:])
