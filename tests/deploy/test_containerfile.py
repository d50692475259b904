"""deploy/container/Containerfile, checked statically: no base image can be fetched on
the test machines, so the image is not built here. What is checked is what a build
would depend on: the COPY sources, the package layout pip installs, the user, the
volume, the ports, the entrypoint and the HEALTHCHECK."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import yaml

from kubekv_server import deploy_entrypoint as ep
from tests.deploy.conftest import DEPLOY
from tests.harness import ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

CONTAINERFILE = DEPLOY / "container" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in CONTAINERFILE.read_text().splitlines()
        if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_is_a_slim_python():
    ins = instructions()
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    (base,) = [a for i, a in ins if i == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.1[0-9]-slim(-\w+)?", base)


def test_every_copy_source_exists_and_covers_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set()
    for word, rest in instructions():
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert not src.startswith("--"), "no COPY --from/--chown expected"
                assert (ROOT / src).exists(), f"COPY source {src} missing"
                copied.add(src.rstrip("/"))
    # "kubekv.*" (subpackages) is inside "kubekv"; "etcdproto*" names the directory
    packages = {p.removesuffix(".*").rstrip("*")
                for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    runs = [rest for word, rest in instructions() if word == "RUN"]
    assert any(re.search(r"\bpip install \.", r) for r in runs)


def test_runs_as_a_numeric_non_root_user_with_the_data_volume():
    ins = instructions()
    (user,) = [a for i, a in ins if i == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    # the same uid is created, and owns the volume's directory
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert f"--uid {uid}" in runs and f"-o {uid}" in runs
    (volume,) = [json.loads(a) for i, a in ins if i == "VOLUME"]
    assert volume == [ep.DEFAULT_DATA_ROOT]
    # the StatefulSet runs as the same user
    sts = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "statefulset.yaml").read_text())
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_ports_entrypoint_and_healthcheck():
    ins = instructions()
    exposed = {p for i, a in ins if i == "EXPOSE" for p in a.split()}
    assert {"2379", "2380", "2381"} <= exposed
    (entry,) = [json.loads(a) for i, a in ins if i == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry[0] in scripts  # a console script pip installs on PATH
    module, _, func = scripts[entry[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    (health,) = [a for i, a in ins if i == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1])
    assert cmd == [entry[0], "healthcheck"]
    assert ep.healthcheck_url({}) == "http://127.0.0.1:2381/livez"
