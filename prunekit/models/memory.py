"""Give freed host (and device) memory back after each block, so peak memory does not creep with depth.

Each block allocates and frees hundreds of tensors of many sizes; glibc's allocator keeps the freed pieces in its
arenas (fragmentation), so without a trim the resident set of a streamed run grows block after block (measured:
+70 MB per 22 MB block until a plateau) although nothing is retained.  :func:`release_memory` collects garbage,
asks glibc to return free arena memory to the system (``malloc_trim(0)``; a no-op elsewhere) and empties the CUDA
cache.  It costs milliseconds per block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return getattr(libc, "malloc_trim", None)
    except OSError:  # pragma: no cover - no C library to talk to
        return None


def release_memory(device: torch.device | None = None) -> None:
    """Garbage-collect, return free heap memory to the OS (glibc), empty the CUDA cache when on CUDA."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = ["release_memory"]
