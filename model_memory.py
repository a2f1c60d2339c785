"""Handing memory the process has freed back to the system.

glibc keeps freed blocks in its heap for reuse instead of returning them, so a process that frees
memory in pieces of every size keeps its high-water mark as resident memory. Loupe frees such pieces
when KV caches are released as sequences join and leave a batch, and when weights are rearranged at
load; after either, the next allocation (a prefill's activations) would otherwise come on top.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_LIBC_PATH = ctypes.util.find_library("c")  # once, at import: it may run ldconfig to find out
_LIBC = ctypes.CDLL(_LIBC_PATH) if _LIBC_PATH else None


def return_free_memory() -> None:
    """Ask the C allocator to give its free memory back to the system (glibc only; elsewhere a no-op)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
