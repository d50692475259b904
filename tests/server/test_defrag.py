"""Maintenance.Defragment: the state db is rewritten compacted and the file shrinks,
with every key, revision and lease intact, across restarts and repeated defrags."""

from __future__ import annotations

import json

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import etcdctl


def _db_size(proc) -> int:
    return proc.maintenance.Status(pb.StatusRequest()).dbSize


def _state_dbs(member) -> list[str]:
    """The state database directories in a member dir (`state`, `state.<n>`)."""
    return sorted(p.name for p in member.iterdir()
                  if p.is_dir() and (p.name == "state" or p.name.startswith("state.")))


def test_defragment_gives_space_back_and_keeps_everything(kubekv):
    kv = kubekv.kv
    for i in range(300):
        kv.Put(pb.PutRequest(key=b"big/%03d" % i, value=b"x" * 4000))
    kv.Put(pb.PutRequest(key=b"keep", value=b"me"))
    lease = json.loads(etcdctl(kubekv.endpoint, "lease", "grant", "300", "-w", "json").stdout)
    etcdctl(kubekv.endpoint, "put", "leased", "y", "--lease", f"{lease['ID']:x}")
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"big/", range_end=b"big0"))
    rev = kv.Range(pb.RangeRequest(key=b"keep")).header.revision
    kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
    before = _db_size(kubekv)

    out = etcdctl(kubekv.endpoint, "defrag")
    assert "Finished defragmenting etcd member" in out.stdout + out.stderr
    after = _db_size(kubekv)
    assert after < before / 4, (before, after)

    def state():
        r = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
        return r.header.revision, [(x.key, x.value, x.mod_revision, x.lease) for x in r.kvs]

    snapshot = state()
    assert [k for k, *_ in snapshot[1]] == [b"keep", b"leased"]
    kv.Put(pb.PutRequest(key=b"after", value=b"defrag"))  # writes go to the new db
    member = kubekv.data_dir / "member"
    assert _state_dbs(member) == ["state", "state.1"]  # the old one kept a minute for readers
    kubekv.restart()
    kv = kubekv.kv
    assert _state_dbs(member) == ["state.1"]  # the replaced one, removed at start-up
    assert kv.Range(pb.RangeRequest(key=b"after")).kvs[0].value == b"defrag"
    etcdctl(kubekv.endpoint, "defrag")  # a second generation, after a restart
    kubekv.restart()
    kv = kubekv.kv
    r = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True))
    assert [x.key for x in r.kvs] == [b"after", b"keep", b"leased"]
    assert _state_dbs(member) == ["state.2"]
    ttl = etcdctl(kubekv.endpoint, "lease", "timetolive", f"{lease['ID']:x}", "--keys").stdout
    assert "leased" in ttl
