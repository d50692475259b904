"""Every third-party module the server imports is a declared dependency, so that
`pip install .` on a fresh machine gives a server that starts (h11 once was not)."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ["kubekv_server", "kubekv_raft", "etcdproto", "kubekv"]
OURS = {"kubekv_server", "kubekv_raft", "etcdproto", "kubekv", "kubekv_testing"}
# kubekv's pytest plugin runs inside pytest only
TEST_ONLY = {ROOT / "kubekv" / "pytest_plugin.py"}


def imported_tops() -> dict[str, str]:
    """Top-level module name -> a file importing it, over the shipped packages."""
    out: dict[str, str] = {}
    for pkg in SHIPPED:
        for path in (ROOT / pkg).rglob("*.py"):
            if path in TEST_ONLY:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                for name in names:
                    out.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return out


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_third_party_import_is_a_dependency():
    dists = importlib.metadata.packages_distributions()
    deps = declared()
    missing = []
    for top, where in sorted(imported_tops().items()):
        if top in OURS or top in sys.stdlib_module_names or top == "__future__":
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
        if not names & deps:
            missing.append(f"{top} ({where}; distribution {sorted(names)})")
    assert not missing, "not in [project] dependencies: " + ", ".join(missing)
