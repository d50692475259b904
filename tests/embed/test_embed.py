"""kubekv.embed from this tree: what its processes do when their owner goes away.

The fixtures and the failover controls are exercised from an installed wheel by
test_installed_package.py; here are the cases a throwaway project cannot show: ports
taken between pick and bind, etcd's flag variables in the caller's environment, and the
owner disappearing without closing (garbage collected, or SIGKILLed).
"""

from __future__ import annotations

import gc
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from kubekv.embed import Cluster, GatewayError, Member, wait_for
from tests.embed.test_installed_package import processes_mentioning

ROOT = pathlib.Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; PR_SET_PDEATHSIG is Linux's")


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@linux_only
def test_member_ignores_etcd_variables_and_leaves_nothing_behind(tmp_path, monkeypatch):
    # The server reads ETCD_* as flags, as etcd does: this one would stop it from starting.
    monkeypatch.setenv("ETCD_QUOTA_BACKEND_BYTES", "not-a-number")
    with Member() as m:
        base, pid = m.base_dir, m.pid
        assert processes_mentioning(str(base))  # what the orphan checks look for
        assert m.status().leader == m.member_id != 0
    assert gone(pid) and not base.exists()


def test_a_taken_port_is_replaced(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        m = Member(base_dir=tmp_path)
        m.port = taken.getsockname()[1]
        with m:
            assert m.port != taken.getsockname()[1]
            assert m.status().leader != 0
    assert "address already in use" in (tmp_path / "default.log").read_text()


@linux_only
def test_a_forgotten_member_is_reaped_when_collected():
    m = Member().start()
    pid, base = m.pid, m.base_dir
    del m
    gc.collect()
    assert gone(pid) and not base.exists()


OWNER = """
import sys
from kubekv.embed import Member
m = Member(base_dir=sys.argv[1]).start()
print(m.pid, flush=True)
sys.stdin.read()
"""


@linux_only
def test_members_die_with_a_killed_owner(tmp_path):
    """SIGKILL runs no Python exit handler: PR_SET_PDEATHSIG has the kernel kill the server."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line.strip().isdigit(), f"owner printed {line!r}"
        server = int(line)
        assert not gone(server)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        owner.stdin.close()
        owner.stdout.close()
    wait_for(lambda: gone(server), 10, "the server to die with its owner")


def test_linearizable_member_list_needs_a_quorum(tmp_path):
    """etcd 3.5's MemberList{linearizable} waits for a read index: a member cut off from
    the others answers only the plain (local) list. This is what makes a list read on
    any member right after MemberRemove show the removal."""
    with Cluster(3, base_dir=tmp_path) as c:
        alone, *others = c.members
        ids = c.member_ids(via=alone)
        for m in others:
            m.pause()
        try:
            local = alone.request("/v3/cluster/member/list", {"linearizable": False})
            assert sorted(int(m["ID"]) for m in local["members"]) == ids
            with pytest.raises(GatewayError):
                alone.request("/v3/cluster/member/list", {"linearizable": True}, timeout=2)
        finally:
            for m in others:
                m.resume()
        assert c.member_ids(via=alone) == ids


def test_cluster_membership_changes(tmp_path):
    with Cluster(3, base_dir=tmp_path) as c:
        ids = c.member_ids()
        assert sorted(m.member_id for m in c.members) == ids
        new = c.add_member()
        assert new.name == "m4" and new.cluster_state == "existing"
        assert c.member_ids(via=new) == sorted([*ids, new.member_id])
        old = c.members[0]
        old_id = old.member_id
        old.kill()  # removal finds the ID by peer URL: the member itself may be down
        c.remove_member(old)
        assert old not in c.members and not old.alive
        assert c.member_ids() == sorted(set(ids + [new.member_id]) - {old_id})
        c.wait_leader()
