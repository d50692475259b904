"""A real Prometheus (Debian's binary) scrapes a 3-member kubekv cluster every second
and evaluates deploy/monitoring's rules (a copy with short `for:` and windows): every
dashboard expression runs; killing one member fires etcdMembersDown, killing a second
fires etcdNoLeader on the survivor; both resolve once the members are back.

Prometheus runs from the test on a free loopback port with a temporary config and
--storage.tsdb.path, never as the system service and never on 9090 by default."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from kubekv_testing.cluster import Cluster
from kubekv_testing.polling import wait_for
from tests.harness import free_port

from .promql import RULES, dashboard_expressions, grafana_to_promql

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install -y prometheus)")

# the whole scenario must stay well under a minute: bounded waits for each step
ALERT_DEADLINE = 25.0
# the test copy of the rules: alerts pending for this long, and short rate windows, so
# they fire and resolve within seconds of a 1 s scrape and evaluation interval
TEST_FOR = "2s"
TEST_RATE_WINDOW = "[5s]"


def short_rules(dest) -> None:
    """The rules with `for:` and etcdMembersDown's 120 s rate window shortened."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = TEST_FOR
                rule["expr"] = rule["expr"].replace("[120s]", TEST_RATE_WINDOW)
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


class Prometheus:
    def __init__(self, tmp, targets: list[str]) -> None:
        self.port = free_port()
        rules = tmp / "rules.yaml"
        short_rules(rules)
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "kubekv",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str, **params: str):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def wait_ready(self) -> None:
        def ready():
            assert self.proc.poll() is None, self.log.read_text()
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        wait_for(ready, 30, "Prometheus ready", interval=0.2)

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def firing(self) -> list[dict]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_member_down_and_no_leader_alerts_fire_and_resolve(tmp_path):
    c = Cluster(tmp_path / "cluster", 3, flags=["--metrics", "extensive"])
    prom = None
    try:
        c.start()
        prom = Prometheus(tmp_path, [f"127.0.0.1:{m.client_port}" for m in c.members])
        prom.wait_ready()

        def all_up():
            r = prom.query('sum(up{job="kubekv"}) == 3 and sum(etcd_server_has_leader) == 3')
            return r["data"]["result"]
        wait_for(all_up, ALERT_DEADLINE, "3 members scraped, each with a leader", interval=0.2)

        # every dashboard expression parses and runs on Prometheus
        for expr in dashboard_expressions():
            r = prom.query(grafana_to_promql(expr))
            assert r["status"] == "success", (expr, r)
        assert not prom.firing()

        def firing(name: str, **labels: str):
            return [a for a in prom.firing() if a["labels"]["alertname"] == name
                    and all(a["labels"].get(k) == v for k, v in labels.items())]

        leader = c.wait_leader()
        first, second = [m for m in c.members if m is not leader]
        first.kill()
        down = wait_for(lambda: firing("etcdMembersDown"), ALERT_DEADLINE,
                        "etcdMembersDown firing", interval=0.2)
        assert down[0]["labels"]["severity"] == "critical"
        assert not firing("etcdNoLeader")  # two of three still have a leader

        second.kill()  # no quorum: the survivor loses its leader
        survivor = f"127.0.0.1:{leader.client_port}"
        wait_for(lambda: firing("etcdNoLeader", instance=survivor), ALERT_DEADLINE,
                 "etcdNoLeader firing on the survivor", interval=0.2)

        first.restart(wait=False)
        second.restart(wait=False)
        c.wait_ready([first, second, leader])
        wait_for(lambda: not firing("etcdNoLeader") and not firing("etcdMembersDown"),
                 ALERT_DEADLINE, "etcdNoLeader and etcdMembersDown resolved", interval=0.2)
    finally:
        if prom is not None:
            prom.stop()
        c.close()


def test_the_test_rules_shorten_only_durations(tmp_path):
    """The copy Prometheus evaluates differs from deploy/monitoring's only in `for:` and
    the member-down rate window."""
    short_rules(tmp_path / "r.yaml")
    ours = yaml.safe_load(RULES.read_text())
    test = yaml.safe_load((tmp_path / "r.yaml").read_text())
    for g1, g2 in zip(ours["groups"], test["groups"], strict=True):
        for r1, r2 in zip(g1["rules"], g2["rules"], strict=True):
            assert {k: v for k, v in r1.items() if k not in ("for", "expr")} == \
                   {k: v for k, v in r2.items() if k not in ("for", "expr")}
            assert re.sub(r"\[120s\]", TEST_RATE_WINDOW, r1["expr"]) == r2["expr"]
