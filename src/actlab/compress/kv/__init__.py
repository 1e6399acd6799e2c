"""KV-cache quantization: codecs, KVQuant/KIVI/per-token methods, XQuant, and a packed cache."""

from actlab.compress.kv.cache import CacheMemory, PackedCache
from actlab.compress.kv.methods import KVQuant
from actlab.compress.kv.xquant import XQuant

__all__ = ["CacheMemory", "KVQuant", "PackedCache", "XQuant"]
