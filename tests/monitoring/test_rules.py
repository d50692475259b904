"""deploy/monitoring's rules: promtool checks them and runs their unit tests (an input
series and the expected alerts for every alert, tests/monitoring/kubekv-rules_test.yml);
every alert of the rules file has a case there; the dashboard is well-formed."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
import yaml

from .promql import DASHBOARD, RULES, dashboard_expressions, rule_expressions

HERE = pathlib.Path(__file__).resolve().parent
UNIT_TESTS = HERE / "kubekv-rules_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install -y prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=HERE)


@needs_promtool
def test_promtool_checks_the_rules():
    res = _promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_promtool_unit_tests_of_every_alert_pass():
    res = _promtool("test", "rules", UNIT_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_a_firing_unit_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {(t["alertname"], a["exp_labels"].get("severity"))
             for case in cases for t in case.get("alert_rule_test", []) for a in t["exp_alerts"]}
    assert alerts == {name for name, _ in fired}
    # each severity of a two-level alert fires in some case
    levels = {(r["alert"], r["labels"]["severity"])
              for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert levels <= fired


def test_rules_are_etcds_alert_names_with_a_for_duration():
    rules = yaml.safe_load(RULES.read_text())
    for r in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        assert r["alert"].startswith("etcd")  # the names etcd's users route on
        assert r["for"] and r["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(r["annotations"])
    assert rule_expressions()


def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(pos) and pos["x"] + pos["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "cluster"}
    assert len(dashboard_expressions()) >= 20
