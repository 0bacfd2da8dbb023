"""Regenerate service/_proto from proto/ (run after editing a .proto file).

    python proto/codegen.py

Generated modules are committed; tests/unit/test_proto.py fails when they are stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "service" / "_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def relative(here: tuple[str, ...], module: str) -> str:
    """`module` (absolute, under OUT_DIR) as seen from the package `here`: ("a", "v1"), "a.v1" -> "."."""
    parts = module.split(".")
    common = 0
    while common < min(len(here), len(parts)) and here[common] == parts[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(parts[common:])


def relative_to(path: Path) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement: an absolute `from X import` line as seen from `path`'s package."""
    here = path.parent.relative_to(OUT_DIR).parts
    return lambda match: f"from {relative(here, match[1])} import"


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *files,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    # protoc writes absolute imports ("from polypstream.v1 import ..."); make them relative, so that
    # the generated code works wherever the package is installed (it installs as polypstream._proto).
    for path in OUT_DIR.rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(r"^from (polypstream(?:\.\w+)*) import", relative_to(path), text, flags=re.M)
        if fixed != text:
            path.write_text(fixed)
    for folder in [OUT_DIR, *[p for p in OUT_DIR.rglob("*") if p.is_dir()]]:
        if folder.name != "__pycache__":
            (folder / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
