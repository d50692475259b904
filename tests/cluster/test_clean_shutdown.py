"""A member stopped with SIGTERM while its peers stream to it ends the peer streams cleanly.

Before, the stopping member logged grpc's `Exception not handled ... [/raftpb.RaftPeer/
Stream] ... CancelledError` traceback at ERROR: the peer server's per-call tasks were
still running when asyncio.run's teardown cancelled them. Now its peer calls end with
UNAVAILABLE ("the member is stopping"), which the senders log as one lost-connection
warning, and the rest of the cluster keeps serving.
"""

from __future__ import annotations

import re
import threading

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_testing.cluster import ClusterMember
from kubekv_testing.polling import wait_for

# What must never appear in a member's log when a member is stopped with SIGTERM.
BAD = re.compile(
    r"Traceback|Exception not handled|CancelledError|level=(ERROR|CRITICAL)"
    r"|^[EF]\d{4} "  # gRPC core's own error lines (glog style, on stderr)
)


class Load:
    """Puts from a few threads against `targets` until stopped; counts successes."""

    def __init__(self, targets: list[ClusterMember], threads: int = 3) -> None:
        self.targets = targets
        self.ok = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, i: int) -> None:
        stubs = [m.kv for m in self.targets]
        n = 0
        while not self._stop.is_set():
            try:
                stubs[n % len(stubs)].Put(
                    pb.PutRequest(key=b"/load/%d/%d" % (i, n % 50), value=b"v" * 100),
                    timeout=2)
                with self._lock:
                    self.ok += 1
            except Exception:  # noqa: BLE001 - a member may be electing or stopping
                pass
            n += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def wait_more(self, n: int, timeout: float = 30.0) -> None:
        start = self.ok
        wait_for(lambda: self.ok >= start + n, timeout, f"{n} more acknowledged puts")


def bad_lines(m: ClusterMember) -> list[str]:
    return [line for line in m.log_path.read_text(errors="replace").splitlines()
            if BAD.search(line)]


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_sigterm_under_load_ends_peer_streams_cleanly(make_cluster, victim_role):
    c = make_cluster(3)
    leader = c.wait_leader()
    victim = leader if victim_role == "leader" else c.followers()[0]
    survivors = [m for m in c.members if m is not victim]
    with Load(survivors) as load:
        load.wait_more(50)  # peers stream entries to the victim right now
        assert victim.stop() == 0
        c.wait_leader(members=survivors)
        load.wait_more(50)  # the two survivors keep serving
    assert bad_lines(victim) == []
    for m in survivors:
        assert bad_lines(m) == [], m.name
    # whoever streamed to the victim (the leader, at least) logged the loss as a warning
    lost = re.compile(rf"level=WARNING .*stream from \w+ to peer {victim.id:x} .*failed")
    assert any(lost.search(m.log_path.read_text()) for m in survivors)
    # and the rest stop as cleanly (both still stream to each other)
    for m in survivors:
        assert m.stop() == 0
    for m in c.members:
        assert bad_lines(m) == [], m.name


def test_a_stopping_leader_hands_over_leadership_first(make_cluster):
    """etcd's Stop transfers leadership before stopping (TransferLeadership): the cluster
    gets its next leader from the handover, one term later, not from an election that
    waits out a timeout with writes stalled."""
    c = make_cluster(3)
    leader = c.wait_leader()
    term = leader.status().raft_term
    survivors = [m for m in c.members if m is not leader]
    assert leader.stop() == 0
    log = leader.log_path.read_text()
    assert "leadership transfer starting" in log and "leadership transfer finished" in log
    new = c.wait_leader(members=survivors)
    new_id = re.search(r"leadership transfer finished.*new-leader-member-id=(\w+)", log)
    assert int(new_id.group(1), 16) == new.id
    assert new.status().raft_term == term + 1  # the handover's term, no election
    assert bad_lines(leader) == []
