"""The cache tier: cache-aside with deletes after commit, never sets on write."""

from picscale.tiers.cache.factory import create_cache
from picscale.tiers.cache.port import Cache, CacheBackend, CacheStats, Found

__all__ = ["Cache", "CacheBackend", "CacheStats", "Found", "create_cache"]
