"""The profile summary `python -m bench --profile DIR` prints for each profiled figure."""

from __future__ import annotations

from pathlib import Path

from bench import profiles

ROOT = profiles.ROOT


def test_summary_ranks_functions_by_self_and_inclusive_samples(tmp_path: Path) -> None:
    stacks = tmp_path / "get-real-0.collapsed.txt"
    loop = "_run_once (/usr/lib/python3.11/asyncio/base_events.py:1845)"
    handler = f"get (/x/{ROOT}/server/api/servicer.py:10)".replace(f"/x/{ROOT}", str(ROOT))
    dump = "dumps (/v/lib/python3.11/site-packages/google/protobuf/json.py:5)"
    stacks.write_text(
        f"{loop};{handler};{dump} 30\n{loop};{handler} 50\n{loop} 20\nnot a stack line\n"
    )

    summary = profiles.summarise(stacks)

    assert summary["samples"] == 100
    assert summary["self"] == [
        ("get (server/api/servicer.py:10)", 50.0),
        ("dumps (google/protobuf/json.py:5)", 30.0),
        ("_run_once (asyncio/base_events.py:1845)", 20.0),
    ]
    # The event loop is on every stack: left out of the inclusive list.
    assert summary["inclusive"] == [
        ("get (server/api/servicer.py:10)", 80.0),
        ("dumps (google/protobuf/json.py:5)", 30.0),
    ]
    text = profiles.text(summary, "get-real-0")
    assert text.splitlines()[0] == f"get-real-0: 100 samples ({stacks})"
    assert " 80.0%  get (server/api/servicer.py:10)" in text


def test_a_figure_measured_without_a_profile_says_so() -> None:
    assert profiles.text(None, "create-real") == "create-real: no profile"
