"""Keeping the C allocator from holding memory the process has freed.

glibc keeps freed blocks in its heap for reuse instead of returning them, so a process that frees
memory in pieces of every size keeps its high-water mark as resident memory. Two things follow:
- Blocks of at least its mmap threshold get a mapping of their own, unmapped when freed. glibc
  starts that threshold at 128 KiB but raises it to the size of each mapped block freed, up to
  32 MiB, so after loading the weights almost every activation comes from the heap. A prompt's
  activations, of many sizes, then left it fragmented: serving the benchmark's scenario in
  bfloat16, the server's first prompt and its load each peaked 0.2 GB higher than with a fixed
  threshold of 1 MiB. Fixing the threshold turns the raising off.
- What the heap holds free is handed back after a prefill and when caches are released.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_LIBC_PATH = ctypes.util.find_library("c")  # once, at import: it may run ldconfig to find out
_LIBC = ctypes.CDLL(_LIBC_PATH) if _LIBC_PATH else None
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h

# A prompt's activations and KV caches are larger and go back when freed; a decode step's vectors
# and one row's logits (600 KB) stay below it, in the heap, where reuse costs no page faults (at
# 128 KiB, top-p/top-k sampling took 0.6 ms more a token for the same memory peak).
MMAP_THRESHOLD = 1 << 20


def map_large_allocations(threshold: int = MMAP_THRESHOLD) -> None:
    """Give blocks of `threshold` bytes or more their own mappings, returned when freed (glibc only)."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold)


def return_free_memory() -> None:
    """Ask the C allocator to give its free memory back to the system (glibc only; elsewhere a no-op)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
