"""The state db's apply transaction: committed on etcd's batch bounds, not per batch, and
when a bound asks, on the commit thread while the apply thread goes on."""

from __future__ import annotations

import threading

import pytest

from kubekv_server.backend.state_db import Backend


def _committed(backend: Backend, key: bytes) -> bytes | None:
    with backend.env.begin() as txn:
        return txn.get(key, db=backend.meta)


def test_the_apply_txn_commits_at_the_batch_limit(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=3)
    txn = b.apply_txn()
    txn.put(b"a", b"1", db=b.meta)
    assert not b.applied(2, must_commit=False)
    assert _committed(b, b"a") is None  # readers see the last commit only
    assert b.apply_txn() is txn  # the next batch goes into the same txn
    assert not b.applied(1, must_commit=False)  # the bound: committed in the background
    assert b.landing
    b.wait_landing()
    assert not b.landing and b.commits == 1
    assert _committed(b, b"a") == b"1"
    b.close()


def test_without_background_commits_the_bound_commits_at_once(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=3,
                commit_in_background=False)
    b.apply_txn().put(b"a", b"1", db=b.meta)
    assert not b.applied(2, must_commit=False)
    assert b.applied(1, must_commit=False)
    assert not b.landing
    assert _committed(b, b"a") == b"1"
    b.close()


class _HeldBackend(Backend):
    """A Backend whose background commits wait for `release` (a slow disk)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def _land(self, txn) -> None:
        assert self.release.wait(10)
        super()._land(txn)


def test_a_background_commit_lands_when_the_apply_thread_takes_note(tmp_path):
    b = _HeldBackend(str(tmp_path / "state"), batch_interval=3600, batch_limit=2)
    landed, committed = [], []
    b.on_landed.append(lambda: landed.append(_committed(b, b"a")))
    b.on_commit.append(lambda: committed.append(True))
    b.apply_txn().put(b"a", b"1", db=b.meta)
    assert not b.applied(2, must_commit=False, nbytes=1000)
    assert b.landing and not b.poll_landing()  # under way
    assert b.quota_size() == b.size_bytes() + 2000  # what it will add, still counted
    b.release.set()
    b.wait_landing()
    assert landed == [b"1"] and committed == []  # on_landed instead of on_commit
    assert b.poll_landing() and not b.landing
    assert b.quota_size() == b.size_bytes()
    b.close()


def _landing(tmp_path) -> tuple[_HeldBackend, list[str]]:
    """A held background commit of key `a` under way, and the hooks' calls in order."""
    b = _HeldBackend(str(tmp_path / "state"), batch_interval=3600, batch_limit=2)
    order: list[str] = []
    b.on_landed.append(lambda: order.append("landed"))
    b.on_commit.append(lambda: order.append("committed"))
    b.apply_txn().put(b"a", b"1", db=b.meta)
    assert not b.applied(2, must_commit=False) and b.landing
    return b, order


def test_the_next_apply_txn_and_a_commit_wait_for_a_landing(tmp_path):
    b, order = _landing(tmp_path)
    threading.Timer(0.05, b.release.set).start()
    txn = b.apply_txn()  # waits for the landing, then begins the next txn
    assert order == ["landed"] and _committed(b, b"a") == b"1"
    txn.put(b"b", b"2", db=b.meta)
    b.applied(2, must_commit=False)  # lands in the background (released already)
    b.apply_txn().put(b"c", b"3", db=b.meta)
    b.commit()  # lands the one under way, then commits the held txn
    assert order == ["landed", "landed", "committed"]
    assert (_committed(b, b"b"), _committed(b, b"c")) == (b"2", b"3")
    b.close()


def test_abort_lets_a_landing_land_and_drops_the_held_txn(tmp_path):
    b, order = _landing(tmp_path)
    b.release.set()
    b.abort()
    assert order == ["committed"] and not b.landing  # on_commit: the overlay's owner
    # drops it too
    assert _committed(b, b"a") == b"1"  # what was landing is committed all the same
    b.close()


def test_a_failed_background_commit_raises_where_the_apply_thread_waits(tmp_path):
    class Failing(Backend):
        def _land(self, txn) -> None:
            txn.abort()
            raise OSError("disk gone")

    b = Failing(str(tmp_path / "state"), batch_interval=3600, batch_limit=2)
    b.apply_txn().put(b"a", b"1", db=b.meta)
    b.applied(2, must_commit=False)
    with pytest.raises(OSError, match="disk gone"):
        b.wait_landing()
    assert not b.landing and _committed(b, b"a") is None
    b.close()


