"""The folders of kubekv_server are its layers, and imports only go down.

client edge (rpc, api, http)  →  member and commit path (member, replication, apply)
→  peer port (peer: the commit path drives it)  →  state (kv, mvcc, lease, auth,
watch, backend). config, tls, metrics, errors.py and log_limit.py serve every layer;
cli.py, server.py and the other top-level modules assemble the layers. A layer imports
its own folder, the layers below it and the shared ones, never a layer above it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SERVER = pathlib.Path(__file__).resolve().parents[1] / "kubekv_server"
CLIENT_EDGE = {"rpc", "api", "http"}
COMMIT_PATH = {"member", "replication", "apply"}
PEER = {"peer"}
STATE = {"kv", "mvcc", "lease", "auth", "watch", "backend"}
SHARED = {"config", "tls", "metrics"}
LAYERS = CLIENT_EDGE | COMMIT_PATH | PEER | STATE
ABOVE = {
    **{f: set() for f in CLIENT_EDGE},
    **{f: CLIENT_EDGE for f in COMMIT_PATH},
    **{f: CLIENT_EDGE | COMMIT_PATH for f in PEER},
    **{f: CLIENT_EDGE | COMMIT_PATH | PEER for f in STATE},
    # the shared folders serve the layers: they know none of them
    **{f: LAYERS for f in SHARED},
}
ASSEMBLY = {"server", "cli", "__main__", "tcp_gateway", "deploy_entrypoint", "event_loop",
            "collector"}
SHARED_MODULES = {"errors", "log_limit"}


def test_every_folder_and_module_has_a_place():
    folders = {p.name for p in SERVER.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == LAYERS | SHARED
    modules = {p.stem for p in SERVER.glob("*.py")} - {"__init__"}
    assert modules == ASSEMBLY | SHARED_MODULES


def server_imports(path: pathlib.Path) -> set[str]:
    """The top-level kubekv_server folders or modules `path` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "kubekv_server":
                names = [f"kubekv_server.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kubekv_server" and len(parts) > 1:
                out.add(parts[1])
    return out


@pytest.mark.parametrize("folder", sorted(ABOVE))
def test_imports_only_go_down(folder):
    wrong = []
    for path in sorted((SERVER / folder).rglob("*.py")):
        for target in server_imports(path) & (ABOVE[folder] | ASSEMBLY):
            wrong.append(f"{path.relative_to(SERVER)} imports kubekv_server.{target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(SHARED_MODULES))
def test_shared_modules_know_no_layer(module):
    wrong = server_imports(SERVER / f"{module}.py") & (LAYERS | ASSEMBLY)
    assert not wrong, f"{module}.py imports {sorted(wrong)}"
