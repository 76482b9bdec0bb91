"""Clone jobs in words for people, shared by the CLI's commands, its watch display
and its live table; light to import (no rich, no grpc)."""

from __future__ import annotations

from clonejob_grpc.clone_job_pb2 import CloneJob


def state_name(job: CloneJob) -> str:
    try:
        return str(CloneJob.State.Name(job.state))
    except ValueError:  # a state added after this client was built
        return f"STATE_{job.state}"


def duration(seconds: float) -> str:
    """4.25 → "4.2s", 65 → "1m05s", 3725 → "1h02m05s"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
