"""Freed memory kept in the process, so that the engine's buffers are not page-faulted anew.

A simulation allocates and frees its spike trains (tens to hundreds of megabytes a batch) and
its chunks' buffers (megabytes, thousands of times). glibc's malloc hands large blocks back to
the kernel (``mmap``/``munmap``, and trimming the heap's top), so every new buffer faults its
pages in again: 5-18 % of an evaluation's time on the 2-core machine of docs/speed.md, as
system time. Serving every block from the heap and keeping up to :data:`KEEP` bytes free at its
top removes those faults; the process's resident size then stays at its peak.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP = 1 << 30  # free bytes the heap keeps at its top before it gives memory back


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc, process-wide, to serve every allocation from its heap and to keep up
    to :data:`KEEP` free bytes at its top; False where the C library is not glibc (nothing is
    changed). The CLI calls it; a program driving the engine through the API may."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP))
