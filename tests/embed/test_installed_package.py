"""issue 11 item 4: a new project gets an etcd endpoint by installing kubekv and asking for
a fixture. Builds a wheel of this tree, installs it into a fresh venv, runs a throwaway
project's tests there (python-etcd3, aetcd, etcd3gw; a 3-member failover), and checks
that no server process outlives that pytest run.

The venv sees the system site-packages (grpcio, protobuf, lmdb, the clients and pytest
are not downloaded again), but kubekv itself comes from the wheel: the throwaway tests
check `kubekv_server.__file__` is inside the venv and that the servers were started by
the venv's interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
# What a wheel is built from (everything else in the tree is tests, docs and tooling).
SOURCES = ["pyproject.toml", "README.md", "kubekv", "etcdproto", "kubekv_raft",
           "kubekv_server", "kubekv_testing"]
BUILD_TIMEOUT = 300  # a cold wheel build and venv creation on a loaded 2-core machine
PROJECT_INI = """\
[pytest]
kubekv_flags = --max-txn-ops=4
"""


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, **kw)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (e.g. a data dir path)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> pathlib.Path:
    """A venv with kubekv installed from a wheel of this tree (built from a copy, so the
    build leaves nothing in the tree)."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    wheels = tmp / "wheels"
    # Without build isolation when setuptools is here (nothing to download); else pip
    # fetches it as `pip install -e .` did.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
         "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("kubekv-*.whl")
    venv = tmp / "venv"
    # No pip inside the venv (no ensurepip, which Debian splits into python3-venv): this
    # pip installs into it with --python.
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    # --force-reinstall: a kubekv in the system site-packages (an editable checkout, as CI
    # has) must not count as "already satisfied"; pip leaves that one alone.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", "--force-reinstall", str(wheel)])
    return python


def project_env(protobuf_python: bool) -> dict[str, str]:
    """The environment of a project's pytest run: nothing of this tree on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
                        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")}
    if protobuf_python:
        # python-etcd3's generated code needs the pure-Python protobuf (its documented
        # workaround); kubekv.embed keeps the variable out of the servers' environment.
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    return env


def test_installed_wheel_has_what_the_server_needs(venv_python, tmp_path):
    res = run([str(venv_python), "-c",
               "import kubekv, kubekv_server, kubekv.embed, kubekv.pytest_plugin, sys;"
               "print(kubekv_server.__file__); print(kubekv.__file__); print(sys.prefix)"],
              cwd=tmp_path, env=project_env(False))
    server_file, kubekv_file, prefix = res.stdout.split()
    assert server_file.startswith(prefix + os.sep) and kubekv_file.startswith(prefix + os.sep)
    assert not server_file.startswith(str(ROOT) + os.sep)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("tests", "protobuf_python", "passed"), [
    ("project_etcd3_tests.py", True, 5),   # wheel origin, endpoint/url, etcd3, ini, failover
    ("project_aetcd_tests.py", False, 2),  # aetcd, etcd3gw
])
def test_a_new_project_gets_etcd_fixtures_from_the_installed_package(
        venv_python, tmp_path, tests, protobuf_python, passed):
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text(PROJECT_INI)
    shutil.copy(HERE / tests, project / "tests" / "test_app.py")
    basetemp = tmp_path / "basetemp"
    res = subprocess.run(
        [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={basetemp}", "tests"],
        cwd=project, env=project_env(protobuf_python), capture_output=True, text=True,
        timeout=BUILD_TIMEOUT,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{passed} passed" in out and "skipped" not in out, out
    # Every server had its data dir under basetemp: none may still be running.
    assert processes_mentioning(str(basetemp)) == []
