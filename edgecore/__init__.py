"""edgecore: an HTTP edge cache (uvloop + httptools + a Cython shared-memory slab cache)."""

__version__ = "0.1.0"
