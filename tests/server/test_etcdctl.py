"""kubekv as a real process, driven by the real etcdctl 3.5."""

from __future__ import annotations

import json

from tests.harness import etcdctl


def test_put_get_delete(kubekv):
    ep = kubekv.endpoint
    assert etcdctl(ep, "put", "foo", "bar").stdout.strip() == "OK"
    out = etcdctl(ep, "get", "foo").stdout.split()
    assert out == ["foo", "bar"]
    got = json.loads(etcdctl(ep, "get", "foo", "-w", "json").stdout)
    kv = got["kvs"][0]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == (2, 2, 1)
    assert got["header"]["revision"] == 2
    assert etcdctl(ep, "del", "foo").stdout.strip() == "1"
    assert etcdctl(ep, "get", "foo").stdout == ""


def test_prefix_limit_sort_and_rev(kubekv):
    ep = kubekv.endpoint
    for i in range(5):
        etcdctl(ep, "put", f"k{i}", f"v{i}")
    out = etcdctl(ep, "get", "k", "--prefix", "--keys-only", "--limit", "2").stdout.split()
    assert out == ["k0", "k1"]
    out = etcdctl(ep, "get", "k", "--prefix", "--sort-by", "CREATE", "--order", "DESCEND",
                  "--keys-only").stdout.split()
    assert out == ["k4", "k3", "k2", "k1", "k0"]
    etcdctl(ep, "put", "k0", "new")
    assert etcdctl(ep, "get", "k0", "--rev", "2").stdout.split() == ["k0", "v0"]
    fields = etcdctl(ep, "get", "k", "--prefix", "--count-only", "-w", "fields").stdout
    assert '"Count" : 5' in fields


def test_txn_interactive(kubekv):
    ep = kubekv.endpoint
    etcdctl(ep, "put", "key1", "1")
    res = etcdctl(ep, "txn", "-i=false",
                  input='value("key1") = "1"\n\nput key2 ok\n\nput key2 no\n\n')
    assert res.stdout.split()[0] == "SUCCESS"
    assert etcdctl(ep, "get", "key2", "--print-value-only").stdout.strip() == "ok"
    res = etcdctl(ep, "txn", input='value("key1") = "2"\n\nput key3 yes\n\nput key3 no\n\n')
    assert res.stdout.split()[0] == "FAILURE"
    assert etcdctl(ep, "get", "key3", "--print-value-only").stdout.strip() == "no"


def test_compaction_and_errors(kubekv):
    ep = kubekv.endpoint
    for i in range(4):
        etcdctl(ep, "put", "c", str(i))
    assert "compacted revision 3" in etcdctl(ep, "compaction", "3").stdout
    res = etcdctl(ep, "get", "c", "--rev", "2", check=False)
    assert res.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in res.stderr
    res = etcdctl(ep, "get", "c", "--rev", "99", check=False)
    assert "etcdserver: mvcc: required revision is a future revision" in res.stderr
    res = etcdctl(ep, "compaction", "2", check=False)
    assert "etcdserver: mvcc: required revision has been compacted" in res.stderr
    assert "compacted revision 4" in etcdctl(ep, "compaction", "--physical", "4").stdout


def test_endpoint_status_health_member_list(kubekv):
    ep = kubekv.endpoint
    status = json.loads(etcdctl(ep, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
    assert status["leader"] == status["header"]["member_id"]
    assert status["version"].startswith("3.5.")
    assert status["dbSize"] > 0
    assert status["raftTerm"] >= 1
    health = etcdctl(ep, "endpoint", "health").stdout + etcdctl(ep, "endpoint", "health").stderr
    assert "is healthy" in health
    members = json.loads(etcdctl(ep, "member", "list", "-w", "json").stdout)
    assert len(members["members"]) == 1
    m = members["members"][0]
    assert m["name"] == "kubekv"
    assert m["clientURLs"] == [f"http://{ep}"]
    assert members["header"]["member_id"] == m["ID"]
