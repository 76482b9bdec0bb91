"""Clone job names as the CLI takes and shows them."""

from __future__ import annotations

__all__ = ["WILDCARD", "has_wildcard", "id_under"]

WILDCARD = "-"  # AIP-159: any collection id, in a List parent


def has_wildcard(parent: str) -> bool:
    """Whether a List parent has a `-` for some collection id."""
    return WILDCARD in parent.split("/")


def id_under(name: str, parent: str) -> str:
    """How a job of a List of `parent` is shown: its id; under a wildcard parent,
    the ids the wildcards stand for too (`us-central1/src1/vm1/check-1`), so that
    jobs of different migrating VMs stay apart."""
    pattern = parent.split("/")
    values = name.split("/")
    wild = [values[i] for i, s in enumerate(pattern) if s == WILDCARD and i < len(values)]
    return "/".join([*wild, values[-1]])
