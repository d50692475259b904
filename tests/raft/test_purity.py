"""The core must stay pure: no asyncio, sockets, clocks, disk or unseeded randomness."""

from __future__ import annotations

import ast
import pathlib

import pytest

CORE = [
    "raft.py",
    "raw_node.py",
    "log.py",
    "log_unstable.py",
    "progress.py",
    "tracker.py",
    "quorum.py",
    "read_only.py",
    "conf_change.py",
    "errors.py",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "datetime",
    "random",
    "os",
    "io",
    "threading",
    "lmdb",
    "selectors",
    "subprocess",
    "secrets",
    "uuid",
    "grpc",
    "pathlib",
    "shutil",
}
ALLOWED_LOCAL = {f"kubekv_raft.core.{m[:-3]}" for m in CORE} | {"kubekv_raft", "kubekv_raft.core"}
PKG = pathlib.Path(__file__).resolve().parents[2] / "kubekv_raft" / "core"


def imports(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("module", CORE)
def test_core_module_is_pure(module):
    for name in imports(PKG / module):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{module} imports {name}"
        if top == "kubekv_raft":
            # Type-only imports of storage are under TYPE_CHECKING; anything else must be core.
            assert name in ALLOWED_LOCAL or name == "kubekv_raft.core.storage", f"{module}: {name}"


def test_storage_is_only_imported_for_typing():
    for module in CORE:
        src = (PKG / module).read_text()
        if "kubekv_raft.core.storage" in src:
            tree = ast.parse(src)
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module == "kubekv_raft.core.storage":
                    pytest.fail(f"{module} imports storage at runtime")
