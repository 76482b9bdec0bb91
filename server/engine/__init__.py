"""Runs clone jobs step by step under leases; every change is committed, then published."""

from server.engine.broadcast import Hub
from server.engine.changes import ChangeObserver
from server.engine.engine import Engine
from server.engine.watch import Heartbeat

__all__ = ["ChangeObserver", "Engine", "Heartbeat", "Hub"]
