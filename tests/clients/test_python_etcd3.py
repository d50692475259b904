"""python-etcd3 0.12, the client many Python tools use, against kubekv (and real etcd as reference).

python-etcd3 only imports with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python and
then clashes with our own generated modules, so its scenarios live in a separate
script run in a subprocess; the variable is set for that subprocess only, never
for the server or for pytest itself.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("etcd3_scenarios.py")


def run_scenarios(endpoint: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    env.pop("PYTHONPATH", None)  # the script must not see kubekv's etcdproto
    return subprocess.run(
        [sys.executable, str(SCRIPT), endpoint],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(SCRIPT.parent),
    )


def test_python_etcd3_scenarios_on_kubekv(kubekv):
    res = run_scenarios(kubekv.endpoint)
    assert res.returncode == 0, f"python-etcd3 scenarios failed:\n{res.stdout}{res.stderr}"
    assert "scenarios passed" in res.stdout


def test_python_etcd3_scenarios_on_real_etcd(real_etcd):
    """The same script against etcd 3.5 proves its expectations are etcd's, not ours."""
    res = run_scenarios(real_etcd.endpoint)
    assert res.returncode == 0, f"python-etcd3 scenarios failed on etcd:\n{res.stdout}{res.stderr}"
