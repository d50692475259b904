"""Fixtures of the crash tests: LazyFS mounts, the filesystem that loses what was not synced."""

from __future__ import annotations

import pytest

from kubekv_testing.lazyfs import LazyFS

# What libfuse says when the kernel or the container refuses a mount.
MOUNT_REFUSED = ("Operation not permitted", "Permission denied", "failed to open /dev/fuse")


@pytest.fixture
def lazy_mounts(tmp_path):
    """lazy_mounts(name) -> a mounted LazyFS at tmp_path/name; all unmounted after the test."""
    made: list[LazyFS] = []

    def mount(name: str) -> LazyFS:
        fs = LazyFS(tmp_path / f"{name}.disk", tmp_path / name, tmp_path / f"{name}.fuse.log")
        try:
            made.append(fs.mount())
        except RuntimeError as exc:
            # a machine with /dev/fuse may still refuse the mount (a container without
            # CAP_SYS_ADMIN): the tool is absent there, say so; any other failure is ours
            if any(why in str(exc) for why in MOUNT_REFUSED):
                pytest.skip(f"FUSE mounts are refused here: {str(exc).splitlines()[-1][:200]}")
            raise
        return fs

    yield mount
    for fs in made:
        fs.unmount()
