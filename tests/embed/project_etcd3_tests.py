"""A project using python-etcd3 whose tests know kubekv only as an installed package and
its pytest fixtures.

Copied into a temporary project by tests/embed/test_installed_package.py and run there
with the interpreter of a venv that installed kubekv from a wheel, with
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python as python-etcd3 needs. Not collected from
the kubekv tree (its name matches neither test_*.py nor *_test.py).
"""

import os
import sys
import urllib.request

import etcd3
import pytest


def split(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def test_kubekv_comes_from_the_installed_wheel(kubekv_member):
    import kubekv
    import kubekv_server

    for mod in (kubekv, kubekv_server):
        assert mod.__file__.startswith(sys.prefix), mod.__file__
    with open(f"/proc/{kubekv_member.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0].decode() == sys.executable
    with open(f"/proc/{kubekv_member.pid}/environ", "rb") as f:
        names = {kv.split(b"=", 1)[0] for kv in f.read().split(b"\0") if kv}
    assert b"PYTHONPATH" not in names  # the server imports kubekv from site-packages too


def test_endpoint_and_url_name_the_session_member(etcd_endpoint, etcd_url, kubekv_member):
    assert etcd_endpoint == kubekv_member.endpoint == f"127.0.0.1:{kubekv_member.port}"
    assert etcd_url == f"http://{etcd_endpoint}"
    with urllib.request.urlopen(f"{etcd_url}/health", timeout=5) as resp:
        assert resp.status == 200


def test_python_etcd3(etcd_endpoint):
    client = etcd3.client(*split(etcd_endpoint))
    client.put("/app/etcd3", "one")
    value, meta = client.get("/app/etcd3")
    assert value == b"one" and meta.version == 1


def test_ini_flags_reach_the_server(etcd_endpoint):
    # pytest.ini sets kubekv_flags = --max-txn-ops=4: a 5-put txn is refused as etcd does.
    client = etcd3.client(*split(etcd_endpoint))
    puts = [client.transactions.put(f"/app/txn/{i}", "x") for i in range(5)]
    with pytest.raises(Exception, match="too many operations in txn request"):
        client.transaction(compare=[], success=puts, failure=[])


def test_cluster_failover(kubekv_cluster):
    old = kubekv_cluster.wait_leader()
    assert len(kubekv_cluster.endpoints) == 3
    follower = next(m for m in kubekv_cluster.members if m is not old)
    client = etcd3.client(*split(follower.endpoint))
    client.put("/app/failover", "before")
    old.kill()
    new = kubekv_cluster.wait_leader(exclude=old)
    assert new is not old and not old.alive
    client.put("/app/failover", "after")
    old.restart()
    again = etcd3.client(*split(old.endpoint))
    assert again.get("/app/failover")[0] == b"after"
    assert os.path.isdir(old.data_dir)
