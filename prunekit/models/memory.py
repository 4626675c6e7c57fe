"""Give freed host (and device) memory back after each block, so peak memory does not creep with depth.

Each block allocates and frees hundreds of tensors of many sizes; glibc's allocator keeps the freed pieces in its
arenas (fragmentation), so without a trim the resident set of a streamed run grows block after block (measured:
+70 MB per 22 MB block until a plateau) although nothing is retained.  :func:`release_memory` collects garbage,
asks glibc to return free arena memory to the system (``malloc_trim(0)``; a no-op elsewhere) and empties the CUDA
cache.  A full collection walks every live Python object (0.2 s per block measured with transformers and a model
loaded); :func:`long_lived_frozen` moves the objects that exist when a run starts (libraries, the model) to the
permanent generation for the run's duration, so each block's collection walks only what the run created since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from contextlib import contextmanager
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


@contextmanager
def long_lived_frozen():
    """``gc.freeze()`` for the duration of the block (objects alive now are skipped by collections; they are still
    freed by reference counting) and ``gc.unfreeze()`` after; a no-op when the caller has frozen objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


__all__ = ["long_lived_frozen", "release_memory"]
