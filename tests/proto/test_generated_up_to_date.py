"""The committed *_pb2*.py(i) files must be exactly what scripts/gen_proto.py produces now.

Regenerates every etcdproto/**/*.proto into a temporary directory and byte-compares the result
with the working tree, so an edited .proto without regenerated code (or a hand-edited generated
file, or a stale module whose .proto was removed) fails here.
"""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_files(base: pathlib.Path) -> dict[str, bytes]:
    found = {}
    for path in (base / "etcdproto").rglob("*"):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            found[path.relative_to(base).as_posix()] = path.read_bytes()
    return found


def test_generated_code_matches_proto_sources(tmp_path):
    _load_generator().generate(tmp_path)

    fresh = _generated_files(tmp_path)
    committed = _generated_files(ROOT)
    assert fresh, "the generator produced nothing"

    missing = sorted(fresh.keys() - committed.keys())
    stale = sorted(committed.keys() - fresh.keys())
    differing = sorted(
        name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
    )
    problems = []
    if missing:
        problems.append(f"not committed: {missing}")
    if stale:
        problems.append(f"no longer generated (stale): {stale}")
    if differing:
        problems.append(f"differ from a fresh generation: {differing}")
    assert not problems, (
        "generated code is out of date; run `python scripts/gen_proto.py` and commit.\n"
        + "\n".join(problems)
    )
