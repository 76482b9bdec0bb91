"""`clonejob-server`: serve, or write a sample migrating VM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from server import config as cfg
from server.domain.names import InvalidNameError, MigratingVmName
from server.observability.logs import configure_logging
from server.security import SecurityConfigError, digest
from server.store import StoreError
from server.targets.faults import FaultPlanError

SUBCOMMANDS = ("serve", "sample-vm")


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clonejob-server",
        description="Serve the CloneJob gRPC service (the default). Also:"
        " `clonejob-server sample-vm NAME --data-dir DIR` writes a sample migrating VM;"
        " `clonejob-server hash-token` prints the digest of a token read from stdin.",
        epilog="Every option can also be set by the environment variable shown.",
    )
    cfg.add_serve_arguments(parser)
    return parser


def _sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clonejob-server sample-vm",
        description="Write a completed replication cycle of synthetic disk images for the"
        " migrating VM NAME (projects/…/locations/…/sources/…/migratingVms/…).",
    )
    parser.add_argument("name", metavar="NAME", help="the migrating VM's full resource name")
    parser.add_argument("--data-dir", type=Path, help="the server's data directory")
    parser.add_argument("--disks", type=int, default=2, help="number of disks (default 2)")
    parser.add_argument(
        "--disk-size", type=cfg.parse_size, default=64 * 1024**2, help="e.g. 64MiB, 1GiB"
    )
    parser.add_argument(
        "--bios", action="store_true", help="an MBR boot disk instead of GPT with an ESP"
    )
    return parser


def sample_vm(argv: Sequence[str]) -> int:
    from server.targets.local import LocalTarget

    args = _sample_parser().parse_args(argv)
    try:
        vm = MigratingVmName.parse(args.name)
    except InvalidNameError as error:
        print(f"clonejob-server sample-vm: NAME {error}", file=sys.stderr)
        return 2
    if not 1 <= args.disks <= 16:
        print("clonejob-server sample-vm: --disks must be 1 to 16", file=sys.stderr)
        return 2
    if args.disk_size < 1024**2 or args.disk_size % 512:
        print(
            "clonejob-server sample-vm: --disk-size must be at least 1MiB and a multiple of 512",
            file=sys.stderr,
        )
        return 2
    data_dir = args.data_dir or cfg.default_data_dir()
    folder = LocalTarget(data_dir).write_sample_vm(
        vm, disks=args.disks, disk_size=args.disk_size, bios=args.bios
    )
    print(f"wrote replication cycle {folder.name} of {vm} in {folder}")
    return 0


def hash_token(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(
        prog="clonejob-server hash-token",
        description="Read a token from standard input and print its SHA-256 digest, for the"
        " `sha256` field of a --tokens-file entry. The token itself is never stored.",
    ).parse_args(argv)
    token = sys.stdin.readline().strip()
    if not token:
        print("clonejob-server hash-token: no token on standard input", file=sys.stderr)
        return 2
    print(digest(token))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sample-vm":
        return sample_vm(argv[1:])
    if argv and argv[0] == "hash-token":
        return hash_token(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    config = cfg.from_args(_serve_parser().parse_args(argv))
    configure_logging(config.log_level, config.log_format)
    from server.app import serve

    try:
        asyncio.run(serve(config))
    except StoreError as error:
        print(f"clonejob-server: cannot open the job store: {error}", file=sys.stderr)
        return 2
    except (SecurityConfigError, FaultPlanError) as error:
        print(f"clonejob-server: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:
        print(f"clonejob-server: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
