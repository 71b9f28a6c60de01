"""Regenerates the committed Python stubs from the .proto files beside this module.

    python -m infergate.proto.generate          # rewrite *_pb2.py / *_pb2.pyi
    python -m infergate.proto.generate --check  # exit 1 if the committed stubs are stale

The stubs are rewritten to register into infergate's private descriptor pool
(`_pool.POOL`) instead of protobuf's process-wide default pool: tritonclient ships
its own generated modules for the same `inference` package, and both sets in one
process would otherwise collide on symbols such as `inference.ModelConfig`.
Needs grpcio-tools 1.81.x, whose output loads under protobuf 6 (which tritonclient
2.73 requires) as well as 7.
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")
EXPECTED_TOOLS = "1.81."  # grpcio-tools series whose output the committed stubs come from


def _rewrite(text: str) -> str:
    text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from google.protobuf import descriptor_pool as _descriptor_pool  # noqa: F401\nfrom . import _pool\n",
    )
    # protoc emits absolute sibling imports; the stubs live inside infergate.proto.
    return re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", text, flags=re.M)


def generate() -> dict[str, str]:
    """Returns {file name: contents} of freshly generated stubs."""
    import grpc_tools
    from grpc_tools import protoc

    version = getattr(grpc_tools, "__version__", "")
    if not version:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if not version.startswith(EXPECTED_TOOLS):
        raise SystemExit(f"grpcio-tools {version} found, expected {EXPECTED_TOOLS}x (see this module's docstring)")
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}"]
        if protoc.main(args + [str(HERE / p) for p in PROTOS]) != 0:
            raise SystemExit("protoc failed")
        return {p.name: _rewrite(p.read_text()) for p in sorted(Path(out).iterdir())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale generated stubs: " + ", ".join(stale) + " (run python -m infergate.proto.generate)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
