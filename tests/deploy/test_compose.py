"""deploy/compose: three members of one image and entrypoint, whose flags agree."""

from __future__ import annotations

import yaml

from kubekv_server import deploy_entrypoint as ep
from kubekv_server.config.flags import parse_args
from tests.deploy.conftest import DEPLOY


def test_three_members_with_consistent_flags(tmp_path):
    doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = doc["services"]
    assert sorted(services) == ["kubekv-0", "kubekv-1", "kubekv-2"]
    first = services["kubekv-0"]
    assert (DEPLOY.parent / first["build"]["context"].replace("../..", ".")).is_dir()
    assert first["build"]["dockerfile"] == "deploy/container/Containerfile"
    volumes, published, plans = set(), set(), {}
    for name, svc in services.items():
        assert svc["hostname"] == name  # the entrypoint's ordinal comes from it
        for key in ("image", "build", "environment", "read_only"):
            assert svc[key] == first[key], (name, key)
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert int(env["KUBEKV_INITIAL_CLUSTER_SIZE"]) == len(services)
        assert env["KUBEKV_PEER_DOMAIN"] == ""  # compose DNS: bare service names
        (volume,) = svc["volumes"]
        source, target = volume.split(":")
        assert target == ep.DEFAULT_DATA_ROOT and source in doc["volumes"]
        volumes.add(source)
        published |= {p.rsplit(":", 1)[0] for p in svc["ports"]}
        plans[name] = ep.plan([], {**env, "KUBEKV_DATA_ROOT": str(tmp_path / name)},
                              hostname=name)
    assert len(volumes) == 3 and len(published) == 3
    flags = {n: dict(a.removeprefix("--").split("=", 1) for a in p.args)
             for n, p in plans.items()}
    clusters = {f["initial-cluster"] for f in flags.values()}
    assert clusters == {",".join(f"kubekv-{i}=http://kubekv-{i}:2380" for i in range(3))}
    for name in flags:
        cfg = parse_args(plans[name].args, {"ETCD_INITIAL_CLUSTER_TOKEN": "kubekv-compose"})
        assert cfg.name == name
        assert cfg.initial_cluster[name] == cfg.initial_advertise_peer_urls
        assert cfg.advertise_client_urls == [f"http://{name}:2379"]
        assert cfg.initial_cluster_state == "new"
