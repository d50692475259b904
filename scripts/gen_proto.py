"""Regenerate the Python code under etcdproto/ from its .proto sources.

Usage: python scripts/gen_proto.py [OUT_DIR]

The generated modules are committed; tests/proto/test_generated_up_to_date.py regenerates
into a temporary directory and fails if anything would change. The output is
only reproducible with the grpcio-tools version pinned in pyproject.toml.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "etcdproto"


def proto_files() -> list[str]:
    """Every .proto source, as a path relative to the repository root."""
    return sorted(str(p.relative_to(ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc (with the gRPC plugin) over every source into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *proto_files(),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    for module in out_dir.rglob("*_pb2.py"):
        module.write_text(use_private_pool(module.read_text()))


def use_private_pool(source: str) -> str:
    """Register descriptors in etcdproto's own pool, not protobuf's default one.

    python-etcd3 and aetcd put their own etcdserverpb/mvccpb symbols in the
    default pool; sharing it would make importing both in one process fail.
    """
    return source.replace(
        "_descriptor_pool.Default()",
        "__import__('etcdproto._pool', fromlist=['POOL']).POOL",
    )


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
