"""The layout is the rule: every module in kubekv_raft/core/ is pure, the library never
imports the server, and the driver builds only on the core."""

from __future__ import annotations

import ast
import pathlib

import pytest

RAFT = pathlib.Path(__file__).resolve().parents[2] / "kubekv_raft"
CORE = sorted(p.name for p in (RAFT / "core").glob("*.py"))
# No I/O, clock, disk, processes or unseeded randomness in the core (randomness comes
# from Config.rng; logging is allowed, as etcd-io/raft logs). `threading` only for a mutex,
# as etcd-io/raft's MemoryStorage has one.
FORBIDDEN = {
    "asyncio", "socket", "time", "datetime", "random", "os", "io", "lmdb", "selectors",
    "subprocess", "secrets", "uuid", "grpc", "pathlib", "shutil", "concurrent", "signal",
    "tempfile",
}
MUTEX_ONLY = {"threading": {"Lock", "RLock"}}


def imports(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def attributes_used(path: pathlib.Path, module: str) -> set[str]:
    """Names taken from `module` (`module.X` or `from module import X`)."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == module:
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            used |= {a.name for a in node.names}
    return used


def test_the_core_is_found():
    assert {"raft.py", "raw_node.py", "log.py", "storage.py", "conf_change.py"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_core_module_is_pure(module):
    path = RAFT / "core" / module
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"core/{module} imports {name}"
        if top == "kubekv_raft":
            assert name in ("kubekv_raft", "kubekv_raft.core") \
                or name.startswith("kubekv_raft.core."), f"core/{module} imports {name}"
        assert top != "kubekv_server", f"core/{module} imports {name}"
    for mod, allowed in MUTEX_ONLY.items():
        extra = attributes_used(path, mod) - allowed
        assert not extra, f"core/{module} uses {mod}.{sorted(extra)}: only a mutex is allowed"


def test_the_library_never_imports_the_server():
    for path in RAFT.rglob("*.py"):
        for name in imports(path):
            assert not name.startswith("kubekv_server"), f"{path.relative_to(RAFT)}: {name}"


def test_the_driver_builds_on_the_core_only():
    for path in (RAFT / "driver").glob("*.py"):
        for name in imports(path):
            if name.startswith("kubekv_raft"):
                assert name.startswith(("kubekv_raft.core", "kubekv_raft.driver")), \
                    f"driver/{path.name}: {name}"
