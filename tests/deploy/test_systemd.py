"""deploy/systemd: the unit is what systemd accepts, hardened, and runs kubekv as etcd's
unit runs etcd."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys

import pytest

from tests.deploy.conftest import DEPLOY

UNIT = DEPLOY / "systemd" / "kubekv.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (Debian: systemd)")


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_the_unit_says_what_the_issue_asks():
    d = _directives()
    assert d["Service.Type"] == ["exec"]  # kubekv does not speak sd_notify
    assert d["Service.DynamicUser"] == ["yes"]
    assert d["Service.StateDirectory"] == ["kubekv"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("Restart", "on-failure"), ("LimitNOFILE", "40000"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
        assert d[f"Service.{key}"] == [value], key
    assert d["Service.EnvironmentFile"] == ["/etc/kubekv/kubekv.env"]
    assert d["Service.ExecStart"][0].endswith("/kubekv")
    # the abstract unix socket of the JSON gateway must stay allowed
    assert "AF_UNIX" in d["Service.RestrictAddressFamilies"][0].split()
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())


def _verifiable_copy(tmp_path, text: str):
    # verify checks that ExecStart's program exists: point it at one that does
    program = shutil.which("kubekv") or sys.executable
    unit = tmp_path / "kubekv.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={program}", text))
    return unit


@needs_systemd
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = _verifiable_copy(tmp_path, UNIT.read_text())
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stderr
    # verify does complain where something is wrong (so its silence above means something)
    bad = _verifiable_copy(tmp_path, UNIT.read_text().replace("ProtectSystem=strict",
                                                              "ProtectSystem=bogus"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert "bogus" in res.stderr


@needs_systemd
def test_exposure_is_low(tmp_path):
    unit = _verifiable_copy(tmp_path, UNIT.read_text())
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(unit)], capture_output=True, text=True, timeout=60)
    if "offline" in res.stderr and res.returncode != 0:
        pytest.skip(f"systemd-analyze security --offline unsupported: {res.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m[1]) <= 2.0, res.stdout  # systemd calls < 2 "OK"; etcd's own unit is ~9
