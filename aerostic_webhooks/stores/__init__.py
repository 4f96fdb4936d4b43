"""Stores keep every delivery and its fate; ``RedisStore`` lives in ``stores.redis`` (extra)."""

from .base import Record, Status, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "Record", "SQLiteStore", "Status", "Store"]
