"""Runs clone jobs step by step; every change is committed, then published."""

from server.engine.broadcast import Hub
from server.engine.engine import Engine, Heartbeat

__all__ = ["Engine", "Heartbeat", "Hub"]
