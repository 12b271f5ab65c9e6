"""The activation store (uav_cache/store/reader.py)."""

from uav_cache.store.reader import *  # noqa: F401,F403