def test_a_batch_that_must_be_seen_commits_at_once(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    seen = []
    b.on_commit.append(lambda: seen.append(True))
    b.apply_txn().put(b"lease", b"x", db=b.meta)
    assert b.applied(1, must_commit=True)
    assert _committed(b, b"lease") == b"x"
    assert seen == [True]
    b.close()


def test_the_interval_commits_without_a_new_batch(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    b.apply_txn().put(b"k", b"v", db=b.meta)
    assert not b.applied(1, must_commit=False)
    b.commit_if_due()  # not due
    assert _committed(b, b"k") is None
    b.batch_interval = 0.0
    b.commit_if_due()  # in the background
    b.wait_landing()
    assert _committed(b, b"k") == b"v"
    b.close()


def test_sync_commits_what_was_applied_first(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    b.apply_txn().put(b"k", b"v", db=b.meta)
    b.applied(1, must_commit=False)
    b.sync()  # before a snapshot: every applied change in the file
    assert _committed(b, b"k") == b"v"
    b.close()


def test_a_large_uncommitted_batch_commits_on_its_size(tmp_path):
    from kubekv_server.backend.state_db import MAX_UNCOMMITTED_BYTES

    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    b.apply_txn().put(b"k", b"v", db=b.meta)
    assert not b.applied(1, must_commit=False, nbytes=MAX_UNCOMMITTED_BYTES - 1)
    assert not b.landing
    assert not b.applied(1, must_commit=False, nbytes=1)
    assert b.landing
    b.wait_landing()
    assert _committed(b, b"k") == b"v"
    b.close()


def test_near_the_quota_every_batch_commits(tmp_path):
    """Within NEAR_QUOTA_BYTES of --quota-backend-bytes the quota check must see the
    file as it is, so batching stops; far from it, batches wait for their bounds."""
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    b.quota_bytes = 8 << 30
    b.apply_txn().put(b"a", b"1", db=b.meta)
    b.commit()
    b.apply_txn().put(b"b", b"2", db=b.meta)
    assert not b.applied(1, must_commit=False, nbytes=100)
    assert b.quota_size() == b.size_bytes() + 200  # what the commit will add, counted
    b.commit()
    b.quota_bytes = b.size_bytes() + 1024  # a small quota, as etcd's TestCtlV3Alarm's
    b.apply_txn().put(b"c", b"3", db=b.meta)
    b.commit()
    b.apply_txn().put(b"d", b"4", db=b.meta)
    assert b.applied(1, must_commit=False)
    assert _committed(b, b"d") == b"4"
    b.close()


def test_before_commit_writes_land_in_that_commit(tmp_path):
    """The applier stores the applied index and current revision from a before_commit
    hook: whatever commits the apply txn (a bound, the interval, sync) takes them."""
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    order = []
    b.before_commit.append(lambda txn: (order.append("before"),
                                        txn.put(b"index", b"7", db=b.meta)))
    b.on_commit.append(lambda: order.append("after"))
    b.apply_txn().put(b"k", b"v", db=b.meta)
    assert not b.applied(1, must_commit=False)
    b.sync()
    assert (_committed(b, b"k"), _committed(b, b"index")) == (b"v", b"7")
    assert order == ["before", "after"]
    b.commit()  # nothing held: no hook
    assert order == ["before", "after"]
    b.close()


def test_restart_txn_drops_what_it_held_and_tells_nobody(tmp_path):
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=3)
    seen = []
    b.on_commit.append(lambda: seen.append(True))
    b.apply_txn().put(b"a", b"1", db=b.meta)
    assert not b.applied(2, must_commit=False)
    txn = b.restart_txn()
    assert b.apply_txn() is txn and txn.get(b"a", db=b.meta) is None
    assert seen == []
    txn.put(b"b", b"2", db=b.meta)
    assert not b.applied(1, must_commit=False)  # the entries before the restart still
    assert b.landing  # count: the bound is reached
    b.wait_landing()
    assert (_committed(b, b"a"), _committed(b, b"b")) == (None, b"2")
    b.close()


def test_a_pinned_view_is_what_was_applied_and_applying_goes_on(tmp_path):
    """A Raft snapshot's pin: the commit, the sync and the read txn run on the commit
    thread; the apply thread goes on meanwhile (into an overlay, while `landing`)."""
    b = _HeldBackend(str(tmp_path / "state"), batch_interval=3600, batch_limit=10000)
    b.apply_txn().put(b"a", b"1", db=b.meta)
    b.applied(1, must_commit=False)
    pinned = b.pin_durable()
    assert b.landing and not pinned.done()
    b.release.set()
    view = pinned.result()
    b.apply_txn().put(b"a", b"2", db=b.meta)  # after the landing, into the next txn
    b.commit()
    assert view.get(b"a", db=b.meta) == b"1" and _committed(b, b"a") == b"2"
    view.abort()
    again = b.pin_durable()  # nothing uncommitted: a view of the last commit
    assert not b.landing
    view = again.result()
    assert view.get(b"a", db=b.meta) == b"2"
    view.abort()
    b.close()


def test_a_limit_of_one_commits_every_batch_at_once(tmp_path):
    """--backend-batch-limit=1 (or less): each batch is in the file before its results
    go out, as etcd's batchTx commits in the applying goroutine."""
    b = Backend(str(tmp_path / "state"), batch_interval=3600, batch_limit=1)
    b.apply_txn().put(b"a", b"1", db=b.meta)
    assert b.applied(1, must_commit=False)
    assert not b.landing and _committed(b, b"a") == b"1"
    b.close()
