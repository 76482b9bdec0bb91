"""Runs clone jobs step by step; every change is committed, then published."""

from server.engine.broadcast import Hub
from server.engine.engine import ChangeObserver, Engine, Heartbeat

__all__ = ["ChangeObserver", "Engine", "Heartbeat", "Hub"]
