"""Regenerates the Python stubs from istio_ca.proto: ``python -m proto.generate [OUTPUT_DIR]``.

Run from the repository root. Without OUTPUT_DIR the stubs are written next to the .proto (the committed ones);
tests generate into a temporary folder and compare, so the committed stubs never drift from the .proto.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO = Path("proto/istio_ca.proto")
STUB_NAMES = ("istio_ca_pb2.py", "istio_ca_pb2.pyi", "istio_ca_pb2_grpc.py")


def generate(output_dir: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    well_known = resources.files("grpc_tools") / "_proto"
    output_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={output_dir}",
        f"--pyi_out={output_dir}",
        f"--grpc_python_out={output_dir}",
        str(root / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    if len(sys.argv) > 1:
        generate(Path(sys.argv[1]))
    else:
        # protoc writes proto/istio_ca_pb2.py under the output dir, mirroring the -I relative path
        generate(Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    main()
