"""A project using aetcd (gRPC, asyncio) and etcd3gw (etcd's JSON gateway) whose tests
know kubekv only as an installed package and its pytest fixtures.

Run by tests/embed/test_installed_package.py in its own pytest process: aetcd's generated
code does not load beside python-etcd3's under the pure-Python protobuf that python-etcd3
needs, so a project uses one or the other. Not collected from the kubekv tree.
"""

import asyncio


def split(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def test_aetcd(etcd_endpoint):
    import aetcd

    async def scenario():
        async with aetcd.Client(*split(etcd_endpoint)) as client:
            await client.put(b"/app/aetcd", b"two")
            return (await client.get(b"/app/aetcd")).value

    assert asyncio.run(scenario()) == b"two"


def test_etcd3gw_over_the_json_gateway(kubekv_member):
    import etcd3gw

    client = etcd3gw.client(host=kubekv_member.host, port=kubekv_member.port)
    assert client.put("/app/etcd3gw", "three")
    assert client.get("/app/etcd3gw") == [b"three"]
