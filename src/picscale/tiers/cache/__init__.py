"""The cache tier: cache-aside with deletes after commit, never sets on write."""

from picscale.tiers.cache.cache_aside import Cache
from picscale.tiers.cache.factory import create_cache
from picscale.tiers.cache.port import CacheBackend, Found

__all__ = ["Cache", "CacheBackend", "Found", "create_cache"]
