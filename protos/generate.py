"""Generate the clonejob_grpc package from protos/clonejob/v1/*.proto.

Usage:
    python protos/generate.py          # regenerate clonejob_grpc/
    python protos/generate.py --check  # exit 1 if clonejob_grpc/ is stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import grpc_tools  # type: ignore[import-untyped]
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = "clonejob_grpc"
OUT_DIR = ROOT / PACKAGE
PROTOS = ("clonejob/v1/clone_job.proto", "clonejob/v1/clone_job_service.proto")
WKT_INCLUDE = Path(grpc_tools.__file__).resolve().parent / "_proto"
IMPORT_RE = re.compile(r"^from clonejob\.v1 import (\w+_pb2)", re.MULTILINE)
INIT = (
    '"""GENERATED code for the clonejob.v1 protos. Do not edit.\n\n'
    "Regenerate with `python protos/generate.py`.\n"
    '"""\n'
)


def generate() -> dict[str, str]:
    """Run protoc and return {file name: content} of the flat package."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{WKT_INCLUDE}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        files = {
            path.name: IMPORT_RE.sub(rf"from {PACKAGE} import \1", path.read_text())
            for path in sorted((Path(tmp) / "clonejob" / "v1").glob("*.py*"))
        }
    files["__init__.py"] = INIT
    files["py.typed"] = ""
    return files


def current() -> dict[str, str]:
    """Return {file name: content} of the files now in clonejob_grpc/."""
    if not OUT_DIR.is_dir():
        return {}
    return {p.name: p.read_text() for p in OUT_DIR.iterdir() if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Generate clonejob_grpc/ from protos/clonejob/v1."
    )
    parser.add_argument("--check", action="store_true", help="only check for staleness")
    check: bool = parser.parse_args().check
    wanted = generate()
    have = current()
    if check:
        stale = sorted(
            n for n in wanted.keys() | have.keys() if wanted.get(n) != have.get(n)
        )
        if stale:
            print(
                f"{PACKAGE}/ is stale; run `python protos/generate.py`. Differing files: "
                + ", ".join(stale),
                file=sys.stderr,
            )
            return 1
        print(f"{PACKAGE}/ is up to date.")
        return 0
    OUT_DIR.mkdir(exist_ok=True)
    for name in have.keys() - wanted.keys():
        (OUT_DIR / name).unlink()
    for name, content in wanted.items():
        (OUT_DIR / name).write_text(content)
    print(f"Wrote {len(wanted)} files to {OUT_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
